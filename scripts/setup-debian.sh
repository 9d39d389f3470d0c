#!/usr/bin/env bash
# Installs the Debian packages and npm dependencies Trellis and its tests use. Run as root.
# It never stops or disables a service: the tests start their own etcd and containerd, and a
# node's own container runtime keeps running. Packages it installs itself are kept from
# starting their services (policy-rc.d), since nothing here needs them running.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(iproute2 nftables conntrack util-linux containerd runc containernetworking-plugins
  busybox-static etcd-server iperf3 iputils-ping procps gcc libc6-dev podman openssl)
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
npm ci --no-audit --no-fund
# The real Kubernetes control plane the tests run against, built with Go (cached after the first run).
bash scripts/build-kube.sh
