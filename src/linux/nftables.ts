/** nftables: each change is one `nft -f -` transaction (all of it applies or none does). */
import { run } from "./exec.js";

export async function nftApply(script: string, netns?: string): Promise<void> {
  await run("nft", ["-f", "-"], { input: script, netns });
}

/** Lists a table as nft's JSON objects; returns undefined if the table does not exist. */
export async function nftListTable(family: string, table: string, netns?: string): Promise<unknown[] | undefined> {
  return nftJson(["list", "table", family, table], netns);
}

/**
 * The named chains (with their rules) and sets (with their elements) of a table, as nft's JSON
 * objects; undefined when the table or one of them does not exist. Each is listed alone, which
 * nft does without reading the rest of the namespace.
 */
export async function nftListObjects(family: string, table: string, objects: { chains: readonly string[]; sets: readonly string[] }, netns?: string): Promise<unknown[] | undefined> {
  const items: unknown[] = [];
  for (const [kind, names] of [["chain", objects.chains], ["set", objects.sets]] as const) {
    for (const name of names) {
      const listed = await nftJson(["list", kind, family, table, name], netns);
      if (!listed) return undefined;
      items.push(...listed);
    }
  }
  return items;
}

/** `nft -j ARGS` as its JSON objects; undefined when what it lists does not exist. */
async function nftJson(args: readonly string[], netns?: string): Promise<unknown[] | undefined> {
  try {
    const { stdout } = await run("nft", ["-j", ...args], { netns });
    return (JSON.parse(stdout) as { nftables: unknown[] }).nftables;
  } catch (error) {
    if (error instanceof Error && /No such file or directory/.test(error.message)) return undefined;
    throw error;
  }
}

/** The tables this namespace holds, as `FAMILY NAME` (`ip trellis-proxy`). */
export async function nftListTables(netns?: string): Promise<string[]> {
  const { stdout } = await run("nft", ["list", "tables"], { netns });
  return stdout.split("\n").flatMap((line) => {
    const match = /^table (\S+) (\S+)$/.exec(line.trim());
    return match ? [`${match[1]} ${match[2]}`] : [];
  });
}
