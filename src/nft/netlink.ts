/**
 * The model as one netlink batch, for `trellis-nft-batch` to hand to the kernel: what `nft -f`
 * sends for the same text (each expression as nft 1.0.6 encodes it: `nft --debug=netlink`
 * shows the same expressions and registers), without nft's read-back of the whole ruleset
 * before every change it makes (0.6 s at 10,000 Services, for a change of one). The kernel
 * comparison in test/nft-model.test.ts holds the two encodings to the same `nft list` output.
 */
import { familyBits, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";
import {
  datumText, type BaseChain, type DataType, type Datum, type Element, type Field, type Match, type Op, type Rule, type SetDefinition, type TableFamily, type Verdict,
} from "./model.js";
import { checkInteger, checkLogPrefix, checkName, checkRuleShape, ctEventMask } from "./names.js";

// linux/netfilter/nfnetlink.h, nf_tables.h, netlink.h
const NFNL_SUBSYS_NFTABLES = 10;
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
const MSG = { NEWTABLE: 0, DELTABLE: 2, NEWCHAIN: 3, DELCHAIN: 5, NEWRULE: 6, DELRULE: 8, NEWSET: 9, DELSET: 11, NEWSETELEM: 12, DELSETELEM: 14, NEWOBJ: 18, DELOBJ: 20 } as const;
const NFT_OBJECT_COUNTER = 1;
const NLM_F_REQUEST = 0x1;
const NLM_F_CREATE = 0x400;
const NLM_F_APPEND = 0x800;
const NLA_F_NESTED = 0x8000;
const TABLE_FAMILY: Record<TableFamily, number> = { inet: 1, ip: 2, ip6: 10 };
const NFPROTO: Record<Family, number> = { 4: 2, 6: 10 };
const HOOKS: Record<BaseChain["hook"], number> = { prerouting: 0, input: 1, forward: 2, output: 3, postrouting: 4 };
const VERDICT = { drop: 0, accept: 1, jump: -3, goto: -4, return: -5 } as const;
const SET_FLAGS: Record<string, number> = { interval: 0x4, timeout: 0x10, dynamic: 0x20 };
const NFT_SET_MAP = 0x8;
const NFT_DATA_VERDICT = 0xffffff00;
/** nft's datatype numbers (concatenations pack 6 bits per part) and their sizes. */
const DATATYPES: Record<DataType | "integer", { id: number; length: number }> = {
  integer: { id: 4, length: 4 },
  ipv4_addr: { id: 7, length: 4 },
  ipv6_addr: { id: 8, length: 16 },
  inet_proto: { id: 12, length: 1 },
  inet_service: { id: 13, length: 2 },
};
const PROTOCOLS: Record<string, number> = { tcp: 6, udp: 17, sctp: 132 };
const CT_STATES: Record<string, number> = { invalid: 1, established: 2, related: 4, new: 8, untracked: 64 };
const CT_STATUS_DNAT = 0x20;
const META = { mark: 3, nfproto: 15, l4proto: 16 } as const;
const ADDRESS: Record<Family, { length: number; saddr: number; daddr: number }> = {
  4: { length: 4, saddr: 12, daddr: 16 },
  6: { length: 16, saddr: 8, daddr: 24 },
};
/** Encodes `ops` as one batch (one transaction). */
export function encodeBatch(ops: readonly Op[]): Buffer {
  const encoder = batchEncoder();
  for (const op of ops) encoder.add(op);
  return encoder.finish();
}

/** A turn of the event loop. */
export const nextTurn = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * `encodeBatch` in slices of about `sliceMs` of work, each followed by `pause` (a turn of the
 * event loop unless the caller says otherwise): a full write at 10,000 Services is 0.4-0.6 s of
 * encoding, during which a daemon would otherwise answer nothing (CNI requests, /healthz).
 */
export async function encodeBatchSliced(ops: readonly Op[], sliceMs = 5, pause: () => Promise<void> = nextTurn): Promise<Buffer> {
  const encoder = batchEncoder();
  let sliceStart = performance.now();
  for (let i = 0; i < ops.length; i++) {
    encoder.add(ops[i]);
    if ((i & 63) === 63 && performance.now() - sliceStart > sliceMs) {
      await pause();
      sliceStart = performance.now();
    }
  }
  return encoder.finish();
}

/** One batch being written: steps added one by one, then the batch's end. */
function batchEncoder(): { add(op: Op): void; finish(): Buffer } {
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
  const add = (op: Op) => {
    const family = TABLE_FAMILY[op.family];
    if (family === undefined) throw new Error(`nftables table family ${JSON.stringify(op.family)} is not ip, ip6 or inet`);
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
              w.u32(2, checkInteger("chain priority", base.priority, -1000, 1000));
            });
            w.u32(5, VERDICT.accept);
            w.string(7, base.type);
          }
        });
        break;
      case "add counter":
      case "delete counter": {
        const name = checkName("counter", op.name);
        const adding = op.op === "add counter";
        send(adding ? MSG.NEWOBJ : MSG.DELOBJ, family, adding ? NLM_F_CREATE : 0, () => {
          w.string(1, table);
          w.string(2, name);
          w.u32(3, NFT_OBJECT_COUNTER);
          // As nft sends it: a new counter's bytes and packets, zero.
          if (adding) {
            w.nest(4, () => {
              w.u64(1, 0n);
              w.u64(2, 0n);
            });
          }
        });
        break;
      }
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
      case "add rule": {
        send(MSG.NEWRULE, family, NLM_F_CREATE | NLM_F_APPEND, () => {
          w.string(1, table);
          w.string(2, checkName("chain", op.chain));
          w.nest(4, () => encodeRule(w, op.family, op.rule, (name) => created.get(setKey(name))));
        });
        break;
      }
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
                const element = op.elements[next++];
                if (shape.interval) {
                  // A prefix is two elements: its first address, and the one after its last marked
                  // as an end. One that runs to the end of the address space (ff00::/8) has no
                  // address after it: nft writes its start alone, marked open in its user data.
                  const [start, end] = prefixBounds(shape.key, element);
                  w.nest(1, () => {
                    w.nest(1, () => w.bytes(1, start));
                    if (!end) w.bytes(6, OPEN_INTERVAL_USERDATA);
                  });
                  if (end) {
                    w.nest(1, () => {
                      w.nest(1, () => w.bytes(1, end));
                      w.u32(3, 1);
                    });
                  }
                  continue;
                }
                if (shape.targets) {
                  const targets = shape.targets;
                  w.nest(1, () => {
                    w.nest(1, () => w.bytes(1, hostU32(targetIndex(element, targets.modulus))));
                    if (adding) w.nest(2, () => w.bytes(1, targetData(element, targets.family)));
                  });
                  continue;
                }
                w.nest(1, () => {
                  w.nest(1, () => w.bytes(1, encodeKey(shape.key, element.key)));
                  if (adding && shape.map) {
                    if (!element.value) throw new Error(`element ${describe(element)} of map ${op.name} has no value`);
                    const value = element.value;
                    w.nest(2, () => verdictAttr(w, value));
                  }
                });
              }
            });
          });
        }
        break;
      }
      default: {
        const never: never = op;
        throw new Error(`nftables step ${JSON.stringify((never as { op: string }).op)}`);
      }
    }
  };
  const finish = () => {
    w.endMessage(w.beginMessage(NFNL_MSG_BATCH_END, NLM_F_REQUEST, ++seq, 0, NFNL_SUBSYS_NFTABLES));
    return w.result();
  };
  return { add, finish };
}

// ---- rules --------------------------------------------------------------------------------

type SetId = (name: string) => number | undefined;

/** One rule's expressions, written into the open expression list. */
function encodeRule(w: Writer, tableFamily: TableFamily, rule: Rule, setId: SetId): void {
  /** In an inet table, `ip`/`ip6` fields need nft's implicit `meta nfproto` test before their first load. */
  let nfproto: Family | undefined = tableFamily === "ip" ? 4 : tableFamily === "ip6" ? 6 : undefined;
  const needFamily = (family: Family) => {
    if (tableFamily !== "inet") {
      if (nfproto !== family) throw new Error(`an IPv${family} field in an ${tableFamily} table`);
      return;
    }
    if (nfproto === family) return;
    if (nfproto !== undefined) throw new Error("a rule of an inet table reads both IPv4 and IPv6 fields");
    nfproto = family;
    meta(w, META.nfproto, 1);
    cmp(w, 0, Buffer.from([NFPROTO[family]]));
  };
  /** Loads fields side by side from register 1 (4-byte slots when concatenated). */
  const load = (fields: readonly Field[]) => {
    let offset = 0;
    for (const field of fields) {
      const length = loadField(w, field, register(offset), needFamily);
      offset += fields.length === 1 ? length : align4(length);
    }
  };
  const lookup = (name: string, options: { dreg?: number; invert?: boolean } = {}) => {
    checkName("set", name);
    const id = setId(name);
    expr(w, "lookup", () => {
      w.string(1, name);
      w.u32(2, 1);
      if (options.dreg !== undefined) w.u32(3, options.dreg);
      if (id !== undefined) w.u32(4, id);
      if (options.invert) w.u32(5, 1);
    });
  };

  checkRuleShape(rule);
  for (const match of rule.match) encodeMatch(w, match, load, lookup, needFamily);
  for (const statement of rule.statements) {
    switch (statement.statement) {
      case "verdict":
        immediateVerdict(w, statement.verdict);
        break;
      case "vmap":
        load(statement.key);
        lookup(statement.map, { dreg: 0 });
        break;
      case "reject":
        expr(w, "reject", () => {
          if (statement.tcpReset) {
            w.u32(1, 1);
            w.u8(2, 0);
          } else if (tableFamily === "inet") {
            // ICMPX: port unreachable in whichever family the packet is.
            w.u32(1, 2);
            w.u8(2, 1);
          } else {
            // ICMP port unreachable (3), or ICMPv6's (4).
            w.u32(1, 0);
            w.u8(2, tableFamily === "ip" ? 3 : 4);
          }
        });
        break;
      case "masquerade":
        expr(w, "masq", () => {
          if (statement.fullyRandom) w.u32(1, 0x10);
        });
        break;
      case "mark": {
        const bits = checkInteger("mark", statement.bits, 0, 0xffffffff);
        // `| bits`: keep every other bit, then set them; `^ bits`: keep all, flip them.
        const mask = statement.op === "or" ? ~bits >>> 0 : 0xffffffff;
        meta(w, META.mark, 1);
        bitwise(w, hostU32(mask), hostU32(bits));
        expr(w, "meta", () => {
          w.u32(2, META.mark);
          w.u32(3, 1);
        });
        break;
      }
      case "ct event":
        // The mask into register 1, then `ct eventmask set` from it.
        expr(w, "immediate", () => {
          w.u32(1, 1);
          w.nest(2, () => w.bytes(1, hostU32(ctEventMask(statement.events))));
        });
        expr(w, "ct", () => {
          w.u32(2, NFT_CT_EVENTMASK);
          w.u32(4, 1);
        });
        break;
      case "update": {
        load([statement.key]);
        checkName("set", statement.set);
        const id = setId(statement.set);
        expr(w, "dynset", () => {
          w.string(1, statement.set);
          if (id !== undefined) w.u32(2, id);
          w.u32(3, 1);
          w.u32(4, 1);
        });
        break;
      }
      case "dnat":
        needFamily(statement.family);
        if (statement.address.family !== statement.family) throw new Error(`dnat target ${describeDatum(statement.address)} is not an IPv${statement.family} address`);
        expr(w, "immediate", () => {
          w.u32(1, 1);
          w.nest(2, () => w.bytes(1, addressBytes(statement.address)));
        });
        expr(w, "immediate", () => {
          w.u32(1, 2);
          w.nest(2, () => w.bytes(1, portBytes(checkInteger("port", statement.port, 1, 65535))));
        });
        expr(w, "nat", () => {
          w.u32(1, 1);
          w.u32(2, NFPROTO[statement.family]);
          w.u32(3, 1);
          w.u32(5, 2);
          w.u32(7, 2);
        });
        break;
      case "counter":
        expr(w, "objref", () => {
          w.u32(1, NFT_OBJECT_COUNTER);
          w.string(2, checkName("counter", statement.name));
        });
        break;
      case "limit": {
        const rate = checkInteger("limit rate", statement.rate, 1, 1_000_000);
        const burst = checkInteger("limit burst", statement.burst, 1, 1_000_000);
        expr(w, "limit", () => {
          w.u64(1, BigInt(rate));
          w.u64(2, 1n);
          w.u32(3, burst);
          w.u32(4, 0);
          w.u32(5, 0);
        });
        break;
      }
      case "log": {
        const group = checkInteger("log group", statement.group, 0, 65535);
        expr(w, "log", () => {
          w.u16(1, group);
          w.string(2, checkLogPrefix(statement.prefix));
        });
        break;
      }
      case "dnat numgen map": {
        needFamily(statement.family);
        numgen(w, checkInteger("numgen modulus", statement.modulus, 1, 65536));
        checkName("map", statement.map);
        const id = setId(statement.map);
        expr(w, "lookup", () => {
          w.string(1, statement.map);
          w.u32(2, 1);
          w.u32(3, 1);
          if (id !== undefined) w.u32(4, id);
        });
        expr(w, "nat", () => {
          w.u32(1, 1);
          w.u32(2, NFPROTO[statement.family]);
          w.u32(3, 1);
          w.u32(5, register(align4(ADDRESS[statement.family].length)));
        });
        break;
      }
      default: {
        const never: never = statement;
        throw new Error(`nftables statement ${JSON.stringify(never)}`);
      }
    }
  }
}

function encodeMatch(
  w: Writer, match: Match, load: (fields: readonly Field[]) => void, lookup: (name: string, options?: { invert?: boolean }) => void, needFamily: (family: Family) => void,
): void {
  switch (match.match) {
    case "address": {
      const family = match.field.startsWith("ip6") ? 6 : 4;
      const value = match.value;
      if (value.family !== family) throw new Error(`${match.field} compared with ${describeDatum(value)}`);
      const bits = familyBits(family);
      const length = "length" in value ? checkInteger("prefix length", value.length, 1, bits) : bits;
      const network = "length" in value ? value.network : value.value;
      const full = addressBytes({ family, value: network });
      const which = match.field.endsWith("saddr") ? "saddr" : "daddr";
      needFamily(family);
      if (length % 8 === 0) {
        // As nft does: a prefix of whole bytes compares those bytes alone; any other, the whole address masked.
        payload(w, 1, ADDRESS[family][which], length / 8, 1);
        cmp(w, match.negate ? 1 : 0, full.subarray(0, length / 8));
        break;
      }
      const mask = Buffer.alloc(full.length);
      for (let bit = 0; bit < length; bit++) mask[bit >> 3] |= 0x80 >> (bit & 7);
      for (let k = 0; k < full.length; k++) if ((full[k] & ~mask[k]) !== 0) throw new Error(`prefix ${describeDatum(value)} has host bits set`);
      payload(w, 1, ADDRESS[family][which], full.length, 1);
      bitwise(w, mask, Buffer.alloc(full.length));
      const data = full;
      cmp(w, match.negate ? 1 : 0, data);
      break;
    }
    case "protocol":
      meta(w, META.l4proto, 1);
      cmp(w, 0, protocolBytes(match.protocol));
      break;
    case "port":
      payload(w, 2, match.field === "th dport" ? 2 : 0, 2, 1);
      cmp(w, 0, portBytes(checkInteger("port", match.port, 0, 65535)));
      break;
    case "port range": {
      // As nft writes a range it does not negate: two comparisons of one load.
      const [first, last] = [checkInteger("port", match.first, 0, 65535), checkInteger("port", match.last, 0, 65535)];
      if (first >= last) throw new Error(`port range ${first}-${last}: the first port must be below the last`);
      payload(w, 2, match.field === "th dport" ? 2 : 0, 2, 1);
      cmp(w, NFT_CMP_GTE, portBytes(first));
      cmp(w, NFT_CMP_LTE, portBytes(last));
      break;
    }
    case "in set":
      load(match.key);
      lookup(match.set, { invert: match.negate });
      break;
    case "ct state": {
      let mask = 0;
      for (const state of match.states) {
        const bit = CT_STATES[state];
        if (bit === undefined) throw new Error(`ct state ${JSON.stringify(state)}`);
        mask |= bit;
      }
      if (!mask) throw new Error("ct state needs at least one state");
      ctLoad(w, 0);
      bitwise(w, hostU32(mask), hostU32(0));
      cmp(w, 1, hostU32(0));
      break;
    }
    case "ct status dnat":
      ctLoad(w, 2);
      bitwise(w, hostU32(CT_STATUS_DNAT), hostU32(0));
      cmp(w, 1, hostU32(0));
      break;
    case "numgen": {
      const modulus = checkInteger("numgen modulus", match.modulus, 1, 0xffffffff);
      numgen(w, modulus);
      cmp(w, 0, hostU32(checkInteger("numgen value", match.value, 0, modulus - 1)));
      break;
    }
    case "fib local":
      expr(w, "fib", () => {
        w.u32(1, 1);
        w.u32(2, 3);
        w.u32(3, match.field === "saddr" ? 1 : 2);
      });
      cmp(w, 0, hostU32(2));
      break;
    case "mark":
      meta(w, META.mark, 1);
      bitwise(w, hostU32(checkInteger("mark", match.mask, 0, 0xffffffff)), hostU32(0));
      cmp(w, 0, hostU32(checkInteger("mark", match.value, 0, 0xffffffff)));
      break;
    default: {
      const never: never = match;
      throw new Error(`nftables match ${JSON.stringify(never)}`);
    }
  }
}

/** Loads one field into `dreg`; its length in bytes. */
function loadField(w: Writer, field: Field, dreg: number, needFamily: (family: Family) => void): number {
  switch (field) {
    case "ip saddr":
    case "ip daddr":
    case "ip6 saddr":
    case "ip6 daddr": {
      const family = field.startsWith("ip6") ? 6 : 4;
      needFamily(family);
      const address = ADDRESS[family];
      payload(w, 1, field.endsWith("saddr") ? address.saddr : address.daddr, address.length, dreg);
      return address.length;
    }
    case "meta l4proto":
      meta(w, META.l4proto, dreg);
      return 1;
    case "th dport":
    case "th sport":
      payload(w, 2, field === "th dport" ? 2 : 0, 2, dreg);
      return 2;
    default: {
      const never: never = field;
      throw new Error(`nftables field ${JSON.stringify(never)}`);
    }
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

/** `numgen random mod MODULUS` into register 1. */
function numgen(w: Writer, modulus: number): void {
  expr(w, "numgen", () => {
    w.u32(1, 1);
    w.u32(2, modulus);
    w.u32(3, 1);
    w.u32(4, 0);
  });
}

/** nft_ct_keys' NFT_CT_EVENTMASK. */
const NFT_CT_EVENTMASK = 18;

/** key 0: state, 2: status. */
function ctLoad(w: Writer, key: number): void {
  expr(w, "ct", () => {
    w.u32(1, 1);
    w.u32(2, key);
  });
}

/** op 0: eq, 1: neq, on register 1. */
const NFT_CMP_LTE = 3;
const NFT_CMP_GTE = 5;

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

function immediateVerdict(w: Writer, verdict: Verdict): void {
  const at = beginExpr(w, "immediate");
  w.u32(1, 0);
  const data = w.open(2);
  verdictAttr(w, verdict);
  w.end(data);
  endExpr(w, at);
}

function verdictAttr(w: Writer, verdict: Verdict): void {
  const code = VERDICT[verdict.verdict];
  if (code === undefined) throw new Error(`nftables verdict ${JSON.stringify(verdict)}`);
  const start = w.open(2);
  w.i32(1, code);
  if (verdict.verdict === "jump" || verdict.verdict === "goto") w.string(2, checkName("chain", verdict.chain));
  w.end(start);
}

// ---- sets ---------------------------------------------------------------------------------

interface SetShape {
  readonly key: ReadonlyArray<{ id: number; length: number }>;
  readonly map: boolean;
  readonly interval: boolean;
  readonly targets?: SetDefinition["targets"];
}

const shapes = new WeakMap<SetDefinition, SetShape>();

function setShape(set: SetDefinition): SetShape {
  let shape = shapes.get(set);
  if (!shape && set.targets) {
    if (set.kind !== "map" || set.flags.length || set.timeoutSeconds !== undefined) throw new Error("a targets map is a plain map");
    checkInteger("numgen modulus", set.targets.modulus, 1, 65536);
    shape = { key: [DATATYPES.integer], map: true, interval: false, targets: set.targets };
    shapes.set(set, shape);
  }
  if (!shape) {
    if (!set.key.length) throw new Error("an nftables set needs a key type");
    const key = set.key.map((name) => {
      const type = DATATYPES[name];
      if (!type || name === ("integer" as DataType)) throw new Error(`nftables set key type ${JSON.stringify(name)}`);
      return type;
    });
    const map = set.kind === "map";
    if (map && set.value !== "verdict") throw new Error(`nftables map value ${JSON.stringify(set.value)}`);
    shape = { key, map, interval: set.flags.includes("interval") };
    shapes.set(set, shape);
  }
  return shape;
}

function setAttrs(w: Writer, table: string, name: string, set: SetDefinition, id: number): void {
  const shape = setShape(set);
  if (shape.targets) {
    const address = DATATYPES[shape.targets.family === 4 ? "ipv4_addr" : "ipv6_addr"];
    w.string(1, table);
    w.string(2, checkName("set", name));
    w.u32(3, NFT_SET_MAP);
    w.u32(4, DATATYPES.integer.id);
    w.u32(5, 4);
    w.u32(6, address.id * 64 + DATATYPES.inet_service.id);
    w.u32(7, align4(address.length) + 4);
    w.u32(10, id);
    w.bytes(13, targetsUserdata(shape.targets));
    return;
  }
  let flags = shape.map ? NFT_SET_MAP : 0;
  for (const flag of set.flags) {
    const bit = SET_FLAGS[flag];
    if (bit === undefined) throw new Error(`nftables set flag ${JSON.stringify(flag)}`);
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
  if (set.timeoutSeconds !== undefined) w.u64(11, BigInt(checkInteger("set timeout", set.timeoutSeconds, 1, 86400 * 365)) * 1000n);
}

/** A key as the kernel holds it: `10.96.0.1 . tcp . 80`, each part in a 4-byte slot when concatenated. */
function encodeKey(fields: SetShape["key"], key: readonly Datum[]): Buffer {
  if (key.length !== fields.length) throw new Error(`element ${key.map(describeDatum).join(" . ")} does not fit its set's type`);
  const encoded = key.map((datum, k) => {
    const field = fields[k];
    let value: Buffer;
    if (field.id === 7 || field.id === 8) {
      if (typeof datum !== "object" || "length" in datum || datum.family !== (field.id === 7 ? 4 : 6)) throw new Error(`element part ${describeDatum(datum)} is not an IPv${field.id === 7 ? 4 : 6} address`);
      value = addressBytes(datum);
    } else if (field.id === 12) {
      if (typeof datum !== "string") throw new Error(`element part ${describeDatum(datum)} is not a protocol`);
      value = protocolBytes(datum);
    } else {
      if (typeof datum !== "number") throw new Error(`element part ${describeDatum(datum)} is not a port`);
      value = portBytes(checkInteger("port", datum, 0, 65535));
    }
    return fields.length === 1 ? value : Buffer.concat([value, Buffer.alloc(align4(value.length) - value.length)]);
  });
  return encoded.length === 1 ? encoded[0] : Buffer.concat(encoded);
}

/**
 * An interval set's element: a prefix's first address and the address after its last, or no
 * such address for a prefix that runs to the end of the space (then undefined).
 */
function prefixBounds(fields: SetShape["key"], element: Element): [Buffer, Buffer | undefined] {
  const family = fields.length === 1 && fields[0].id === 7 ? 4 : fields.length === 1 && fields[0].id === 8 ? 6 : undefined;
  const [datum] = element.key;
  if (family === undefined || element.key.length !== 1 || typeof datum !== "object" || datum.family !== family) {
    throw new Error(`interval element ${element.key.map(describeDatum).join(" . ")} is not an IPv${family ?? "?"} prefix`);
  }
  const prefix: IpPrefix = "length" in datum ? datum : { family, network: datum.value, length: familyBits(family) };
  const bits = familyBits(family);
  checkInteger("prefix length", prefix.length, 0, bits);
  const size = 1n << BigInt(bits - prefix.length);
  if (prefix.network % size !== 0n) throw new Error(`interval element ${datumText(prefix)}: host bits set`);
  const end = prefix.network + size;
  return [addressBytes({ family, value: prefix.network }), end >> BigInt(bits) === 0n ? addressBytes({ family, value: end }) : undefined];
}

/** nft 1.0.6's element user data for an interval open at its end: flags (1), 4 bytes, "interval open" (1). */
const OPEN_INTERVAL_USERDATA = Buffer.from([1, 4, 1, 0, 0, 0]);

/**
 * The user data nft 1.0.6 gives `typeof numgen random mod N : ip daddr . tcp dport` (ip6 for
 * IPv6): the key in host byte order, the data in network order, and both typeof expressions, so
 * that `nft list` prints the map as it was written. The modulus is the u32 at byte 30, the
 * transport protocol's header (nft's protocol description) the byte at 84.
 */
const TARGETS_USERDATA: Record<Family, string> = {
  4: "000401000000010400000000031a0004170000000112000401000000010407000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c000408000000010402000000060400000000",
  6: "000401000000010400000000031a0004170000000112000401000000010407000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c000408000000010402000000060400000000",
};
const TRANSPORT_HEADER: Record<string, number> = { tcp: 8, udp: 6, sctp: 10 };

function targetsUserdata(targets: { family: Family; modulus: number; protocol: string }): Buffer {
  const header = TRANSPORT_HEADER[targets.protocol];
  if (header === undefined) throw new Error(`protocol ${JSON.stringify(targets.protocol)} is not tcp, udp or sctp`);
  const bytes = Buffer.from(TARGETS_USERDATA[targets.family], "hex");
  bytes.writeUInt32LE(targets.modulus, 30);
  bytes[84] = header;
  return bytes;
}

function targetIndex(element: Element, modulus: number): number {
  const [index] = element.key;
  if (element.key.length !== 1 || typeof index !== "number") throw new Error(`a targets map's key is one index, not ${element.key.map(describeDatum).join(" . ")}`);
  return checkInteger("numgen index", index, 0, modulus - 1);
}

function targetData(element: Element, family: Family): Buffer {
  if (!element.target) throw new Error(`element ${describe(element)} of a targets map has no target`);
  const [address, port] = element.target;
  if (address.family !== family) throw new Error(`target ${describeDatum(address)} is not an IPv${family} address`);
  const length = align4(ADDRESS[family].length);
  const data = Buffer.alloc(length + 4);
  addressBytes(address).copy(data, 0);
  portBytes(checkInteger("port", port, 1, 65535)).copy(data, length);
  return data;
}

// ---- values -------------------------------------------------------------------------------

function addressBytes(ip: IpAddress): Buffer {
  const length = ADDRESS[ip.family]?.length;
  if (length === undefined || typeof ip.value !== "bigint" || ip.value < 0n || ip.value >> BigInt(length * 8) !== 0n) throw new Error(`${String(ip.value)} is not an IPv${ip.family} address`);
  const bytes = Buffer.alloc(length);
  if (length === 4) {
    bytes.writeUInt32BE(Number(ip.value));
    return bytes;
  }
  let value = ip.value;
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

function protocolBytes(name: string): Buffer {
  const number = PROTOCOLS[name];
  if (number === undefined) throw new Error(`protocol ${JSON.stringify(name)} is not tcp, udp or sctp`);
  return Buffer.from([number]);
}

/** A 32-bit value in the host's order (the kernel's for marks, conntrack state, numgen, fib). */
function hostU32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32LE(value >>> 0);
  return bytes;
}

/** A key part for a message: as nft writes it, or its raw numbers when it is no address at all. */
function describeDatum(datum: Datum): string {
  if (typeof datum === "object" && datum !== null) {
    try {
      return datumText(datum);
    } catch {
      return "length" in datum ? `${String(datum.network)}/${datum.length}` : `IPv${datum.family} ${String(datum.value)}`;
    }
  }
  return JSON.stringify(datum);
}

function describe(element: Element): string {
  return element.key.map(describeDatum).join(" . ");
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

  u16(type: number, value: number): void {
    const start = this.reserve(6);
    this.buffer.writeUInt16BE(value, start + 4);
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
    if (length > 0xffff) throw new Error(`a netlink attribute of ${length} bytes: more than netlink carries`);
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
