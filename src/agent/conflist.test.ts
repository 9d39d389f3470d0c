import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { parseNetConf } from "../cni/config.js";
import { formatPrefix, parsePrefix } from "../net/ip.js";
import { CONFLIST_NAME, renderConflist, writeConflist } from "./conflist.js";

const dirs: string[] = [];
after(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function temporaryDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "trellis-conflist-"));
  dirs.push(dir);
  return dir;
}

const DUAL_STACK = { podCidrs: [parsePrefix("fd00:10:244:1::/64"), parsePrefix("10.244.1.0/24")], mtu: 1430, dataDir: "/var/lib/cni/trellis", agentSocket: "/run/trellis/cni.sock" };

describe("renderConflist", () => {
  // Bugs caught: a pod CIDR dropped or two families merged into one range set (pods get one
  // address instead of one per family); the families reordered (the pod's primary IP changes);
  // the pod MTU or the plugin's state directory not passed on.
  test("parsed back: type trellis on bridge trellis0, one range set per pod CIDR in order, the MTU and dataDir", () => {
    const text = renderConflist(DUAL_STACK);
    assert.ok(text.endsWith("}\n"), "ends with a newline");
    assert.deepEqual(JSON.parse(text), {
      cniVersion: "1.0.0",
      cniVersions: ["1.0.0", "1.1.0"],
      name: "trellis",
      plugins: [
        {
          type: "trellis",
          agentSocket: "/run/trellis/cni.sock",
          bridge: "trellis0",
          mtu: 1430,
          hairpinMode: true,
          capabilities: { portMappings: true },
          ipam: { ranges: [[{ subnet: "fd00:10:244:1::/64" }], [{ subnet: "10.244.1.0/24" }]], dataDir: "/var/lib/cni/trellis" },
        },
      ],
    });
  });

  // Bug caught: the agent writing a configuration the trellis plugin itself refuses, so every pod ADD fails.
  test("the plugin accepts it as the runtime hands it over (the list's name and cniVersion injected)", () => {
    const list = JSON.parse(renderConflist(DUAL_STACK)) as { name: string; cniVersion: string; plugins: Record<string, unknown>[] };
    const conf = parseNetConf(JSON.stringify({ ...list.plugins[0], name: list.name, cniVersion: list.cniVersion }), new Map());
    assert.deepEqual(
      {
        name: conf.name,
        cniVersion: conf.cniVersion,
        bridge: conf.bridge,
        mtu: conf.mtu,
        hairpin: conf.hairpinMode,
        stateDir: conf.stateDir,
        agentSocket: conf.agentSocket,
        subnets: conf.ipam.kind === "builtin" ? conf.ipam.ranges.map((set) => set.map((range) => formatPrefix(range.subnet))) : conf.ipam.kind,
      },
      { name: "trellis", cniVersion: "1.0.0", bridge: "trellis0", mtu: 1430, hairpin: true, stateDir: "/var/lib/cni/trellis", agentSocket: "/run/trellis/cni.sock", subnets: [["fd00:10:244:1::/64"], ["10.244.1.0/24"]] },
    );
  });

  // Bug caught: output depending on anything but its input (key order, a timestamp), which would rewrite the file every sync.
  test("is the same text for the same input", () => {
    assert.equal(renderConflist({ ...DUAL_STACK, podCidrs: [...DUAL_STACK.podCidrs] }), renderConflist(DUAL_STACK));
  });
});

describe("writeConflist", () => {
  // Bug caught: the file written in place (a runtime reading it mid-write sees half a JSON), or a
  // temp file left behind in the runtime's configuration directory.
  test("creates the directory and writes atomically, leaving no temp file", () => {
    const dir = join(temporaryDir(), "net.d");
    const text = renderConflist(DUAL_STACK);
    assert.equal(writeConflist(dir, text), true);
    assert.deepEqual(readdirSync(dir), [CONFLIST_NAME]);
    assert.equal(readFileSync(join(dir, CONFLIST_NAME), "utf8"), text);
  });

  // Bug caught: rewriting on every resync (runtimes watching the directory reload; the mtime never settles).
  test("unchanged content: returns false and does not touch the file", () => {
    const dir = temporaryDir();
    const path = join(dir, CONFLIST_NAME);
    const text = renderConflist(DUAL_STACK);
    assert.equal(writeConflist(dir, text), true);
    const past = new Date("2020-01-01T00:00:00Z");
    utimesSync(path, past, past);
    const before = statSync(path);
    assert.equal(writeConflist(dir, text), false);
    const afterWrite = statSync(path);
    assert.deepEqual([afterWrite.mtimeMs, afterWrite.ino], [before.mtimeMs, before.ino]);
    assert.deepEqual(readdirSync(dir), [CONFLIST_NAME]);
  });

  // Bug caught: a changed pod CIDR or MTU not written, or written by truncating the old file (not a new inode).
  test("changed content replaces the file by rename", () => {
    const dir = temporaryDir();
    const path = join(dir, CONFLIST_NAME);
    writeFileSync(path, "{}\n");
    const before = statSync(path);
    const text = renderConflist({ ...DUAL_STACK, mtu: 1450 });
    assert.equal(writeConflist(dir, text), true);
    assert.equal(readFileSync(path, "utf8"), text);
    assert.notEqual(statSync(path).ino, before.ino, "a new file took the old one's name");
    assert.deepEqual(readdirSync(dir), [CONFLIST_NAME]);
  });
});
