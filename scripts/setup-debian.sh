#!/usr/bin/env bash
# Installs the Debian packages and npm dependencies Trellis and its tests use. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(iproute2 nftables conntrack util-linux containerd runc containernetworking-plugins
  busybox-static etcd-server iperf3 iputils-ping procps)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts etcd and containerd as services; the tests start their own instances.
systemctl disable --now etcd containerd >/dev/null 2>&1 || true
npm ci --no-audit --no-fund
