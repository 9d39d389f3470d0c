/**
 * A TCP relay on 127.0.0.1 in front of a real server, for tests of what a client does when its
 * connections die: `cut()` resets every open connection and refuses new ones until `restore()`,
 * `stall()` keeps the connections open now open but passes no more bytes on them, for
 * good (a path that died with no FIN or reset: a peer rebooted, a NAT entry lost), while new
 * connections work. `open()` counts the connections that are open right now.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

export interface TcpRelay {
  readonly port: number;
  open(): number;
  cut(): void;
  restore(): void;
  stall(): void;
  close(): Promise<void>;
}

export async function startTcpRelay(targetPort: number): Promise<TcpRelay> {
  const pairs = new Set<{ client: Socket; server: Socket }>();
  let refusing = false;
  const server: Server = createServer((client) => {
    if (refusing) {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(targetPort, "127.0.0.1");
    const pair = { client, server: upstream };
    pairs.add(pair);
    const forget = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", forget).on("error", forget);
    upstream.on("close", forget).on("error", forget);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    port,
    open: () => pairs.size,
    cut() {
      refusing = true;
      for (const pair of [...pairs]) {
        pair.client.resetAndDestroy();
        pair.server.destroy();
      }
    },
    restore: () => (refusing = false),
    stall() {
      for (const pair of pairs) {
        pair.client.unpipe(pair.server);
        pair.server.unpipe(pair.client);
        pair.client.pause();
        pair.server.pause();
      }
    },
    async close() {
      refusing = true;
      for (const pair of [...pairs]) {
        pair.client.destroy();
        pair.server.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
