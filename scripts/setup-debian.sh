#!/usr/bin/env bash
# Installs the Debian packages and npm dependencies Trellis and its tests use. Run as root.
# It never stops or disables a service: the tests start their own etcd and containerd, and a
# node's own container runtime keeps running. Packages it installs itself are kept from
# starting their services (policy-rc.d), since nothing here needs them running.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(iproute2 nftables conntrack util-linux containerd runc containernetworking-plugins
  busybox-static etcd-server iperf3 iputils-ping procps gcc libc6-dev podman openssl
  # The userland of the lab's agnhost, glibc-dns-testing and nginx images (the e2e suite runs these).
  dash netcat-openbsd curl wget bind9-dnsutils nginx-light
  # The browser the tests drive headless against `trellis lab ui` (test/ui-browser.test.ts).
  chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# written by trellis scripts/setup-debian.sh for the length of one apt-get install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# npm and everything it runs use the Node.js release the project pins (package.json engines),
# not the machine's own node, which may be older: the registry's node-linux-<arch> package is
# that release's official binary and headers. It is kept under .cache/, outside node_modules
# (which npm ci replaces); npm ci then installs the same release as a dependency, first on
# `npm run`'s PATH for the build, the tests and the benchmarks. A native addon would build
# against its headers (nodedir), with no download.
version=$(node -p 'require("./package.json").engines.node')
platform=linux-$(node -p process.arch)
runtime=$PWD/.cache/node-v$version-$platform/node_modules/node-$platform
if [[ ! -x $runtime/bin/node || $("$runtime/bin/node" --version 2>/dev/null) != "v$version" ]]; then
  npm install --prefix "$PWD/.cache/node-v$version-$platform" --no-save --no-package-lock --ignore-scripts --no-audit --no-fund "node-$platform@$version"
fi
PATH="$runtime/bin:$PATH" npm_config_nodedir=$runtime npm ci --no-audit --no-fund
# The real Kubernetes control plane the tests run against, built with Go (cached after the first run).
bash scripts/build-kube.sh
