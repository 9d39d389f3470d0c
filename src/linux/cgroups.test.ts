import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cgroupHierarchies, cgroupPids, createCgroup, removeCgroup, usesCgroupV1 } from "./cgroups.js";

const HYBRID = [
  "25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
  "30 29 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu",
  "31 29 0:27 / /sys/fs/cgroup/cpuset rw,relatime shared:6 - cgroup cgroup rw,cpuset",
  "32 29 0:28 / /sys/fs/cgroup/systemd rw,relatime shared:7 - cgroup cgroup rw,name=systemd,release_agent=/x",
  "33 29 0:29 / /sys/fs/cgroup/unified rw,relatime shared:8 - cgroup2 cgroup2 rw",
  "",
].join("\n");

describe("linux/cgroups", () => {
  it("finds every v1 hierarchy with its controllers, and the unified one, from mountinfo", () => {
    // Bug caught: release_agent or rw taken for a controller, or the cgroup2 mount taken for a v1 one.
    assert.deepEqual(cgroupHierarchies(HYBRID), [
      { mountPoint: "/sys/fs/cgroup/cpu", version: 1, controllers: ["cpu"] },
      { mountPoint: "/sys/fs/cgroup/cpuset", version: 1, controllers: ["cpuset"] },
      { mountPoint: "/sys/fs/cgroup/systemd", version: 1, controllers: ["name=systemd"] },
      { mountPoint: "/sys/fs/cgroup/unified", version: 2, controllers: [] },
    ]);
    assert.ok(usesCgroupV1(cgroupHierarchies(HYBRID)));
    assert.ok(!usesCgroupV1(cgroupHierarchies("40 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")));
  });

  it("refuses a path that leaves the hierarchy or holds other characters, before touching anything", () => {
    for (const bad of ["relative", "/a/../b", "/a b", "/a\nb", "/%d", "/"]) {
      assert.throws(() => createCgroup(bad, []), /is not an absolute path of letters/, bad);
      assert.throws(() => removeCgroup(bad, []), /is not an absolute path of letters/, bad);
      assert.throws(() => cgroupPids(bad, []), /is not an absolute path of letters/, bad);
    }
  });
});
