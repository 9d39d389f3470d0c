/**
 * A real Kubernetes control plane on one address: etcd, kube-apiserver, kube-controller-manager
 * (node IPAM with dual-stack pod CIDRs, EndpointSlices, Deployments, ReplicaSets, ServiceAccounts)
 * and kube-scheduler, built by scripts/build-kube.sh. Its certificates are made here with
 * openssl: a CA, the API server's serving certificate, and one client certificate per component
 * with the identity Kubernetes' bootstrap RBAC expects, so each has only its own rights. The
 * admin kubeconfig (group system:masters) is for tests, the lab and kubectl. Nothing is shared
 * with the machine: every file sits in the directory given, every port on the address given.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as stringifyYaml } from "yaml";
import { run } from "../linux/exec.js";
import { formatHostPort, formatIp, formatPrefix, nthAddress, type IpAddress, type IpPrefix } from "../net/ip.js";

export interface ControlPlaneSpec {
  /** Where certificates, kubeconfigs, etcd's data and the logs go. */
  readonly dir: string;
  /** Where kube-apiserver, kube-controller-manager, kube-scheduler and etcd are. */
  readonly binDir: string;
  /** Every component listens on this address only. */
  readonly address: IpAddress;
  readonly ports: { readonly apiserver: number; readonly etcdClient: number; readonly etcdPeer: number };
  /** The cluster's pod CIDRs, one per family, primary first: node IPAM cuts node pod CIDRs from them. */
  readonly podCidrs: readonly IpPrefix[];
  readonly serviceCidrs: readonly IpPrefix[];
  readonly nodeMaskSizes: { readonly 4: number; readonly 6: number };
  readonly nodePortRange: string;
  /**
   * Real kubelets join (`lab up --kubelet`): the API server gets a client certificate for them
   * (logs, exec, port-forward) and NodeRestriction, and the controllers that need kubelets run.
   */
  readonly kubelets?: boolean;
}

export interface ControlPlaneFiles {
  readonly server: string;
  readonly caCert: string;
  /** Kubeconfig of a cluster administrator (system:masters). */
  readonly adminKubeconfig: string;
  readonly controllerManagerKubeconfig: string;
  readonly schedulerKubeconfig: string;
  /** Kubeconfig of kube-proxy (system:kube-proxy, bound to system:node-proxier). */
  readonly proxyKubeconfig: string;
  readonly serviceAccountKey: string;
  readonly serviceAccountPublicKey: string;
  readonly apiserverCert: string;
  readonly apiserverKey: string;
  readonly kubeletClientCert: string;
  readonly kubeletClientKey: string;
}

export interface ControlPlaneCommand {
  readonly name: "etcd" | "kube-apiserver" | "kube-controller-manager" | "kube-scheduler";
  readonly argv: readonly string[];
  readonly log: string;
}

/** The controllers the control plane always runs: none that needs a kubelet (node lifecycle would taint every node without one). */
export const CONTROLLERS = [
  "node-ipam-controller",
  "endpointslice-controller",
  "endpointslice-mirroring-controller",
  "deployment-controller",
  "replicaset-controller",
  "serviceaccount-controller",
  "serviceaccount-token-controller",
  "garbage-collector-controller",
  "namespace-controller",
] as const;

/** The controllers a cluster of real kubelets needs besides: node health and taints, evictions, the CA its pods mount, and the workloads the e2e suite makes. */
export const KUBELET_CONTROLLERS = [
  "node-lifecycle-controller",
  "taint-eviction-controller",
  "root-ca-certificate-publisher-controller",
  "pod-garbage-collector-controller",
  "endpoints-controller",
  "ttl-controller",
  "daemonset-controller",
  "replicationcontroller-controller",
  "job-controller",
  "statefulset-controller",
  "clusterrole-aggregation-controller",
] as const;

/** The address a client of the control plane dials: `https://ADDRESS:PORT`. */
export function controlPlaneServer(spec: Pick<ControlPlaneSpec, "address" | "ports">): string {
  return `https://${formatHostPort(formatIp(spec.address), spec.ports.apiserver)}`;
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"];

/** A certificate and key signed by the control plane's CA: `pki/NAME.crt` and `pki/NAME.key` in `dir`. */
export async function issueCertificate(dir: string, name: string, subject: string, extensions: readonly string[]): Promise<{ cert: string; key: string }> {
  const path = (file: string) => join(dir, "pki", file);
  await run("openssl", ["req", "-x509", ...EC_KEY, "-CA", path("ca.crt"), "-CAkey", path("ca.key"), "-keyout", path(`${name}.key`), "-out", path(`${name}.crt`),
    "-subj", subject, "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
    ...extensions.flatMap((extension) => ["-addext", extension])]);
  return { cert: path(`${name}.crt`), key: path(`${name}.key`) };
}

/**
 * A kubeconfig for a client certificate with `subject` (`/O=group/CN=user`), written to
 * `dir/NAME.kubeconfig` for `server`.
 */
export async function clientKubeconfig(dir: string, name: string, subject: string, user: string, server: string): Promise<string> {
  const { cert, key } = await issueCertificate(dir, name, subject, ["extendedKeyUsage=clientAuth"]);
  const file = join(dir, `${name}.kubeconfig`);
  writeFileSync(file, kubeconfigText(server, join(dir, "pki", "ca.crt"), user, cert, key), { mode: 0o600 });
  return file;
}

/** Makes the certificates, keys and kubeconfigs (each certificate valid ten years). */
export async function writeControlPlaneFiles(spec: ControlPlaneSpec): Promise<ControlPlaneFiles> {
  const pki = join(spec.dir, "pki");
  mkdirSync(pki, { recursive: true, mode: 0o700 });
  const path = (name: string) => join(pki, name);
  await run("openssl", ["req", "-x509", ...EC_KEY, "-keyout", path("ca.key"), "-out", path("ca.crt"), "-subj", "/CN=trellis-lab-ca",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  const issue = (name: string, subject: string, extensions: readonly string[]) => issueCertificate(spec.dir, name, subject, extensions);
  const serviceIps = spec.serviceCidrs.map((cidr) => formatIp(nthAddress(cidr, 1n)));
  const sans = [
    ...new Set([formatIp(spec.address), "127.0.0.1", "::1", ...serviceIps].map((ip) => `IP:${ip}`)),
    ...["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"].map((name) => `DNS:${name}`),
  ];
  const client = ["extendedKeyUsage=clientAuth"];
  await Promise.all([
    issue("apiserver", "/CN=kube-apiserver", ["extendedKeyUsage=serverAuth", `subjectAltName=${sans.join(",")}`]),
    issue("admin", "/O=system:masters/CN=trellis-admin", client),
    issue("controller-manager", "/CN=system:kube-controller-manager", client),
    issue("scheduler", "/CN=system:kube-scheduler", client),
    issue("kube-proxy", "/CN=system:kube-proxy", client),
    // The API server's identity toward kubelets (logs, exec): a cluster administrator's.
    issue("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", client),
    run("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path("sa.key")]),
  ]);
  await run("openssl", ["pkey", "-in", path("sa.key"), "-pubout", "-out", path("sa.pub")]);
  const server = controlPlaneServer(spec);
  const kubeconfig = (name: string, user: string) => {
    const file = join(spec.dir, `${name}.kubeconfig`);
    writeFileSync(file, kubeconfigText(server, path("ca.crt"), user, path(`${name}.crt`), path(`${name}.key`)), { mode: 0o600 });
    return file;
  };
  return {
    server,
    caCert: path("ca.crt"),
    adminKubeconfig: kubeconfig("admin", "trellis-admin"),
    controllerManagerKubeconfig: kubeconfig("controller-manager", "system:kube-controller-manager"),
    schedulerKubeconfig: kubeconfig("scheduler", "system:kube-scheduler"),
    proxyKubeconfig: kubeconfig("kube-proxy", "system:kube-proxy"),
    serviceAccountKey: path("sa.key"),
    serviceAccountPublicKey: path("sa.pub"),
    apiserverCert: path("apiserver.crt"),
    apiserverKey: path("apiserver.key"),
    kubeletClientCert: path("apiserver-kubelet-client.crt"),
    kubeletClientKey: path("apiserver-kubelet-client.key"),
  };
}

/** A kubeconfig with one cluster, one user authenticated by a client certificate, one context. */
export function kubeconfigText(server: string, caCert: string, user: string, cert: string, key: string): string {
  return stringifyYaml({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "trellis", cluster: { server, "certificate-authority": caCert } }],
    users: [{ name: user, user: { "client-certificate": cert, "client-key": key } }],
    contexts: [{ name: user, context: { cluster: "trellis", user } }],
    "current-context": user,
  });
}

/** A kubeconfig whose user authenticates with a bearer token read from `tokenFile` at each request. */
export function tokenKubeconfigText(server: string, caCert: string, user: string, tokenFile: string): string {
  return stringifyYaml({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "trellis", cluster: { server, "certificate-authority": caCert } }],
    users: [{ name: user, user: { tokenFile } }],
    contexts: [{ name: user, context: { cluster: "trellis", user } }],
    "current-context": user,
  });
}

/** The four commands, in start order. */
export function controlPlaneCommands(spec: ControlPlaneSpec, files: ControlPlaneFiles): ControlPlaneCommand[] {
  const address = formatIp(spec.address);
  const etcdClient = `http://${formatHostPort(address, spec.ports.etcdClient)}`;
  const etcdPeer = `http://${formatHostPort(address, spec.ports.etcdPeer)}`;
  const loopback = spec.address.family === 4 ? address.startsWith("127.") : address === "::1";
  const serviceCidrs = spec.serviceCidrs.map(formatPrefix).join(",");
  const bin = (name: string) => join(spec.binDir, name);
  const log = (name: string) => join(spec.dir, `${name}.log`);
  const masks = spec.podCidrs.map((cidr) => `--node-cidr-mask-size-ipv${cidr.family}=${spec.nodeMaskSizes[cidr.family]}`);
  return [
    {
      name: "etcd",
      log: log("etcd"),
      argv: [bin("etcd"), "--name", "trellis-lab", "--data-dir", join(spec.dir, "etcd"), "--listen-client-urls", etcdClient, "--advertise-client-urls", etcdClient,
        "--listen-peer-urls", etcdPeer, "--initial-advertise-peer-urls", etcdPeer, "--initial-cluster", `trellis-lab=${etcdPeer}`,
        "--log-level", "warn", "--unsafe-no-fsync"],
    },
    {
      name: "kube-apiserver",
      log: log("kube-apiserver"),
      argv: [bin("kube-apiserver"), `--etcd-servers=${etcdClient}`, `--bind-address=${address}`, `--secure-port=${spec.ports.apiserver}`,
        // An API server on loopback cannot be the kubernetes Service's endpoint.
        ...(loopback ? ["--endpoint-reconciler-type=none"] : [`--advertise-address=${address}`]),
        `--tls-cert-file=${files.apiserverCert}`, `--tls-private-key-file=${files.apiserverKey}`, `--client-ca-file=${files.caCert}`,
        `--service-cluster-ip-range=${serviceCidrs}`, `--service-node-port-range=${spec.nodePortRange}`, "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local", `--service-account-key-file=${files.serviceAccountPublicKey}`,
        `--service-account-signing-key-file=${files.serviceAccountKey}`, "--allow-privileged=true", "--profiling=false", `--cert-dir=${join(spec.dir, "pki")}`,
        ...(spec.kubelets
          ? [`--kubelet-client-certificate=${files.kubeletClientCert}`, `--kubelet-client-key=${files.kubeletClientKey}`,
            // Lab nodes' names resolve nowhere: dial their addresses.
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname", "--enable-admission-plugins=NodeRestriction"]
          : [])],
    },
    {
      name: "kube-controller-manager",
      log: log("kube-controller-manager"),
      argv: [bin("kube-controller-manager"), `--kubeconfig=${files.controllerManagerKubeconfig}`, `--authentication-kubeconfig=${files.controllerManagerKubeconfig}`,
        `--authorization-kubeconfig=${files.controllerManagerKubeconfig}`, "--leader-elect=false", `--controllers=${[...CONTROLLERS, ...(spec.kubelets ? KUBELET_CONTROLLERS : [])].join(",")}`,
        "--allocate-node-cidrs=true", `--cluster-cidr=${spec.podCidrs.map(formatPrefix).join(",")}`, ...masks, `--service-cluster-ip-range=${serviceCidrs}`,
        `--root-ca-file=${files.caCert}`, `--service-account-private-key-file=${files.serviceAccountKey}`, "--use-service-account-credentials=true",
        `--bind-address=${address}`, "--secure-port=0", "--profiling=false", "--concurrent-endpoint-syncs=5", "--concurrent-service-endpoint-syncs=5"],
    },
    {
      name: "kube-scheduler",
      log: log("kube-scheduler"),
      argv: [bin("kube-scheduler"), `--kubeconfig=${files.schedulerKubeconfig}`, `--authentication-kubeconfig=${files.schedulerKubeconfig}`,
        `--authorization-kubeconfig=${files.schedulerKubeconfig}`, "--leader-elect=false", `--bind-address=${address}`, "--secure-port=0", "--profiling=false"],
    },
  ];
}
