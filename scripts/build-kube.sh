#!/usr/bin/env bash
# Builds the real Kubernetes the tests run against, into test/kube/bin: kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl, kubelet, the upstream e2e suite
# (e2e.test), its runner (ginkgo) and its test programs (agnhost, regression-issue-74839) from k8s.io/kubernetes at the release
# test/kube/controlplane/go.mod pins; etcd from test/kube/etcd/go.mod; CoreDNS from
# test/kube/coredns/go.mod; and the pod sandbox's pause program from test/kube/pause/pause.c. Go's module and build caches make a second run cost seconds; a run whose
# inputs match the stamp of the last one costs nothing. Debian's own kubectl (kubernetes-client,
# 1.20) is unpacked beside them as kubectl-debian, not installed: the tests drive the lab with it,
# and the machine's own kubectl, if it has one, stays as it is.
set -euo pipefail
cd "$(dirname "$0")/../test/kube"
bin=$PWD/bin
mkdir -p "$bin"
if [[ ! -x $bin/kubectl-debian ]]; then
  unpack=$(mktemp -d)
  trap 'rm -rf "$unpack"' EXIT
  (cd "$unpack" && { apt-get download kubernetes-client >/dev/null 2>&1 || { apt-get update -qq && apt-get download kubernetes-client >/dev/null; }; })
  dpkg -x "$unpack"/kubernetes-client_*.deb "$unpack/root"
  install -m 0755 "$unpack/root/usr/bin/kubectl" "$bin/kubectl-debian"
fi
inputs=$(cat controlplane/go.mod controlplane/go.sum etcd/go.mod etcd/go.sum coredns/go.mod coredns/go.sum pause/pause.c ../../scripts/build-kube.sh | sha256sum | cut -d' ' -f1)
if [[ -f $bin/.stamp && $(cat "$bin/.stamp") == "$inputs" ]]; then
  exit 0
fi
command -v go >/dev/null || { echo "build-kube: go is not installed (Go 1.26 builds the test control plane)" >&2; exit 1; }
rm -f "$bin/.stamp"
release=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' controlplane/go.mod)
[[ $release =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || { echo "build-kube: no k8s.io/kubernetes release in controlplane/go.mod" >&2; exit 1; }
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
ldflags="-s -w"
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $package.gitVersion=$release -X $package.gitMajor=$major -X $package.gitMinor=$minor"
  ldflags+=" -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
done
export CGO_ENABLED=0 GOFLAGS=-mod=mod
(cd controlplane && go build -trimpath -ldflags "$ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/test/images/agnhost k8s.io/kubernetes/test/images/regression-issue-74839)
(cd controlplane && go test -c -trimpath -ldflags "$ldflags" -o "$bin/e2e.test" k8s.io/kubernetes/test/e2e)
# The suite's runner, to run its specs in parallel processes (the release's own ginkgo).
(cd controlplane && go build -trimpath -ldflags "-s -w" -o "$bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
(cd etcd && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
(cd coredns && go build -trimpath -ldflags "-s -w" -o "$bin/coredns" github.com/coredns/coredns)
gcc -static -Os -s -o "$bin/pause" pause/pause.c
# agnhost's porter serves TLS with the key pair its image carries.
agnhost_src=$(cd controlplane && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost
install -m 0644 "$agnhost_src/porter/localhost.crt" "$agnhost_src/porter/localhost.key" "$bin/"
echo "$inputs" >"$bin/.stamp"
