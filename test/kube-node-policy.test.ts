/**
 * deploy/trellis.yaml's admission policy (each agent changes only its own Node) type-checks
 * against the real API server's Node schema. The API server stores a policy whose expressions
 * name fields a Node does not have (it compiles them against an untyped object) and meets the
 * mistake only at admission. Its type checker, kube-controller-manager's
 * validatingadmissionpolicy-status-controller, writes what it finds to status.typeChecking, but
 * only for validations: a variable's type errors go unreported. So the test applies the policy as
 * it is, a copy with each variable checked as a validation too, and that copy with a misspelt
 * field, which shows the checker reads the variables. The policy's behaviour is proved with the
 * agents' tokens in kube-agent.test.ts.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseAllDocuments, stringify } from "yaml";
import { startTestControlPlane, type TestControlPlane } from "./support/kube.js";

const MANIFEST = resolve(import.meta.dirname, "../deploy/trellis.yaml");

interface PolicyJson {
  metadata: { name: string; generation?: number };
  spec: { variables: Array<{ name: string; expression: string }>; validations: Array<{ expression: string }> };
  status?: { observedGeneration?: number; typeChecking?: { expressionWarnings?: Array<{ fieldRef: string; warning: string }> } };
}

describe("deploy/trellis.yaml's ValidatingAdmissionPolicy on the real API server", { timeout: 180_000 }, () => {
  let plane: TestControlPlane | undefined;
  let checker: ChildProcess | undefined;
  const manifestPolicy = () => parseAllDocuments(readFileSync(MANIFEST, "utf8")).map((doc) => doc.toJS() as { kind?: string }).find((doc) => doc?.kind === "ValidatingAdmissionPolicy") as PolicyJson;

  /** Applies `policy` and resolves with the type checker's warnings for it, once it has checked it. */
  const typeCheck = async (policy: PolicyJson): Promise<string[]> => {
    await plane!.kubectl(["apply", "-f", "-"], stringify(policy));
    const deadline = Date.now() + 60_000;
    for (;;) {
      const stored = JSON.parse(await plane!.kubectl(["get", "validatingadmissionpolicy", policy.metadata.name, "-o", "json"])) as PolicyJson;
      if (stored.status?.observedGeneration === stored.metadata.generation) {
        return (stored.status?.typeChecking?.expressionWarnings ?? []).map((warning) => `${warning.fieldRef}: ${warning.warning}`);
      }
      if (Date.now() > deadline) assert.fail(`the type checker did not check ${policy.metadata.name} within 60 s`);
      await new Promise((resolveWait) => setTimeout(resolveWait, 250));
    }
  };
  /** The policy under another name, with each variable also a validation (`(E) == (E)`: any type, checked). */
  const withVariablesChecked = (policy: PolicyJson, name: string): PolicyJson => {
    const copy = structuredClone(policy);
    copy.metadata = { name };
    copy.spec.validations.push(...copy.spec.variables.map((variable) => ({ expression: `(${variable.expression}) == (${variable.expression})` })));
    return copy;
  };

  before(async () => {
    plane = await startTestControlPlane();
    // The type checker alone; with the admin's rights, since the controller's own role comes with
    // --use-service-account-credentials, which needs the token controllers too.
    const log = join(plane.spec.dir, "policy-type-checker.log");
    const fd = openSync(log, "a");
    checker = spawn(join(plane.spec.binDir, "kube-controller-manager"), [`--kubeconfig=${plane.files.adminKubeconfig}`, "--leader-elect=false",
      "--controllers=validatingadmissionpolicy-status-controller", "--bind-address=127.0.0.1", "--secure-port=0"], { stdio: ["ignore", fd, fd] });
    closeSync(fd);
  });

  after(async () => {
    if (checker && checker.exitCode === null && checker.signalCode === null) {
      const exited = new Promise((resolveExit) => checker!.once("exit", resolveExit));
      checker.kill("SIGKILL");
      await exited;
    }
    await plane?.stop();
  });

  it("type-checks against a v1.37 Node, its variables included", async () => {
    const policy = manifestPolicy();
    // Bug caught: an expression that names a field a Node does not have (a typo, a field a release
    // renamed, maps of quantities the checker's schema leaves out), which the API server would
    // meet only at admission, refusing every agent's publish (failurePolicy Fail).
    assert.deepEqual(await typeCheck(policy), []);
    assert.deepEqual(await typeCheck(withVariablesChecked(policy, "trellis-agent-own-node-variables")), []);
    const misspelt = structuredClone(policy);
    const fields = misspelt.spec.variables.find((variable) => variable.name === "foreignFields")!;
    assert.ok(fields.expression.includes("object.?status.?addresses =="), "the policy compares status.addresses");
    fields.expression = fields.expression.replace("object.?status.?addresses ==", "object.?status.?adresses ==");
    const warnings = await typeCheck(withVariablesChecked(misspelt, "trellis-agent-own-node-misspelt"));
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /undefined field 'adresses'/);
  });
});
