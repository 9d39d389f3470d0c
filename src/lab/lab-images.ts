/**
 * The images a lab of real nodes runs, made here (images.ts) and named as their users expect:
 * the pause image and agnhost under the tags the built e2e suite asks for (`e2e.test
 * --list-images`), busybox likewise, CoreDNS, and Trellis's own image under the name
 * deploy/trellis.yaml runs.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseAllDocuments } from "yaml";
import { run } from "../linux/exec.js";
import { buildImage, type ImageArchive, type ImageSpec } from "./images.js";
import { deployManifest } from "./kube-lab.js";
import { selfInvocation } from "./probe.js";

/** The machine's programs the images take (Debian packages: dash, netcat-openbsd, curl, wget, bind9-dnsutils, iproute2, …). */
const DASH = "/usr/bin/dash";
const BUSYBOX = "/usr/bin/busybox";
const NGINX_CONF = `user root;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path /tmp/client_body;
  proxy_temp_path /tmp/proxy;
  fastcgi_temp_path /tmp/fastcgi;
  uwsgi_temp_path /tmp/uwsgi;
  scgi_temp_path /tmp/scgi;
  server {
    listen 80;
    listen [::]:80;
    root /usr/share/nginx/html;
  }
}
`;

export interface LabImages {
  readonly pause: ImageArchive;
  readonly agnhost: ImageArchive;
  readonly busybox: ImageArchive;
  readonly glibcDnsTesting: ImageArchive;
  readonly nginx: ImageArchive;
  readonly regressionIssue74839: ImageArchive;
  readonly coredns: ImageArchive;
  readonly trellis: ImageArchive;
}

/**
 * The refs the e2e suite runs, by repository name, every tag it lists (`agnhost` →
 * `registry.k8s.io/e2e-test-images/agnhost:2.66.1` and the previous `…:2.55`): the suite asks
 * for more than one tag of some (nginx's current and next), and the lab serves each.
 */
export async function e2eImageRefs(binDir: string): Promise<Map<string, string[]>> {
  const { stdout } = await run(join(binDir, "e2e.test"), ["--list-images"], { timeoutMs: 60_000 });
  const refs = new Map<string, string[]>();
  for (const ref of stdout.split("\n").map((line) => line.trim()).filter((line) => line.startsWith("registry.k8s.io/"))) {
    const repository = ref.slice(0, ref.lastIndexOf(":"));
    const name = repository.slice(repository.lastIndexOf("/") + 1);
    refs.set(name, [...(refs.get(name) ?? []), ref].sort((a, b) => compareVersions(b.slice(b.lastIndexOf(":") + 1), a.slice(a.lastIndexOf(":") + 1))));
  }
  return refs;
}

function compareVersions(a: string, b: string): number {
  const parts = (version: string) => version.split(/[.-]/).map((part) => (/^[0-9]+$/.test(part) ? Number(part) : 0));
  const [x, y] = [parts(a), parts(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
}

/** The image deploy/trellis.yaml's DaemonSet runs. */
export function manifestTrellisImage(manifest = deployManifest()): string {
  for (const document of parseAllDocuments(readFileSync(manifest, "utf8"))) {
    const object = document.toJS() as { kind?: string; spec?: { template?: { spec?: { containers?: Array<{ image?: string }> } } } } | null;
    const image = object?.kind === "DaemonSet" ? object.spec?.template?.spec?.containers?.[0]?.image : undefined;
    if (image) return image;
  }
  throw new Error(`${manifest} has no DaemonSet with a container image`);
}

/** The CoreDNS release test/kube/coredns/go.mod pins, as its image tag. */
function corednsVersion(binDir: string): string {
  const goMod = readFileSync(join(binDir, "..", "coredns", "go.mod"), "utf8");
  const match = /github\.com\/coredns\/coredns (v[0-9][^\s]*)/.exec(goMod);
  if (!match) throw new Error(`test/kube/coredns/go.mod names no github.com/coredns/coredns release`);
  return match[1];
}

/** Busybox's applets, each a link to it, except those `except` names (given by real programs). */
export async function busyboxLinks(except: ReadonlySet<string>): Promise<Array<{ path: string; target: string }>> {
  const { stdout } = await run(BUSYBOX, ["--list-full"]);
  // The list names busybox itself too: a link there would replace the program with a link to itself.
  const skipped = new Set([...except, "busybox"]);
  return stdout.split("\n").map((line) => line.trim()).filter((path) => path && !skipped.has(path.slice(path.lastIndexOf("/") + 1))).map((path) => ({ path: `/${path}`, target: "/bin/busybox" }));
}

/** Builds (or finds in `cacheDir`) every image a real-node lab runs. */
export async function buildLabImages(binDir: string, cacheDir: string): Promise<LabImages> {
  const refs = await e2eImageRefs(binDir);
  const tags = (name: string) => {
    const found = refs.get(name);
    if (!found?.length) throw new Error(`${join(binDir, "e2e.test")} --list-images names no ${name} image`);
    return { ref: found[0], moreRefs: found.slice(1) };
  };
  const self = selfInvocation();
  if (self.length !== 1) throw new Error("the lab's Trellis image is made from the built executable: run dist/trellis (npm run build), not the sources");
  const dist = dirname(self[0]);
  const distFiles = readdirSync(dist).filter((file) => /^trellis(-cni|-spawn|-nft-batch)?$/.test(file));

  const agnhostPrograms = new Map([
    ["sh", DASH], ["nc", "/usr/bin/nc.openbsd"], ["curl", "/usr/bin/curl"], ["wget", "/usr/bin/wget"], ["dig", "/usr/bin/dig"],
    ["ip", "/usr/sbin/ip"], ["ping", "/usr/bin/ping"], ["bash", "/usr/bin/bash"], ["getent", "/usr/bin/getent"],
  ]);
  const specs: Record<keyof LabImages, ImageSpec> = {
    pause: { ...tags("pause"), files: [{ from: join(binDir, "pause"), to: "/pause" }], entrypoint: ["/pause"] },
    // What upstream's agnhost image holds beside the program: porter's TLS key pair, a CoreDNS,
    // /uploads, the agnhost-2 name, and a user and group defined in the image.
    agnhost: {
      ...tags("agnhost"),
      files: [
        { from: join(binDir, "agnhost"), to: "/agnhost" },
        { from: BUSYBOX, to: "/bin/busybox" },
        { from: join(binDir, "localhost.crt"), to: "/localhost.crt" },
        { from: join(binDir, "localhost.key"), to: "/localhost.key" },
        { from: join(binDir, "coredns"), to: "/coredns" },
      ],
      programs: [...agnhostPrograms].map(([name, from]) => ({ from, to: `/usr/bin/${name}` })),
      links: [...(await busyboxLinks(new Set(agnhostPrograms.keys()))), { path: "/agnhost-2", target: "agnhost" }],
      texts: [
        { path: "/uploads/.keep", text: "" },
        { path: "/etc/passwd", text: "root:x:0:0:root:/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" },
        { path: "/etc/group", text: "root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\nnogroup:x:65534:\n" },
      ],
      entrypoint: ["/agnhost"],
      cmd: ["pause"],
    },
    busybox: { ...tags("busybox"), files: [{ from: BUSYBOX, to: "/bin/busybox" }], links: await busyboxLinks(new Set()), cmd: ["sh"] },
    // Debian's glibc resolver beside dig (upstream builds it from debian:bookworm-slim and dnsutils).
    glibcDnsTesting: {
      ...tags("glibc-dns-testing"),
      files: [{ from: BUSYBOX, to: "/bin/busybox" }],
      programs: [{ from: DASH, to: "/usr/bin/sh" }, { from: "/usr/bin/dig", to: "/usr/bin/dig" }, { from: "/usr/bin/getent", to: "/usr/bin/getent" }],
      links: await busyboxLinks(new Set(["sh", "dig", "getent"])),
      cmd: ["sh"],
    },
    // Debian's nginx, serving on port 80 in both families as the suite's image does.
    nginx: {
      ...tags("nginx"),
      programs: [{ from: "/usr/sbin/nginx", to: "/usr/sbin/nginx" }],
      texts: [
        { path: "/etc/nginx/nginx.conf", text: NGINX_CONF },
        { path: "/var/log/nginx/.keep", text: "" },
        { path: "/var/lib/nginx/.keep", text: "" },
        { path: "/usr/share/nginx/html/index.html", text: "<html><body>nginx</body></html>\n" },
      ],
      entrypoint: ["/usr/sbin/nginx", "-g", "daemon off;"],
    },
    regressionIssue74839: { ...tags("regression-issue-74839"), files: [{ from: join(binDir, "regression-issue-74839"), to: "/regression-issue-74839" }], entrypoint: ["/regression-issue-74839"] },
    coredns: { ref: `registry.k8s.io/coredns/coredns:${corednsVersion(binDir)}`, files: [{ from: join(binDir, "coredns"), to: "/coredns" }], entrypoint: ["/coredns"] },
    trellis: {
      ref: manifestTrellisImage(),
      programs: [
        ...distFiles.map((file) => ({ from: join(dist, file), to: `/opt/trellis/bin/${file}` })),
        ...["/usr/sbin/ip", "/usr/sbin/bridge", "/usr/sbin/nft", "/usr/sbin/conntrack", "/usr/sbin/sysctl", "/usr/bin/nsenter"].map((from) => ({ from, to: from })),
        { from: DASH, to: "/usr/bin/sh" },
      ],
      entrypoint: ["/opt/trellis/bin/trellis"],
    },
  };
  const built = await Promise.all(Object.values(specs).map((spec) => buildImage(spec, cacheDir)));
  return Object.fromEntries(Object.keys(specs).map((key, i) => [key, built[i]])) as unknown as LabImages;
}
