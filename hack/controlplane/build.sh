#!/usr/bin/env bash
# Build the test control plane into $1 (default: ../../.cluster/bin): kube-apiserver and
# kube-controller-manager from the pinned release, and our embedded etcd. Static, as upstream
# builds them, with the version stamped in (Helm's kubeVersion checks read it). Go's module and
# build caches make a second run cost seconds.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-../../.cluster/bin}"
mkdir -p "$out"
version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod | head -1)"
minor="$(echo "$version" | cut -d. -f2)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod"
go build -trimpath -pgo=off -ldflags "$ldflags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager ./etcd
echo "$version" > "$out/VERSION"
