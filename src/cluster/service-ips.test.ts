import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { parseIp, parsePrefix } from "../net/ip.js";
import { assertBandConsistent, temporaryStores, testPlan, type PlanText } from "../../test/support/cluster.js";
import { addService, listServices, removeService } from "./services.js";
import { openCluster, type Cluster } from "./state.js";
import { serviceIpRanges, serviceRangeOffset } from "./service-ips.js";
import { resolveServiceFamilies, type ServiceFamilyRequest } from "./service-ips-families.js";

const stores = temporaryStores();
after(() => stores.cleanup());

function cluster(text: Partial<PlanText> & { serviceCidrs: readonly string[] }): Promise<Cluster> {
  const podCidrs = text.podCidrs ?? text.serviceCidrs.map((cidr) => (cidr.includes(":") ? "fd00:10:244::/56" : "10.244.0.0/16"));
  return openCluster(stores.open(), testPlan({ ...text, podCidrs }));
}

async function clusterIps(c: Cluster, name: string, request: Omit<ServiceFamilyRequest, "name"> = {}): Promise<readonly string[]> {
  return (await addService(c, { name, ...request })).result.clusterIPs;
}

function lastOctet(ip: string): number {
  return Number(ip.split(".")[3]);
}

describe("ClusterIP bands (KEP-3070)", () => {
  test("the offset is min(max(16, size/16), 256), and 0 for 16 addresses or fewer", () => {
    const offset = (cidr: string) => serviceRangeOffset(parsePrefix(cidr));
    assert.equal(offset("10.96.0.0/28"), 0n);
    assert.equal(offset("10.96.0.0/27"), 16n);
    assert.equal(offset("10.96.0.0/25"), 16n);
    assert.equal(offset("10.96.0.0/24"), 16n);
    assert.equal(offset("10.96.0.0/21"), 128n);
    assert.equal(offset("10.96.0.0/20"), 256n);
    assert.equal(offset("10.96.0.0/12"), 256n);
    assert.equal(offset("fd00:10:96::/108"), 256n);
    assert.equal(offset("fd00:10:96::/64"), 256n);
  });

  test("a /24's static band is .1-.16 and its dynamic band .17-.254", () => {
    const [range] = serviceIpRanges(testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/24"] }));
    assert.deepEqual([range.staticBand.first, range.staticBand.last, range.dynamicBand.first, range.dynamicBand.last], [1n, 16n, 17n, 254n]);
    const [v6] = serviceIpRanges(testPlan({ podCidrs: ["fd00::/56"], serviceCidrs: ["fd00:10:96::/112"] }));
    assert.equal(v6.dynamicBand.last, 65535n, "IPv6 keeps the all-ones address");
  });

  test("default/kubernetes holds network+1 of the primary range from the start", async () => {
    const c = await cluster({ serviceCidrs: ["10.96.0.0/24"] });
    const services = await listServices(c.store);
    assert.deepEqual(
      services.map((s) => [`${s.namespace}/${s.name}`, s.clusterIPs]),
      [["default/kubernetes", ["10.96.0.1"]]],
    );
    await assert.rejects(addService(c, { name: "grab", clusterIPs: ["10.96.0.1"] }), /^Error: ClusterIP 10\.96\.0\.1 is already allocated to service default\/kubernetes$/);
    await assert.rejects(removeService(c, "default/kubernetes"), /is the API server's own Service and keeps 10\.96\.0\.1: it cannot be removed/);
  });

  test("dynamic allocation fills the upper band first, then the static band, then reports the range full", async () => {
    const c = await cluster({ serviceCidrs: ["10.96.0.0/27"] });
    const upper: number[] = [];
    for (let i = 0; i < 14; i++) upper.push(lastOctet((await clusterIps(c, `up-${i}`))[0]));
    assert.deepEqual([...upper].sort((a, b) => a - b), Array.from({ length: 14 }, (_, i) => 17 + i));
    const lower: number[] = [];
    for (let i = 0; i < 15; i++) lower.push(lastOctet((await clusterIps(c, `low-${i}`))[0]));
    assert.deepEqual([...lower].sort((a, b) => a - b), Array.from({ length: 15 }, (_, i) => 2 + i));
    await assert.rejects(addService(c, { name: "one-more" }), /^Error: ClusterIP range 10\.96\.0\.0\/27 is full: all 30 IPv4 addresses are allocated$/);
    const [range] = serviceIpRanges(c.plan);
    await assertBandConsistent(c.store, range.staticBand);
    await assertBandConsistent(c.store, range.dynamicBand);
  });

  test("a freed address is found again from any random start (the scan wraps)", async () => {
    const c = await cluster({ serviceCidrs: ["10.96.0.0/28"] });
    for (let i = 0; i < 13; i++) await clusterIps(c, `s-${i}`);
    const services = await listServices(c.store);
    const victim = services.find((s) => s.name === "s-0")!;
    await removeService(c, "s-0");
    for (let round = 0; round < 5; round++) {
      const [ip] = await clusterIps(c, `again-${round}`);
      assert.equal(ip, victim.clusterIPs[0]);
      await removeService(c, `again-${round}`);
    }
  });

  test("requested addresses: honoured when free and inside; refused with the reason otherwise", async () => {
    const c = await cluster({ serviceCidrs: ["10.96.0.0/24", "fd00:10:96::/112"] });
    assert.deepEqual(await clusterIps(c, "dns", { clusterIPs: ["10.96.0.10"] }), ["10.96.0.10"]);
    assert.deepEqual(await clusterIps(c, "high", { clusterIPs: ["10.96.0.200"] }), ["10.96.0.200"]);
    assert.deepEqual(await clusterIps(c, "v6", { clusterIPs: ["fd00:10:96::ffff"] }), ["fd00:10:96::ffff"]);
    await assert.rejects(addService(c, { name: "x", clusterIPs: ["10.96.0.10"] }), /^Error: ClusterIP 10\.96\.0\.10 is already allocated to service default\/dns$/);
    await assert.rejects(
      addService(c, { name: "x", clusterIPs: ["10.97.0.10"] }),
      /^Error: ClusterIP 10\.97\.0\.10 is outside every service CIDR of this cluster \(10\.96\.0\.0\/24, fd00:10:96::\/112\)/,
    );
    await assert.rejects(addService(c, { name: "x", clusterIPs: ["10.96.0.0"] }), /is the network address of service CIDR 10\.96\.0\.0\/24: its ClusterIPs go from 10\.96\.0\.1 to 10\.96\.0\.254/);
    await assert.rejects(addService(c, { name: "x", clusterIPs: ["10.96.0.255"] }), /^Error: ClusterIP 10\.96\.0\.255 is the broadcast address of service CIDR 10\.96\.0\.0\/24/);
    await assert.rejects(addService(c, { name: "x", clusterIPs: ["fd00:10:96::"] }), /is the network address of service CIDR fd00:10:96::\/112/);
    await assert.rejects(addService(c, { name: "x", clusterIPs: ["10.96.0.300"] }), /^Error: invalid ClusterIP "10\.96\.0\.300": expected an IPv4 address/);
  });

  test("dual-stack is all or nothing: a full second family takes nothing from the first", async () => {
    const c = await cluster({
      podCidrs: ["10.244.0.0/16", "fd00:10:244::/56"],
      serviceCidrs: ["10.96.0.0/24", "fd00:10:96::/125"],
    });
    for (let i = 0; i < 7; i++) await clusterIps(c, `v6-${i}`, { ipFamilies: ["IPv6"] });
    const before = await c.store.list("/ranges/");
    await assert.rejects(addService(c, { name: "both", ipFamilyPolicy: "RequireDualStack" }), /^Error: ClusterIP range fd00:10:96::\/125 is full: all 7 IPv6 addresses are allocated$/);
    const afterFailure = await c.store.list("/ranges/");
    assert.deepEqual(afterFailure.entries, before.entries);
    assert.equal(afterFailure.revision, before.revision);
    await removeService(c, "v6-3");
    const both = await clusterIps(c, "both", { ipFamilyPolicy: "RequireDualStack" });
    assert.equal(both.length, 2);
    assert.ok(parseIp(both[0]).family === 4 && parseIp(both[1]).family === 6);
  });

  test("removing a Service frees its addresses; duplicates and bad names are refused", async () => {
    const c = await cluster({ serviceCidrs: ["10.96.0.0/24"] });
    await clusterIps(c, "web", { clusterIPs: ["10.96.0.50"] });
    await assert.rejects(addService(c, { name: "default/web" }), /^Error: Service default\/web already exists with ClusterIPs 10\.96\.0\.50$/);
    await assert.rejects(removeService(c, "other/web"), /^Error: Service other\/web does not exist$/);
    await assert.rejects(addService(c, { name: "Web" }), /^Error: invalid Service name "Web" in "Web"/);
    await removeService(c, "web");
    assert.deepEqual(await clusterIps(c, "web2", { clusterIPs: ["10.96.0.50"] }), ["10.96.0.50"]);
  });
});

describe("Service IP families (ipFamilyPolicy, ipFamilies)", () => {
  const single = [parsePrefix("10.96.0.0/16")];
  const dual = [parsePrefix("10.96.0.0/16"), parsePrefix("fd00:10:96::/112")];
  const dualV6First = [parsePrefix("fd00:10:96::/112"), parsePrefix("10.96.0.0/16")];
  const families = (request: ServiceFamilyRequest, cidrs = dual) => {
    const resolved = resolveServiceFamilies(request, cidrs);
    return [resolved.ipFamilyPolicy, resolved.families.join(",")];
  };

  test("SingleStack by default, in the primary family or ipFamilies[0]", () => {
    assert.deepEqual(families({}), ["SingleStack", "4"]);
    assert.deepEqual(families({}, dualV6First), ["SingleStack", "6"]);
    assert.deepEqual(families({ ipFamilies: ["IPv6"] }), ["SingleStack", "6"]);
    assert.deepEqual(families({ clusterIPs: ["fd00:10:96::5"] }), ["SingleStack", "6"]);
  });

  test("PreferDualStack takes both families on a dual-stack cluster and one on a single-stack cluster", () => {
    assert.deepEqual(families({ ipFamilyPolicy: "PreferDualStack" }), ["PreferDualStack", "4,6"]);
    assert.deepEqual(families({ ipFamilyPolicy: "PreferDualStack", ipFamilies: ["IPv6"] }), ["PreferDualStack", "6,4"]);
    assert.deepEqual(families({ ipFamilyPolicy: "PreferDualStack" }, single), ["PreferDualStack", "4"]);
  });

  test("RequireDualStack takes both, in ipFamilies order, and fails on a single-stack cluster", () => {
    assert.deepEqual(families({ ipFamilyPolicy: "RequireDualStack" }), ["RequireDualStack", "4,6"]);
    assert.deepEqual(families({ ipFamilyPolicy: "RequireDualStack" }, dualV6First), ["RequireDualStack", "6,4"]);
    assert.deepEqual(families({ ipFamilyPolicy: "RequireDualStack", ipFamilies: ["IPv6", "IPv4"] }), ["RequireDualStack", "6,4"]);
    assert.throws(
      () => families({ ipFamilyPolicy: "RequireDualStack" }, single),
      /^Error: ipFamilyPolicy RequireDualStack: this cluster is not configured for dual-stack Services \(service CIDRs are 10\.96\.0\.0\/16\)$/,
    );
  });

  test("families and addresses the cluster lacks, and SingleStack with two, are refused", () => {
    assert.throws(() => families({ ipFamilies: ["IPv6"] }, single), /^Error: ipFamilies\[0\] IPv6 is not configured on this cluster \(service CIDRs are 10\.96\.0\.0\/16\)$/);
    assert.throws(() => families({ clusterIPs: ["fd00:10:96::5"] }, single), /^Error: ClusterIP fd00:10:96::5: IPv6 is not configured on this cluster/);
    assert.throws(() => families({ ipFamilies: ["IPv4", "IPv6"] }), /^Error: ipFamilyPolicy SingleStack allows one IP family: use RequireDualStack or PreferDualStack/);
    assert.throws(() => families({ ipFamilyPolicy: "SingleStack", clusterIPs: ["10.96.0.5", "fd00:10:96::5"] }), /SingleStack allows one ClusterIP/);
    assert.throws(() => families({ ipFamilyPolicy: "PreferDualStack", ipFamilies: ["IPv4", "IPv6"] }, single), /ipFamilies\[1\] IPv6 is not configured on this cluster/);
  });

  test("malformed requests name each problem", () => {
    assert.throws(() => families({ ipFamilyPolicy: "DualStack" }), /^Error: invalid ipFamilyPolicy "DualStack": expected SingleStack, PreferDualStack, RequireDualStack$/);
    assert.throws(() => families({ ipFamilies: ["IPv5"] }), /invalid ipFamilies\[0\] "IPv5": expected IPv4 or IPv6/);
    assert.throws(() => families({ ipFamilies: ["IPv4", "IPv4"], ipFamilyPolicy: "RequireDualStack" }), /ipFamilies lists IPv4 twice/);
    assert.throws(() => families({ ipFamilyPolicy: "RequireDualStack", clusterIPs: ["10.96.0.5", "10.96.0.6"] }), /are both IPv4: a dual-stack Service has one address of each family/);
    assert.throws(
      () => families({ ipFamilyPolicy: "RequireDualStack", ipFamilies: ["IPv6", "IPv4"], clusterIPs: ["10.96.0.5"] }),
      /ClusterIP 10\.96\.0\.5 is IPv4 but ipFamilies\[0\] is IPv6/,
    );
  });

  test("requested addresses line up with the families they name", () => {
    const resolved = resolveServiceFamilies({ ipFamilyPolicy: "RequireDualStack", clusterIPs: ["fd00:10:96::5"] }, dual);
    assert.deepEqual(resolved.families, [6, 4]);
    assert.equal(resolved.requested[0]?.family, 6);
    assert.equal(resolved.requested[1], undefined);
  });
});
