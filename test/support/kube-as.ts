/**
 * API requests as a client other than the admin (an agent's token), against a control plane that
 * listens in a test namespace the test process cannot reach: a child `node`, entered into that
 * namespace, sends them with src/kube/client.ts, the agent's own client, so a test sees the
 * answer an agent would. kubectl cannot stand in: its `patch` reads the object first, which
 * needs a right (get nodes/status) the agent does not have.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { KubeApiError, KubeClient } from "../../src/kube/client.js";
import { loadKubeconfig } from "../../src/kube/config.js";

export interface KubeRequest {
  readonly method: "GET" | "PATCH";
  readonly path: string;
  readonly body?: unknown;
  readonly contentType?: "application/merge-patch+json" | "application/strategic-merge-patch+json";
}

/** The API server's answer: its status code and, for an error, its reason and message. */
export interface KubeAnswer {
  readonly status: number;
  readonly reason?: string;
  readonly message?: string;
}

const SELF = fileURLToPath(import.meta.url);
const CHECKOUT = resolve(import.meta.dirname, "../..");

/** Sends `requests` one after the other with `kubeconfig`, from the namespace at `netnsPath`. */
export function requestsAs(netnsPath: string, kubeconfig: string, requests: readonly KubeRequest[]): Promise<KubeAnswer[]> {
  return new Promise((resolveAnswers, reject) => {
    const child = spawn("nsenter", [`--net=${netnsPath}`, "--", process.execPath, "--import", "tsx", SELF, kubeconfig], { cwd: CHECKOUT, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (text: string) => (stdout += text));
    child.stderr.setEncoding("utf8").on("data", (text: string) => (stderr += text));
    child.once("error", reject);
    // At "close", once its output is read whole (see kube.ts's kubectl).
    child.once("close", (code) => {
      if (code !== 0) reject(new Error(`requests as ${kubeconfig} failed (exit ${code}): ${stderr.trim()}`));
      else resolveAnswers(JSON.parse(stdout) as KubeAnswer[]);
    });
    child.stdin.end(JSON.stringify(requests));
  });
}

async function answer(client: KubeClient, request: KubeRequest): Promise<KubeAnswer> {
  try {
    await client.request(request.method, request.path, { body: request.body, contentType: request.contentType });
    return { status: 200 };
  } catch (error) {
    if (error instanceof KubeApiError) return { status: error.status, reason: error.reason, message: error.message };
    throw error;
  }
}

if (process.argv[1] === SELF) {
  const client = new KubeClient(loadKubeconfig(process.argv[2]));
  const answers: KubeAnswer[] = [];
  for (const request of JSON.parse(readFileSync(0, "utf8")) as KubeRequest[]) answers.push(await answer(client, request));
  client.close();
  process.stdout.write(JSON.stringify(answers));
}
