/**
 * The lab's store as the lab's own members reach it. A store on the lab's underlay (its own etcd
 * on `external`, or one the nodes reach) exists only inside the lab's namespaces: the `trellis`
 * command that serves the lab runs in the machine's namespace, where that address is not the
 * lab's at all, so it never talks to the store itself. It runs `trellis apply|delete|get`
 * inside the first node's namespace instead, as the agents there do.
 */
import { run } from "../linux/exec.js";
import { selfInvocation } from "./probe.js";
import type { LabState } from "./state.js";

export async function labStore(state: LabState, args: readonly string[], input?: string): Promise<string> {
  const [command, ...leading] = selfInvocation();
  const node = state.nodes[0];
  if (!node) throw new Error(`lab ${state.name} has no node to reach its store from`);
  const { stdout } = await run(command, [...leading, ...args, "--store", state.store], { netns: node.netnsPath, input, timeoutMs: 120_000 });
  return stdout;
}

/** Every object of a kind in the lab's store (`trellis get KIND -A -o json`). */
export async function labStoreObjects<T>(state: LabState, resource: "services" | "pods" | "endpointslices"): Promise<T[]> {
  return (JSON.parse(await labStore(state, ["get", resource, "-A", "-o", "json"])) as { items: T[] }).items;
}
