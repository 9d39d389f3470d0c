/**
 * nftables changes as one netlink batch, for `trellis-nft-batch` to hand to the kernel: what
 * `nft -f` sends, built here from the steps, without nft's read-back of the whole ruleset that
 * precedes every change it makes (nft 1.0.6 dumps every chain in the namespace first: 0.6 s at
 * 10,000 Services, for a change of one).
 *
 * Only the statements Trellis writes are understood, each encoded as nft 1.0.6 encodes it
 * (`nft --debug=netlink` shows the same expressions, registers included), so `nft list` shows
 * what the text would have written. Anything else is refused with NftUnsupported, and the
 * caller writes that change with `nft -f` instead.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import { parseIp, type Family } from "../net/ip.js";
import { run } from "./exec.js";

export interface NftBaseChain {
  readonly type: "nat" | "filter";
  readonly hook: "prerouting" | "input" | "forward" | "output" | "postrouting";
  readonly priority: number;
}

export interface NftSetDefinition {
  readonly kind: "set" | "map";
  /** nft's type text: `ipv4_addr . inet_proto . inet_service : verdict`. */
  readonly type: string;
  readonly flags: readonly string[];
  readonly timeoutSeconds?: number;
}

/** One step on table `table` of its family, in the shape dataplane's ProxyOp has. */
export type NftOp =
  | { readonly op: "add table" | "delete table"; readonly family: Family; readonly table: string }
  | { readonly op: "add chain"; readonly family: Family; readonly table: string; readonly name: string; readonly base?: NftBaseChain }
  | { readonly op: "flush chain" | "delete chain"; readonly family: Family; readonly table: string; readonly name: string }
  | { readonly op: "add rule"; readonly family: Family; readonly table: string; readonly chain: string; readonly rule: string }
  | { readonly op: "add set"; readonly family: Family; readonly table: string; readonly name: string; readonly set: NftSetDefinition }
  | { readonly op: "delete set"; readonly family: Family; readonly table: string; readonly name: string; readonly kind: "set" | "map" }
  | {
      readonly op: "add element" | "delete element"; readonly family: Family; readonly table: string; readonly name: string; readonly set: NftSetDefinition;
      readonly elements: ReadonlyArray<readonly [string, string]>;
    };

/** A step this writer does not encode; the change goes through `nft -f`. */
export class NftUnsupported extends Error {}

// linux/netfilter/nfnetlink.h, nf_tables.h, netlink.h
const NFNL_SUBSYS_NFTABLES = 10;
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
const MSG = { NEWTABLE: 0, DELTABLE: 2, NEWCHAIN: 3, DELCHAIN: 5, NEWRULE: 6, DELRULE: 8, NEWSET: 9, DELSET: 11, NEWSETELEM: 12, DELSETELEM: 14 } as const;
const NLM_F_REQUEST = 0x1;
const NLM_F_CREATE = 0x400;
const NLM_F_APPEND = 0x800;
const NLA_F_NESTED = 0x8000;
const NFPROTO: Record<Family, number> = { 4: 2, 6: 10 };
const HOOKS: Record<NftBaseChain["hook"], number> = { prerouting: 0, input: 1, forward: 2, output: 3, postrouting: 4 };
const VERDICT = { drop: 0, accept: 1, jump: -3, goto: -4, return: -5 } as const;
const SET_FLAGS: Record<string, number> = { interval: 0x4, timeout: 0x10, dynamic: 0x20 };
const NFT_SET_MAP = 0x8;
const NFT_DATA_VERDICT = 0xffffff00;
/** nft's datatype numbers, for a set's key type (concatenations pack 6 bits per field). */
const DATATYPES: Record<string, { id: number; length: number }> = {
  ipv4_addr: { id: 7, length: 4 },
  ipv6_addr: { id: 8, length: 16 },
  inet_proto: { id: 12, length: 1 },
  inet_service: { id: 13, length: 2 },
};
const PROTOCOLS: Record<string, number> = { tcp: 6, udp: 17, sctp: 132 };
const ADDRESS: Record<Family, { length: number; saddr: number; daddr: number; payload: "ip" | "ip6" }> = {
  4: { length: 4, saddr: 12, daddr: 16, payload: "ip" },
  6: { length: 16, saddr: 8, daddr: 24, payload: "ip6" },
};
const NAME = /^[A-Za-z_.][A-Za-z0-9_./-]{0,254}$/;

/** Encodes `ops` as one batch; throws NftUnsupported for a step it does not know. */
export function encodeNftBatch(ops: readonly NftOp[]): Buffer {
  const w = new Writer();
  let seq = 0;
  const send = (type: number, family: number, flags: number, body: () => void) => {
    const start = w.beginMessage((NFNL_SUBSYS_NFTABLES << 8) | type, NLM_F_REQUEST | flags, ++seq, family, 0);
    body();
    w.endMessage(start);
  };
  w.endMessage(w.beginMessage(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, ++seq, 0, NFNL_SUBSYS_NFTABLES));
  /** Sets created in this batch, by family, table and name: rules and elements refer to them by id too. */
  const created = new Map<string, number>();
  let nextSetId = 1;
  for (const op of ops) {
    const family = NFPROTO[op.family];
    const table = checkName("table", op.table);
    const setKey = (name: string) => `${op.family}/${table}/${name}`;
    switch (op.op) {
      case "add table":
        send(MSG.NEWTABLE, family, NLM_F_CREATE, () => {
          w.string(1, table);
          w.u32(2, 0);
        });
        break;
      case "delete table":
        send(MSG.DELTABLE, family, 0, () => w.string(1, table));
        for (const key of [...created.keys()]) if (key.startsWith(`${op.family}/${table}/`)) created.delete(key);
        break;
      case "add chain":
        send(MSG.NEWCHAIN, family, NLM_F_CREATE, () => {
          w.string(1, table);
          w.string(3, checkName("chain", op.name));
          if (op.base) {
            const base = op.base;
            w.nest(4, () => {
              w.u32(1, HOOKS[base.hook]);
              w.u32(2, base.priority);
            });
            w.u32(5, VERDICT.accept);
            w.string(7, base.type);
          }
        });
        break;
      case "flush chain":
        send(MSG.DELRULE, family, 0, () => {
          w.string(1, table);
          w.string(2, checkName("chain", op.name));
        });
        break;
      case "delete chain":
        send(MSG.DELCHAIN, family, 0, () => {
          w.string(1, table);
          w.string(3, checkName("chain", op.name));
        });
        break;
      case "add rule":
        send(MSG.NEWRULE, family, NLM_F_CREATE | NLM_F_APPEND, () => {
          w.string(1, table);
          w.string(2, checkName("chain", op.chain));
          w.nest(4, () => compileRule(w, op.family, op.rule, (name) => created.get(setKey(name))));
        });
        break;
      case "add set": {
        const id = nextSetId++;
        created.set(setKey(op.name), id);
        send(MSG.NEWSET, family, NLM_F_CREATE, () => setAttrs(w, table, op.name, op.set, id));
        break;
      }
      case "delete set":
        created.delete(setKey(op.name));
        send(MSG.DELSET, family, 0, () => {
          w.string(1, table);
          w.string(2, checkName("set", op.name));
        });
        break;
      case "add element":
      case "delete element": {
        const adding = op.op === "add element";
        const shape = setShape(op.set);
        const id = created.get(setKey(op.name));
        checkName("set", op.name);
        // One message's element list is one netlink attribute: at most 64 KiB, so a long list takes several.
        let next = 0;
        while (next < op.elements.length) {
          send(adding ? MSG.NEWSETELEM : MSG.DELSETELEM, family, adding ? NLM_F_CREATE : 0, () => {
            w.string(1, table);
            w.string(2, op.name);
            if (id !== undefined) w.u32(4, id);
            w.nest(3, () => {
              const listStart = w.position;
              while (next < op.elements.length && w.position - listStart < 60_000) {
                const [key, value] = op.elements[next++];
                if (shape.interval) {
                  // A prefix is two elements: its first address, and the one after its last marked as an end.
                  const [start, end] = prefixBounds(shape.key, key);
                  w.nest(1, () => w.nest(1, () => w.bytes(1, start)));
                  w.nest(1, () => {
                    w.nest(1, () => w.bytes(1, end));
                    w.u32(3, 1);
                  });
                  continue;
                }
                w.nest(1, () => {
                  w.nest(1, () => w.bytes(1, encodeKey(shape.key, key)));
                  if (adding && shape.map) w.nest(2, () => verdictData(w, value));
                });
              }
            });
          });
        }
        break;
      }
      default:
        throw new NftUnsupported(`step ${JSON.stringify((op as { op: string }).op)}`);
    }
  }
  w.endMessage(w.beginMessage(NFNL_MSG_BATCH_END, NLM_F_REQUEST, ++seq, 0, NFNL_SUBSYS_NFTABLES));
  return w.result();
}

/** The kernel refused a batch (it changed nothing), or the writer could not send it. */
export class NftWriteError extends Error {}

/**
 * `trellis-nft-batch --serve`, kept running: batch after batch on one netlink socket, in this
 * process's network namespace. (A process that has written to nf_tables waits about 10 ms in its
 * exit for the kernel to release its socket: a writer per batch would pay it every change.)
 * One batch at a time; a writer that ended is started again for the next batch.
 */
export class NftBatchWriter {
  private child: ChildProcessWithoutNullStreams | undefined;
  private readonly waiting: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  private received = Buffer.alloc(0);

  constructor(readonly path: string) {}

  /** The running writer's process id, if one runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Whether the program is there. */
  available(): boolean {
    return existsSync(this.path);
  }

  /** Applies `batch` whole, or rejects with the kernel's reason (then nothing of it applied). */
  apply(batch: Buffer): Promise<void> {
    const child = this.child ?? this.start();
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      const header = Buffer.alloc(4);
      header.writeUInt32BE(batch.length);
      child.stdin.write(header);
      child.stdin.write(batch);
    });
  }

  /**
   * The namespace's tables as `FAMILY NAME` (`ip trellis-proxy-3`), from one netlink dump of the
   * tables alone (`--tables`): `nft list tables` reads every chain, rule and set first, more than
   * 30 s at 10,000 Services. Rejects with the program's message when it cannot list.
   */
  async listTables(): Promise<string[]> {
    try {
      const { stdout } = await run(this.path, ["--tables"], { timeoutMs: 10_000 });
      return stdout.split("\n").filter((line) => line !== "");
    } catch (error) {
      throw new NftWriteError(`${this.path} --tables could not list the tables: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /** Ends the writer (it exits when its input ends). */
  close(): void {
    this.child?.stdin.end();
    this.child = undefined;
  }

  private start(): ChildProcessWithoutNullStreams {
    const child = spawn(this.path, ["--serve"], { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    this.received = Buffer.alloc(0);
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString("utf8")).slice(-2000)));
    child.stdin.on("error", () => undefined);
    child.stdout.on("data", (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      while (this.received.length >= 8) {
        const length = this.received.readUInt32BE(4);
        if (this.received.length < 8 + length) break;
        const status = this.received.readUInt32BE(0);
        const reason = this.received.subarray(8, 8 + length).toString("utf8");
        this.received = this.received.subarray(8 + length);
        const call = this.waiting.shift();
        if (status === 0) call?.resolve();
        else call?.reject(new NftWriteError(`the kernel did not take the nftables batch: ${reason}`));
      }
    });
    const ended = (why: string) => {
      if (this.child === child) this.child = undefined;
      for (const call of this.waiting.splice(0)) call.reject(new NftWriteError(`the netlink writer ${this.path} ${why}${stderr ? `: ${stderr.trim()}` : ""}`));
    };
    child.on("exit", (code, signal) => ended(`ended (${signal ?? `exit ${code}`})`));
    child.on("error", (error) => ended(`could not run: ${error.message}`));
    return child;
  }
}

// ---- rules --------------------------------------------------------------------------------

type SetId = (name: string) => number | undefined;

// The word sequences rules start with, made once (a rule is matched against several of them).
const FORMS: Record<Family, { daddrProtoPortVmap: readonly string[] }> = {
  4: { daddrProtoPortVmap: ["ip", "daddr", ".", "meta", "l4proto", ".", "th", "dport", "vmap"] },
  6: { daddrProtoPortVmap: ["ip6", "daddr", ".", "meta", "l4proto", ".", "th", "dport", "vmap"] },
};
const PROTO_PORT_VMAP = ["meta", "l4proto", ".", "th", "dport", "vmap"] as const;
const META_L4PROTO = ["meta", "l4proto"] as const;
const CT_STATE_NEW = ["ct", "state", "new"] as const;
const NUMGEN_RANDOM_MOD = ["numgen", "random", "mod"] as const;
const FIB_SADDR_LOCAL = ["fib", "saddr", "type", "local"] as const;
const META_MARK_AND = ["meta", "mark", "&"] as const;
const EQUALS = ["=="] as const;
const PROTOCOL_BYTES: Record<string, Buffer> = Object.fromEntries(Object.entries(PROTOCOLS).map(([name, number]) => [name, Buffer.from([number])]));

/**
 * One rule's expressions, written into the open expression list. Each form below is a rule the
 * Service proxy writes; the expressions are nft 1.0.6's for it.
 */
function compileRule(w: Writer, family: Family, rule: string, setId: SetId): void {
  const address = ADDRESS[family];
  const ip = address.payload;
  const words = rule.split(" ");
  const forms = FORMS[family];
  let i = 0;
  const at = (expected: readonly string[]) => {
    for (let k = 0; k < expected.length; k++) if (words[i + k] !== expected[k]) return false;
    return true;
  };
  const take = (expected: readonly string[]) => {
    if (!at(expected)) return false;
    i += expected.length;
    return true;
  };
  const next = () => {
    if (i >= words.length) throw new NftUnsupported(`rule ${JSON.stringify(rule)}: it ends early`);
    return words[i++];
  };
  const setName = (word: string) => {
    if (!word.startsWith("@")) throw new NftUnsupported(`rule ${JSON.stringify(rule)}: ${JSON.stringify(word)} is not a set`);
    return checkName("set", word.slice(1));
  };
  const lookup = (word: string, options: { dreg?: number; invert?: boolean } = {}) => {
    const name = setName(word);
    const id = setId(name);
    expr(w, "lookup", () => {
      w.string(1, name);
      w.u32(2, 1);
      if (options.dreg !== undefined) w.u32(3, options.dreg);
      if (id !== undefined) w.u32(4, id);
      if (options.invert) w.u32(5, 1);
    });
  };

  // Matches, left to right.
  for (;;) {
    if (take(forms.daddrProtoPortVmap)) {
      // A concatenation: address, protocol and port side by side in 4-byte register slots.
      payload(w, 1, address.daddr, address.length, 1);
      meta(w, 16, register(address.length));
      payload(w, 2, 2, 2, register(address.length + 4));
      lookup(next(), { dreg: 0 });
    } else if (take(PROTO_PORT_VMAP)) {
      meta(w, 16, 1);
      payload(w, 2, 2, 2, register(4));
      lookup(next(), { dreg: 0 });
    } else if (words[i] === ip && (words[i + 1] === "daddr" || words[i + 1] === "saddr")) {
      const field = words[i + 1] === "daddr" ? address.daddr : address.saddr;
      i += 2;
      payload(w, 1, field, address.length, 1);
      const operand = next();
      if (operand === "!=") lookup(next(), { invert: true });
      else if (operand.startsWith("@")) lookup(operand);
      else cmp(w, 0, addressBytes(family, operand, rule));
    } else if (take(META_L4PROTO)) {
      const protocol = PROTOCOL_BYTES[next()];
      if (protocol === undefined) throw new NftUnsupported(`rule ${JSON.stringify(rule)}: unknown protocol`);
      meta(w, 16, 1);
      cmp(w, 0, protocol);
    } else if (take(CT_STATE_NEW)) {
      expr(w, "ct", () => {
        w.u32(1, 1);
        w.u32(2, 0);
      });
      bitwise(w, hostU32(8), hostU32(0));
      cmp(w, 1, hostU32(0));
    } else if (take(NUMGEN_RANDOM_MOD)) {
      const modulus = integer(next(), 1, 0xffffffff, rule);
      if (!take(EQUALS)) throw new NftUnsupported(`rule ${JSON.stringify(rule)}: numgen without a comparison`);
      const value = integer(next(), 0, modulus - 1, rule);
      expr(w, "numgen", () => {
        w.u32(1, 1);
        w.u32(2, modulus);
        w.u32(3, 1);
        w.u32(4, 0);
      });
      cmp(w, 0, hostU32(value));
    } else if (take(FIB_SADDR_LOCAL)) {
      expr(w, "fib", () => {
        w.u32(1, 1);
        w.u32(2, 3);
        w.u32(3, 1);
      });
      cmp(w, 0, hostU32(2));
    } else if (take(META_MARK_AND)) {
      const mask = integer(next(), 0, 0xffffffff, rule);
      if (!take(EQUALS)) throw new NftUnsupported(`rule ${JSON.stringify(rule)}: mark test without a comparison`);
      const value = integer(next(), 0, 0xffffffff, rule);
      meta(w, 3, 1);
      bitwise(w, hostU32(mask), hostU32(0));
      cmp(w, 0, hostU32(value));
    } else {
      break;
    }
  }

  // The statement that ends it.
  const statement = words.slice(i).join(" ");
  let match: RegExpExecArray | null;
  if (statement === "" && words[i - 2] === "vmap") {
    // A verdict map lookup is the statement.
  } else if ((match = /^(jump|goto) (\S+)$/.exec(statement))) {
    immediateVerdict(w, match[1] as "jump" | "goto", checkName("chain", match[2]));
  } else if (statement === "return" || statement === "drop" || statement === "accept") {
    immediateVerdict(w, statement);
  } else if (statement === "reject with tcp reset") {
    expr(w, "reject", () => {
      w.u32(1, 1);
      w.u8(2, 0);
    });
  } else if (statement === "reject") {
    // ICMP port unreachable (3), or ICMPv6's (4).
    expr(w, "reject", () => {
      w.u32(1, 0);
      w.u8(2, family === 4 ? 3 : 4);
    });
  } else if (statement === "masquerade fully-random") {
    expr(w, "masq", () => w.u32(1, 0x10));
  } else if ((match = /^meta mark set meta mark ([|^]) (0x[0-9a-f]{1,8})$/.exec(statement))) {
    const bits = Number.parseInt(match[2], 16);
    // `| bits`: keep every other bit, then set them; `^ bits`: keep all, flip them.
    const mask = match[1] === "|" ? ~bits >>> 0 : 0xffffffff;
    meta(w, 3, 1);
    bitwise(w, hostU32(mask), hostU32(bits));
    expr(w, "meta", () => {
      w.u32(2, 3);
      w.u32(3, 1);
    });
  } else if ((match = /^update (@\S+) \{ (ip6?) saddr \}$/.exec(statement)) && match[2] === ip) {
    const name = setName(match[1]);
    const id = setId(name);
    payload(w, 1, address.saddr, address.length, 1);
    expr(w, "dynset", () => {
      w.string(1, name);
      if (id !== undefined) w.u32(2, id);
      w.u32(3, 1);
      w.u32(4, 1);
    });
  } else if ((match = (family === 4 ? /^dnat to ([0-9.]+):(\d+)$/ : /^dnat to \[([0-9a-f:.]+)\]:(\d+)$/).exec(statement))) {
    const target = addressBytes(family, match[1], rule);
    const port = portBytes(integer(match[2], 1, 65535, rule));
    expr(w, "immediate", () => {
      w.u32(1, 1);
      w.nest(2, () => w.bytes(1, target));
    });
    expr(w, "immediate", () => {
      w.u32(1, 2);
      w.nest(2, () => w.bytes(1, port));
    });
    expr(w, "nat", () => {
      w.u32(1, 1);
      w.u32(2, NFPROTO[family]);
      w.u32(3, 1);
      w.u32(5, 2);
      w.u32(7, 2);
    });
  } else {
    throw new NftUnsupported(`rule ${JSON.stringify(rule)}: ${JSON.stringify(statement)} is not a statement this writer knows`);
  }
}

/** nft's register for a value at `offset` bytes into the concatenation: 16-byte ones where aligned, 4-byte ones otherwise. */
function register(offset: number): number {
  return offset % 16 === 0 ? 1 + offset / 16 : 8 + offset / 4;
}

function expr(w: Writer, name: string, data: () => void): void {
  const outer = beginExpr(w, name);
  data();
  endExpr(w, outer);
}

/** Opens expression `name` and its data; returns what endExpr takes. */
function beginExpr(w: Writer, name: string): [number, number] {
  const outer = w.open(1);
  w.string(1, name);
  return [outer, w.open(2)];
}

function endExpr(w: Writer, [outer, data]: [number, number]): void {
  w.end(data);
  w.end(outer);
}

function payload(w: Writer, base: number, offset: number, length: number, dreg: number): void {
  const at = beginExpr(w, "payload");
  w.u32(1, dreg);
  w.u32(2, base);
  w.u32(3, offset);
  w.u32(4, length);
  endExpr(w, at);
}

function meta(w: Writer, key: number, dreg: number): void {
  const at = beginExpr(w, "meta");
  w.u32(2, key);
  w.u32(1, dreg);
  endExpr(w, at);
}

/** op 0: eq, 1: neq, on register 1. */
function cmp(w: Writer, op: number, data: Buffer): void {
  const at = beginExpr(w, "cmp");
  w.u32(1, 1);
  w.u32(2, op);
  const value = w.open(3);
  w.bytes(1, data);
  w.end(value);
  endExpr(w, at);
}

function bitwise(w: Writer, mask: Buffer, xor: Buffer): void {
  expr(w, "bitwise", () => {
    w.u32(1, 1);
    w.u32(2, 1);
    w.u32(3, mask.length);
    w.nest(4, () => w.bytes(1, mask));
    w.nest(5, () => w.bytes(1, xor));
  });
}

function immediateVerdict(w: Writer, verdict: keyof typeof VERDICT, chain?: string): void {
  const at = beginExpr(w, "immediate");
  w.u32(1, 0);
  const data = w.open(2);
  verdictAttr(w, verdict, chain);
  w.end(data);
  endExpr(w, at);
}

function verdictAttr(w: Writer, verdict: keyof typeof VERDICT, chain?: string): void {
  const start = w.open(2);
  w.i32(1, VERDICT[verdict]);
  if (chain !== undefined) w.string(2, chain);
  w.end(start);
}

/** A map element's value: `goto CHAIN`, `jump CHAIN`, `drop`, `accept`. */
function verdictData(w: Writer, value: string): void {
  const match = /^(?:(jump|goto) (\S+)|(drop|accept|return))$/.exec(value);
  if (!match) throw new NftUnsupported(`map value ${JSON.stringify(value)}`);
  if (match[3]) verdictAttr(w, match[3] as "drop");
  else verdictAttr(w, match[1] as "goto", checkName("chain", match[2]));
}

// ---- sets ---------------------------------------------------------------------------------

interface SetShape {
  readonly key: ReadonlyArray<{ id: number; length: number }>;
  readonly map: boolean;
  readonly interval: boolean;
}

function setShape(set: NftSetDefinition): SetShape {
  const [keyText, valueText] = set.type.split(" : ");
  const key = keyText.split(" . ").map((name) => {
    const type = DATATYPES[name];
    if (!type) throw new NftUnsupported(`set type ${JSON.stringify(set.type)}`);
    return type;
  });
  const map = set.kind === "map";
  if (map !== (valueText !== undefined) || (map && valueText !== "verdict")) throw new NftUnsupported(`set type ${JSON.stringify(set.type)}`);
  return { key, map, interval: set.flags.includes("interval") };
}

function setAttrs(w: Writer, table: string, name: string, set: NftSetDefinition, id: number): void {
  const shape = setShape(set);
  let flags = shape.map ? NFT_SET_MAP : 0;
  for (const flag of set.flags) {
    const bit = SET_FLAGS[flag];
    if (bit === undefined) throw new NftUnsupported(`set flag ${JSON.stringify(flag)}`);
    flags |= bit;
  }
  const keyType = shape.key.reduce((type, field) => type * 64 + field.id, 0);
  const keyLength = shape.key.length === 1 ? shape.key[0].length : shape.key.reduce((sum, field) => sum + align4(field.length), 0);
  w.string(1, table);
  w.string(2, checkName("set", name));
  w.u32(3, flags);
  w.u32(4, keyType);
  w.u32(5, keyLength);
  if (shape.map) {
    w.u32(6, NFT_DATA_VERDICT);
    w.u32(7, 0);
  }
  w.u32(10, id);
  if (set.timeoutSeconds !== undefined) w.u64(11, BigInt(set.timeoutSeconds) * 1000n);
}

/** A key as the kernel holds it: `10.96.0.1 . tcp . 80`, each field in a 4-byte slot when concatenated. */
function encodeKey(fields: SetShape["key"], text: string): Buffer {
  const parts = text.split(" . ");
  if (parts.length !== fields.length) throw new NftUnsupported(`element ${JSON.stringify(text)}`);
  const encoded = parts.map((part, k) => {
    const field = fields[k];
    let value: Buffer;
    if (field.id === 7 || field.id === 8) value = addressBytes(field.id === 7 ? 4 : 6, part, text);
    else if (field.id === 12) {
      const protocol = PROTOCOLS[part];
      if (protocol === undefined) throw new NftUnsupported(`element ${JSON.stringify(text)}`);
      value = Buffer.from([protocol]);
    } else value = portBytes(integer(part, 0, 65535, text));
    return fields.length === 1 ? value : Buffer.concat([value, Buffer.alloc(align4(value.length) - value.length)]);
  });
  return Buffer.concat(encoded);
}

/** An interval set's element `PREFIX/LENGTH`: its first address and the address after its last. */
function prefixBounds(fields: SetShape["key"], text: string): [Buffer, Buffer] {
  const family = fields.length === 1 && fields[0].id === 7 ? 4 : fields.length === 1 && fields[0].id === 8 ? 6 : undefined;
  const match = /^([0-9a-f:.]+)\/(\d+)$/.exec(text);
  if (family === undefined || !match) throw new NftUnsupported(`interval element ${JSON.stringify(text)}`);
  const bits = family === 4 ? 32 : 128;
  const length = integer(match[2], 1, bits, text);
  const start = addressBytes(family, match[1], text);
  let value = 0n;
  for (const byte of start) value = (value << 8n) | BigInt(byte);
  const size = 1n << BigInt(bits - length);
  if (value % size !== 0n) throw new NftUnsupported(`interval element ${JSON.stringify(text)}: host bits set`);
  let end = value + size;
  const bytes = Buffer.alloc(bits / 8);
  for (let k = bytes.length - 1; k >= 0; k--) {
    bytes[k] = Number(end & 0xffn);
    end >>= 8n;
  }
  // The last prefix of the space (its end would wrap to 0) is not one the proxy writes.
  if (end !== 0n || bytes.every((byte) => byte === 0)) throw new NftUnsupported(`interval element ${JSON.stringify(text)}: it reaches the end of the address space`);
  return [start, bytes];
}

// ---- values -------------------------------------------------------------------------------

/** A dotted quad as written by the proxy: four decimal octets, no leading zeros. */
const DOTTED_QUAD = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

function addressBytes(family: Family, text: string, context: string): Buffer {
  if (family === 4) {
    const quad = DOTTED_QUAD.exec(text);
    if (quad) return Buffer.from([Number(quad[1]), Number(quad[2]), Number(quad[3]), Number(quad[4])]);
  }
  let parsed;
  try {
    parsed = parseIp(text);
  } catch {
    throw new NftUnsupported(`${JSON.stringify(context)}: ${JSON.stringify(text)} is not an address`);
  }
  if (parsed.family !== family) throw new NftUnsupported(`${JSON.stringify(context)}: ${text} is not an IPv${family} address`);
  const length = ADDRESS[family].length;
  const bytes = Buffer.alloc(length);
  let value = parsed.value;
  for (let k = length - 1; k >= 0; k--) {
    bytes[k] = Number(value & 0xffn);
    value >>= 8n;
  }
  return bytes;
}

const portCache = new Map<number, Buffer>();

/** A port in network order (shared: callers only read it). */
function portBytes(port: number): Buffer {
  let bytes = portCache.get(port);
  if (!bytes) {
    bytes = Buffer.alloc(2);
    bytes.writeUInt16BE(port);
    portCache.set(port, bytes);
  }
  return bytes;
}

/** A 32-bit value in the host's order (the kernel's for marks, conntrack state, numgen, fib). */
function hostU32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32LE(value >>> 0);
  return bytes;
}

function integer(text: string, min: number, max: number, context: string): number {
  const value = /^(0x[0-9a-f]+|\d+)$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new NftUnsupported(`${JSON.stringify(context)}: ${JSON.stringify(text)} is not a number in ${min}-${max}`);
  return value;
}

/** Names already checked: a full sync names each table and chain thousands of times. */
const checkedNames = new Set<string>();

function checkName(what: string, name: string): string {
  if (checkedNames.has(name)) return name;
  if (!NAME.test(name)) throw new NftUnsupported(`${what} name ${JSON.stringify(name)}`);
  if (checkedNames.size > 1_000_000) checkedNames.clear();
  checkedNames.add(name);
  return name;
}

function align4(length: number): number {
  return (length + 3) & ~3;
}

// ---- netlink framing ----------------------------------------------------------------------

const encodedStrings = new Map<string, Buffer>();

/** Netlink messages and attributes written into one growing buffer; lengths are filled in when each ends. */
class Writer {
  private buffer = Buffer.allocUnsafe(1 << 16);
  private pos = 0;

  get position(): number {
    return this.pos;
  }

  beginMessage(type: number, flags: number, seq: number, family: number, resId: number): number {
    const start = this.reserve(20);
    this.buffer.writeUInt16LE(type, start + 4);
    this.buffer.writeUInt16LE(flags, start + 6);
    this.buffer.writeUInt32LE(seq, start + 8);
    this.buffer.writeUInt32LE(0, start + 12);
    this.buffer.writeUInt8(family, start + 16);
    this.buffer.writeUInt8(0, start + 17);
    this.buffer.writeUInt16BE(resId, start + 18);
    return start;
  }

  endMessage(start: number): void {
    this.buffer.writeUInt32LE(this.pos - start, start);
  }

  nest(type: number, body: () => void): void {
    const start = this.open(type);
    body();
    this.end(start);
  }

  /** Starts a nested attribute; `end` with what this returns closes it. */
  open(type: number): number {
    const start = this.reserve(4);
    this.buffer.writeUInt16LE(type | NLA_F_NESTED, start + 2);
    return start;
  }

  end(start: number): void {
    this.close(start, this.buffer.readUInt16LE(start + 2));
  }

  bytes(type: number, value: Uint8Array): void {
    const start = this.reserve(4 + value.length);
    // Most values are 1 to 16 bytes: a loop beats a typed-array copy's set-up at that size.
    if (value.length <= 32) for (let k = 0; k < value.length; k++) this.buffer[start + 4 + k] = value[k];
    else this.buffer.set(value, start + 4);
    this.close(start, type);
  }

  /** A NUL-terminated string attribute; names repeat thousands of times in a batch, so their bytes are kept. */
  string(type: number, text: string): void {
    let encoded = encodedStrings.get(text);
    if (!encoded) {
      encoded = Buffer.from(text, "utf8");
      if (encodedStrings.size > 1_000_000) encodedStrings.clear();
      encodedStrings.set(text, encoded);
    }
    const start = this.reserve(4 + encoded.length + 1);
    if (encoded.length <= 32) for (let k = 0; k < encoded.length; k++) this.buffer[start + 4 + k] = encoded[k];
    else this.buffer.set(encoded, start + 4);
    this.buffer[start + 4 + encoded.length] = 0;
    this.close(start, type);
  }

  u32(type: number, value: number): void {
    const start = this.reserve(8);
    this.buffer.writeUInt32BE(value >>> 0, start + 4);
    this.close(start, type);
  }

  i32(type: number, value: number): void {
    const start = this.reserve(8);
    this.buffer.writeInt32BE(value, start + 4);
    this.close(start, type);
  }

  u64(type: number, value: bigint): void {
    const start = this.reserve(12);
    this.buffer.writeBigUInt64BE(value, start + 4);
    this.close(start, type);
  }

  u8(type: number, value: number): void {
    const start = this.reserve(5);
    this.buffer[start + 4] = value;
    this.close(start, type);
  }

  /** The bytes written (a view, not a copy: a full sync's batch is tens of megabytes). */
  result(): Buffer {
    return this.buffer.subarray(0, this.pos);
  }

  /** Room for `length` bytes at the end; returns where they start. */
  private reserve(length: number): number {
    if (this.pos + length + 4 > this.buffer.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, this.pos + length + 4));
      this.buffer.copy(grown, 0, 0, this.pos);
      this.buffer = grown;
    }
    const start = this.pos;
    this.pos += length;
    return start;
  }

  /** Ends the attribute that starts at `start`: its length (without padding), then zeros to a 4-byte boundary. */
  private close(start: number, type: number): void {
    const length = this.pos - start;
    if (length > 0xffff) throw new NftUnsupported(`a netlink attribute of ${length} bytes`);
    this.buffer.writeUInt16LE(length, start);
    this.buffer.writeUInt16LE(type, start + 2);
    const end = this.pos;
    const padded = align4(end);
    if (padded > end) {
      this.reserve(padded - end);
      this.buffer.fill(0, end, padded);
    }
  }
}
