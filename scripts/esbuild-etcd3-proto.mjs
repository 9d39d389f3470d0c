// The etcd3 client reads its gRPC schema from `${__dirname}/../proto/rpc.proto` when it loads,
// a path that does not exist next to a one-file bundle. This esbuild plugin parses the schema at
// build time and hands it to the client inline (proto-loader's fromJSON, the same options), so
// dist/trellis can reach etcd with nothing beside it.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);
const LOAD_CALL = "(0, proto_loader_1.loadSync)(`${__dirname}/../proto/rpc.proto`, {";

export const etcd3ProtoPlugin = {
  name: "etcd3-inline-proto",
  setup(build) {
    build.onLoad({ filter: /etcd3[\\/]lib[\\/]connection-pool\.js$/ }, (args) => {
      const source = readFileSync(args.path, "utf8");
      if (!source.includes(LOAD_CALL)) {
        throw new Error(`${args.path} no longer loads its schema with ${LOAD_CALL}: update scripts/esbuild-etcd3-proto.mjs for this etcd3 version`);
      }
      // The protobufjs that @grpc/proto-loader itself uses, so the JSON matches what fromJSON expects.
      const protobuf = createRequire(require.resolve("@grpc/proto-loader"))("protobufjs");
      const schema = new protobuf.Root().loadSync(join(dirname(args.path), "..", "proto", "rpc.proto"), { keepCase: true }).toJSON();
      return { contents: source.replace(LOAD_CALL, `(0, proto_loader_1.fromJSON)(${JSON.stringify(schema)}, {`), loader: "js" };
    });
  },
};
