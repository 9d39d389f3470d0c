/**
 * `--listen`: where the map is served. The shape of the agent's bind addresses
 * (`--metrics-bind-address`): an IPv4 address and port, or `[IPv6]:PORT`; port 0 takes any free
 * one. Loopback by default: the page shows every pod and flow of the cluster to whoever reaches it.
 */
import { formatIp, specialRangeOf, tryParseIp } from "../net/ip.js";

export const DEFAULT_UI_LISTEN = "127.0.0.1:8090";

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
  readonly loopback: boolean;
}

export function parseListenAddress(text: string, flag = "--listen"): ListenAddress {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(text);
  const host = match?.[1] ?? match?.[2];
  const ip = host === undefined ? undefined : tryParseIp(host);
  const port = Number(match?.[3]);
  if (!ip || (match?.[1] !== undefined) !== (ip.family === 6) || port > 65535) {
    throw new Error(
      `${flag} ${JSON.stringify(text)} is not HOST:PORT: expected an IPv4 address and port (${DEFAULT_UI_LISTEN}), [IPv6]:PORT ([::1]:8090), port 0 for any free one`,
    );
  }
  return { host: formatIp(ip), port, loopback: specialRangeOf(ip)?.use === "loopback" };
}

/** The URL a browser opens for a bound address. */
export function listenUrl(host: string, port: number): string {
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}/`;
}
