import assert from "node:assert/strict";
import { hostname } from "node:os";
import { describe, test } from "node:test";
import { checkNodeName } from "../cluster/node-cidrs.js";
import { parseIp, parsePrefix } from "../net/ip.js";
import { DEFAULT_STORE_SPEC } from "../store/open.js";
import { AGENT_DEFAULTS, parseAgentOptions, type AgentFlags, type AgentOptions } from "./options.js";

/** The flags as commander hands them over when none is given (cli/agent.ts), with a node name. */
function flags(overrides: Partial<AgentFlags> = {}): AgentFlags {
  return { ...AGENT_DEFAULTS, nodeName: "node-1", store: DEFAULT_STORE_SPEC, masquerade: true, proxy: true, ...overrides };
}

function isNodeName(name: string): boolean {
  try {
    checkNodeName(name);
    return true;
  } catch {
    return false;
  }
}

describe("parseAgentOptions", () => {
  // Bug caught: a default changed by accident (say the mode, or a grace shorter than the heartbeat).
  test("defaults", () => {
    assert.deepEqual(parseAgentOptions(flags()), {
      logLevel: "info",
      nodeName: "node-1",
      nodeIps: [],
      datastore: "trellis",
      store: "sqlite:/var/lib/trellis/cluster.db",
      plan: undefined,
      clusterCidrs: [],
      mode: "auto",
      mtu: undefined,
      cniConfDir: "/etc/cni/net.d",
      cniDataDir: "/var/lib/cni/trellis",
      cniSocket: "/run/trellis/cni.sock",
      masquerade: true,
      resyncSeconds: 10,
      heartbeatSeconds: 5,
      peerGraceSeconds: 60,
      proxy: true,
      proxySyncIntervalMs: 1000,
      flowBuffer: 4096,
      flowEvents: ["new", "destroy"],
      metricsAddress: { host: "127.0.0.1", port: 9656 },
      externalIpCidrs: [],
    } satisfies AgentOptions);
  });

  // Bug caught: the host name not used when --node-name is absent.
  test("the node name defaults to the host name", { skip: isNodeName(hostname()) ? false : `host name ${hostname()} is no valid node name` }, () => {
    assert.equal(parseAgentOptions(flags({ nodeName: undefined })).nodeName, hostname());
  });

  // Bug caught: values given as flags or environment variables not carried over (strings to numbers, IPs parsed, blanks trimmed).
  // Bug caught: a zone that is no label value published for peers to read (a name nothing can
  // match), or --zone taken on the Kubernetes API, where the Node's label is the truth.
  test("--zone: a label value, for the Trellis store only", () => {
    assert.equal(parseAgentOptions(flags({ zone: "zone-a" })).zone, "zone-a");
    assert.equal(parseAgentOptions(flags({ zone: "" })).zone, undefined);
    for (const bad of ["zone a", "-zone", "z".repeat(64), "a\nb"]) {
      assert.throws(() => parseAgentOptions(flags({ zone: bad })), (error: Error) => error.message.startsWith(`--zone ${JSON.stringify(bad)} is not a label value`));
    }
    assert.throws(() => parseAgentOptions(flags({ zone: "zone-a", datastore: "kubernetes", clusterCidr: "10.244.0.0/16" })), /--zone is for the Trellis store/);
  });

  test("every value given", () => {
    const parsed = parseAgentOptions(
      flags({
        nodeName: "worker-2.example",
        nodeIp: "fd00:198:18::10, 198.18.0.10",
        store: "etcd://127.0.0.1:2379",
        plan: "/etc/trellis/plan.yaml",
        mode: "vxlan",
        mtu: "9000",
        cniConfDir: "/run/cni/net.d",
        cniDataDir: "/run/cni/trellis",
        cniSocket: "/run/cni/trellis.sock",
        masquerade: "false",
        resyncInterval: "30",
        heartbeatInterval: "2",
        peerGrace: "3",
        logLevel: "debug",
        proxy: "false",
        proxySyncInterval: "0.25",
        flowBuffer: "0",
        flowEvents: "new,update,destroy",
        metricsBindAddress: "[fd00::1]:9100",
        externalIpCidrs: "198.19.0.0/24, fd00:198:19::/64",
      }),
    );
    assert.deepEqual(parsed, {
      logLevel: "debug",
      nodeName: "worker-2.example",
      nodeIps: [parseIp("fd00:198:18::10"), parseIp("198.18.0.10")],
      datastore: "trellis",
      store: "etcd://127.0.0.1:2379",
      plan: "/etc/trellis/plan.yaml",
      clusterCidrs: [],
      mode: "vxlan",
      mtu: 9000,
      cniConfDir: "/run/cni/net.d",
      cniDataDir: "/run/cni/trellis",
      cniSocket: "/run/cni/trellis.sock",
      masquerade: false,
      resyncSeconds: 30,
      heartbeatSeconds: 2,
      peerGraceSeconds: 3,
      proxy: false,
      proxySyncIntervalMs: 250,
      flowBuffer: 0,
      flowEvents: ["new", "update", "destroy"],
      metricsAddress: { host: "fd00::1", port: 9100 },
      externalIpCidrs: [parsePrefix("198.19.0.0/24"), parsePrefix("fd00:198:19::/64")],
    } satisfies AgentOptions);
    assert.equal(parseAgentOptions(flags({ metricsBindAddress: "off" })).metricsAddress, undefined, "off serves nothing");
    // kube-proxy's endpoints speak for the agent's proxy: with another proxy (--no-proxy) they stay off.
    assert.deepEqual(parseAgentOptions(flags({ proxyHealthzBindAddress: "0.0.0.0:10256" })).proxyHealthzAddress, { host: "0.0.0.0", port: 10256 });
    assert.equal(parseAgentOptions(flags({ proxyHealthzBindAddress: "0.0.0.0:10256", proxy: false })).proxyHealthzAddress, undefined);
    assert.deepEqual(
      ["1", "true", "0"].map((value) => parseAgentOptions(flags({ masquerade: value })).masquerade),
      [true, true, false],
      "TRELLIS_MASQUERADE as 1/true/0",
    );
    assert.deepEqual(
      ["1280", "65535"].map((mtu) => parseAgentOptions(flags({ mtu })).mtu),
      [1280, 65535],
      "the MTU bounds themselves are allowed",
    );
  });

  /*
   * Bug caught: a bad value accepted (an agent that routes nothing, or partly), or refused with a
   * message that does not say which flag, which value, and what would do. Each message is matched
   * in full from the flag on.
   */
  const refusals: ReadonlyArray<readonly [string, Partial<AgentFlags>, RegExp]> = [
    ["unknown --mode", { mode: "bgp" }, /^--mode "bgp" is not a routing mode: expected one of direct, vxlan, auto$/],
    ["--node-ip not an IP", { nodeIp: "198.18.0.300" }, /^--node-ip "198\.18\.0\.300" is not an IP address: give one address per family, e\.g\. 198\.18\.0\.10,fd00:198:18::10$/],
    ["--node-ip a host name", { nodeIp: "node-1" }, /^--node-ip "node-1" is not an IP address: give one address per family/],
    ["two IPv4 node IPs", { nodeIp: "198.18.0.10,198.18.0.11" }, /^--node-ip 198\.18\.0\.10,198\.18\.0\.11 must hold at most one address per family$/],
    ["two IPv6 node IPs", { nodeIp: "fd00:198:18::10,fd00:198:18::11" }, /^--node-ip fd00:198:18::10,fd00:198:18::11 must hold at most one address per family$/],
    ["three node IPs", { nodeIp: "198.18.0.10,fd00:198:18::10,198.18.0.11" }, /^--node-ip 198\.18\.0\.10,fd00:198:18::10,198\.18\.0\.11 must hold at most one address per family$/],
    ["--mtu below IPv6's minimum", { mtu: "1279" }, /^--mtu "1279" is not a whole number from 1280 to 65535$/],
    ["--mtu above the maximum", { mtu: "65536" }, /^--mtu "65536" is not a whole number from 1280 to 65535$/],
    ["--mtu not a number", { mtu: "abc" }, /^--mtu "abc" is not a whole number from 1280 to 65535$/],
    ["--mtu with a unit", { mtu: "1500b" }, /^--mtu "1500b" is not a whole number from 1280 to 65535$/],
    ["relative --cni-conf-dir", { cniConfDir: "etc/cni/net.d" }, /^--cni-conf-dir "etc\/cni\/net\.d" is not an absolute path$/],
    ["relative --cni-data-dir", { cniDataDir: "./cni" }, /^--cni-data-dir "\.\/cni" is not an absolute path$/],
    ["--peer-grace equal to --heartbeat-interval", { heartbeatInterval: "5", peerGrace: "5" }, /^--peer-grace 5 must be longer than --heartbeat-interval 5, or live peers would lose their routes$/],
    ["--peer-grace shorter than --heartbeat-interval", { heartbeatInterval: "30", peerGrace: "10" }, /^--peer-grace 10 must be longer than --heartbeat-interval 30, or live peers would lose their routes$/],
    ["--resync-interval 0", { resyncInterval: "0" }, /^--resync-interval "0" is not a whole number from 1 to 3600$/],
    ["--heartbeat-interval negative", { heartbeatInterval: "-1" }, /^--heartbeat-interval "-1" is not a whole number from 1 to 3600$/],
    ["--peer-grace fractional", { peerGrace: "1.5" }, /^--peer-grace "1\.5" is not a whole number from 1 to 86400$/],
    ["--proxy-sync-interval negative", { proxySyncInterval: "-1" }, /^--proxy-sync-interval "-1" is not a number of seconds from 0 to 60 \(at most 3 decimals, e\.g\. 0\.25\)$/],
    ["--proxy-sync-interval above a minute", { proxySyncInterval: "61" }, /^--proxy-sync-interval "61" is not a number of seconds from 0 to 60/],
    ["--proxy-sync-interval with a unit", { proxySyncInterval: "1s" }, /^--proxy-sync-interval "1s" is not a number of seconds from 0 to 60/],
    ["--flow-buffer negative", { flowBuffer: "-1" }, /^--flow-buffer "-1" is not a whole number from 0 to 100000$/],
    ["--flow-buffer huge", { flowBuffer: "99999999999999999999" }, /^--flow-buffer "99999999999999999999" is not a whole number from 0 to 100000$/],
    ["--flow-events without new", { flowEvents: "update,destroy" }, /^--flow-events "update,destroy" is not a list of conntrack events: expected new and any of update, destroy, comma-separated \(such as new,destroy\)$/],
    ["--flow-events unknown", { flowEvents: "new,assured" }, /^--flow-events "new,assured" is not a list/],
    ["--flow-events twice", { flowEvents: "new,new" }, /^--flow-events "new,new" is not a list/],
    ["--metrics-bind-address without a port", { metricsBindAddress: "127.0.0.1" }, /^--metrics-bind-address "127\.0\.0\.1" is not HOST:PORT: expected an IPv4 address and port \(127\.0\.0\.1:9656\), \[IPv6\]:PORT \(\[::1\]:9656\), or off$/],
    ["--metrics-bind-address IPv6 without brackets", { metricsBindAddress: "::1:10249" }, /^--metrics-bind-address "::1:10249" is not HOST:PORT/],
    ["--metrics-bind-address a host name", { metricsBindAddress: "localhost:10249" }, /^--metrics-bind-address "localhost:10249" is not HOST:PORT/],
    ["--proxy-healthz-bind-address a port out of range", { proxyHealthzBindAddress: "0.0.0.0:70000" }, /^--proxy-healthz-bind-address "0\.0\.0\.0:70000" is not HOST:PORT: expected an IPv4 address and port \(127\.0\.0\.1:10256\)/],
    ["--proxy-status-bind-address with a newline", { proxyStatusBindAddress: "127.0.0.1:10249\n" }, /^--proxy-status-bind-address "127\.0\.0\.1:10249\\n" is not HOST:PORT/],
    ["--metrics-bind-address port 0", { metricsBindAddress: "127.0.0.1:0" }, /^--metrics-bind-address "127\.0\.0\.1:0" is not HOST:PORT/],
    ["TRELLIS_PROXY not a boolean", { proxy: "yes" }, /^TRELLIS_PROXY "yes" is not a boolean: expected true or false$/],
    ["unknown --log-level", { logLevel: "trace" }, /^--log-level "trace" is not a log level: expected one of debug, info, warn, error$/],
    ["TRELLIS_MASQUERADE not a boolean", { masquerade: "yes" }, /^TRELLIS_MASQUERADE "yes" is not a boolean: expected true or false$/],
    ["a store of unknown kind", { store: "mysql://db:3306" }, /invalid store "mysql:\/\/db:3306": unknown kind of store; expected sqlite:PATH \(such as sqlite:\/var\/lib\/trellis\/cluster\.db\) or etcd:\/\/HOST:PORT \(such as etcd:\/\/127\.0\.0\.1:2379\)$/],
    ["an etcd store without a port", { store: "etcd://127.0.0.1" }, /invalid store "etcd:\/\/127\.0\.0\.1": etcd stores are written etcd:\/\/HOST:PORT with nothing after the port; expected sqlite:PATH/],
    ["an unknown --datastore", { datastore: "consul" }, /^--datastore "consul" is not a datastore: expected one of trellis, kubernetes$/],
    ["--datastore kubernetes without --cluster-cidr", { datastore: "kubernetes" }, /^--cluster-cidr is needed with --datastore kubernetes: give the cluster's pod CIDRs, one per family, as kube-controller-manager's --cluster-cidr \(e\.g\. 10\.244\.0\.0\/16,fd00:10:244::\/56\)$/],
    ["a --cluster-cidr with host bits", { datastore: "kubernetes", clusterCidr: "10.244.0.1/16" }, /^--cluster-cidr "10\.244\.0\.1\/16" is not a network prefix such as 10\.244\.0\.0\/16$/],
    ["two IPv4 --cluster-cidrs", { datastore: "kubernetes", clusterCidr: "10.244.0.0/16,10.245.0.0/16" }, /^--cluster-cidr 10\.244\.0\.0\/16,10\.245\.0\.0\/16 must hold at most one prefix per family$/],
    ["an --external-ip-cidrs address with host bits", { externalIpCidrs: "198.19.0.1/24" }, /^--external-ip-cidrs "198\.19\.0\.1\/24" is not a network prefix: give where Services' external addresses may be/],
    ["an --external-ip-cidrs word", { externalIpCidrs: "all" }, /^--external-ip-cidrs "all" is not a network prefix/],
    ["--plan with --datastore kubernetes", { datastore: "kubernetes", clusterCidr: "10.244.0.0/16", plan: "/etc/plan.yaml" }, /^--plan is for the Trellis store: with --datastore kubernetes the API server and node IPAM hold the cluster's addresses$/],
    ["--kubeconfig with a newline", { datastore: "kubernetes", clusterCidr: "10.244.0.0/16", kubeconfig: "/etc/a\nb" }, /^--kubeconfig "\/etc\/a\\nb" is not a file name$/],
    ["--cluster-cidr with the Trellis store", { clusterCidr: "10.244.0.0/16" }, /^--kubeconfig and --cluster-cidr are for --datastore kubernetes; the Trellis store has the cluster's addresses in its plan$/],
    ["an invalid node name", { nodeName: "Node_1" }, /invalid node name "Node_1": expected a DNS subdomain of at most 253 characters: lowercase letters, digits, '-' and '\.', starting and ending with a letter or digit \(such as node-1\)$/],
  ];

  for (const [what, bad, message] of refusals) {
    test(`refuses ${what}`, () => {
      assert.throws(() => parseAgentOptions(flags(bad)), (error: Error) => {
        assert.match(error.message, message);
        return true;
      });
    });
  }

  // Bug caught: the Kubernetes flags not carried over, or the store checked though it is not used.
  test("the Kubernetes datastore", () => {
    const parsed = parseAgentOptions(flags({ datastore: "kubernetes", kubeconfig: "/etc/trellis/kubeconfig", clusterCidr: "fd00:10:244::/56, 10.244.0.0/16", store: "not a store" }));
    assert.equal(parsed.datastore, "kubernetes");
    assert.equal(parsed.kubeconfig, "/etc/trellis/kubeconfig");
    assert.deepEqual(parsed.clusterCidrs.map((cidr) => cidr.family), [6, 4]);
  });

  // Bug caught: the store and node-name refusals come from shared helpers and do
  // not say which flag (or TRELLIS_STORE / TRELLIS_NODE_NAME) held the value.
  for (const [flag, bad] of [
    ["--store", { store: "mysql://db:3306" }],
    ["--node-name", { nodeName: "Node_1" }],
  ] as const) {
    test(`the refusal of a bad ${flag} names the flag`, () => {
      assert.throws(() => parseAgentOptions(flags(bad)), (error: Error) => error.message.includes(flag));
    });
  }
});
