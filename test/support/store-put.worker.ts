/** A separate process that writes one key: `store-put.worker.ts SPEC NAMESPACE KEY VALUE` (NAMESPACE "-" for none). */
import { openStore } from "../../src/store/open.js";

const [spec, namespace, key, value] = process.argv.slice(2);
const store = await openStore(spec, namespace === "-" ? {} : { etcd: { namespace } });
try {
  const result = await store.txn({ compares: [], operations: [{ type: "put", key, value }] });
  process.stdout.write(`${result.revision}\n`);
} finally {
  await store.close();
}
