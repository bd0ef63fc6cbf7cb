#!/usr/bin/env bash
# Builds the real servers and peers the integration tests run against, from their Go modules,
# into a cache outside the checkout so a second run (or a fresh clone on the same machine) does
# not rebuild:
#   etcd             go.etcd.io/etcd/server/v3   (ETCD_VERSION)
#   kube-apiserver   k8s.io/kubernetes            (KUBE_VERSION; staging modules mapped to v0.X.Y)
#   leader-election  k8s.io/client-go/examples/leader-election, as shipped
#   go-elector       our client-go peer with durations as flags (for interop and benchmarks)
#   etcdctl          go.etcd.io/etcd/etcdctl/v3 (ETCD_VERSION): `etcdctl elect`
#   etcd-elector     our Go peer on go.etcd.io/etcd/client/v3/concurrency
#   cr-operator      our controller-runtime example operator (sigs.k8s.io/controller-runtime
#                    CR_VERSION, the release built on k8s.io/* of KUBE_VERSION; benchmarks)
# Prints the cache directory on its last line.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.8}
# controller-runtime v0.24.x requires k8s.io/* v0.36.x (kube 1.36); change both together.
CR_VERSION=${CR_VERSION:-v0.24.1}
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
here=$(cd "$(dirname "$0")/.." && pwd)
go_src="$here/crates/leasehold-testing/go"
cache=${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}
bin="$cache/bin/kube-$KUBE_VERSION-etcd-$ETCD_VERSION"
mkdir -p "$bin"
# GOTOOLCHAIN=auto: an older go fetches the toolchain the modules need from the module proxy.
export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-auto} CGO_ENABLED=0

log() { printf 'build-servers: %s\n' "$*" >&2; }

# Staging modules of k8s.io/kubernetes: its go.mod requires them at v0.0.0 and replaces them with
# ./staging paths, which a dependent module cannot see; map each to the published version.
# sample-cli-plugin is not published on the proxy, so it is mapped to an empty local module.
staging_replaces() {
  local mod
  mod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$mod" | awk '{print $1}' | while read -r m; do
    if [ "$m" = k8s.io/sample-cli-plugin ]; then
      echo "	$m => ./stub/sample-cli-plugin"
    else
      echo "	$m => $m $STAGING_VERSION"
    fi
  done
}

build_module() { # dir, module, requires, replaces, tools imports
  local dir=$1 module=$2 requires=$3 replaces=$4 imports=$5
  mkdir -p "$dir"
  {
    echo "module $module"
    echo
    echo "go 1.26"
    echo
    echo "require ("
    printf '%s\n' "$requires"
    echo ")"
    if [ -n "$replaces" ]; then
      echo
      echo "replace ("
      printf '%s\n' "$replaces"
      echo ")"
    fi
  } >"$dir/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "// Package tools pins the binaries this module builds."
    echo "package tools"
    echo
    echo "import ("
    printf '%s\n' "$imports"
    echo ")"
  } >"$dir/tools.go"
}

if [ ! -x "$bin/etcd" ]; then
  log "building etcd $ETCD_VERSION (first run only)"
  w=$(mktemp -d)
  build_module "$w" leasehold.test/etcd "	go.etcd.io/etcd/server/v3 $ETCD_VERSION" "" "	_ \"go.etcd.io/etcd/server/v3\""
  (cd "$w" && go mod tidy >/dev/null 2>&1 || true; cd "$w" && go build -trimpath -ldflags=-s -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3) 
  mv "$bin/etcd.tmp" "$bin/etcd"
  rm -rf "$w"
fi

# Stamp the version the way Kubernetes' own build does, so /version and the emulation-version
# logic see v1.X.Y rather than v0.0.0-master.
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
version_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
if [ ! -x "$bin/kube-apiserver" ] || ! "$bin/kube-apiserver" --version | grep -qF "$KUBE_VERSION"; then
  log "building kube-apiserver $KUBE_VERSION (first run only; several minutes on 2 cores)"
  w=$(mktemp -d)
  mkdir -p "$w/stub/sample-cli-plugin"
  printf 'module k8s.io/sample-cli-plugin\n\ngo 1.26\n' >"$w/stub/sample-cli-plugin/go.mod"
  build_module "$w" leasehold.test/kube-apiserver "	k8s.io/kubernetes $KUBE_VERSION" "$(staging_replaces)" "	_ \"k8s.io/kubernetes/cmd/kube-apiserver\""
  (cd "$w" && go mod tidy && go build -trimpath -ldflags="-s $version_ldflags" -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
  rm -rf "$w"
fi

# Rebuilt when our peer's source changes (by content: a fresh clone has new mtimes).
peer_sum=$(sha256sum "$go_src/client-go-peer/main.go" | cut -d' ' -f1)
if [ ! -x "$bin/leader-election" ] || [ ! -x "$bin/go-elector" ] || [ "$(cat "$bin/go-elector.sha256" 2>/dev/null)" != "$peer_sum" ]; then
  log "building client-go peers (k8s.io/client-go $STAGING_VERSION)"
  w=$(mktemp -d)
  build_module "$w" leasehold.test/client-go-peer "	k8s.io/client-go $STAGING_VERSION
	k8s.io/api $STAGING_VERSION
	k8s.io/apimachinery $STAGING_VERSION
	k8s.io/klog/v2 v2.130.1" "" "	_ \"k8s.io/client-go/examples/leader-election\""
  mkdir -p "$w/goelector"
  cp "$go_src/client-go-peer/main.go" "$w/goelector/main.go"
  (cd "$w" && go mod tidy && go build -trimpath -ldflags=-s -o "$bin/leader-election.tmp" k8s.io/client-go/examples/leader-election \
    && go build -trimpath -ldflags=-s -o "$bin/go-elector.tmp" ./goelector)
  mv "$bin/leader-election.tmp" "$bin/leader-election"
  mv "$bin/go-elector.tmp" "$bin/go-elector"
  echo "$peer_sum" >"$bin/go-elector.sha256"
  rm -rf "$w"
fi

# etcd's own election clients, for the etcd backend's interop tests and benchmarks: etcdctl (its
# `elect` command) and our Go program on client/v3/concurrency. etcdctl's go.mod replaces its
# sibling modules with local paths, so it is built from a module that requires them all at one
# version (`go install` refuses it).
etcd_peer_sum=$( (sha256sum "$go_src/etcd-peer/main.go"; echo "$ETCD_VERSION") | sha256sum | cut -d' ' -f1)
if [ ! -x "$bin/etcdctl" ] || [ ! -x "$bin/etcd-elector" ] || [ "$(cat "$bin/etcd-elector.sha256" 2>/dev/null)" != "$etcd_peer_sum" ]; then
  log "building etcdctl and etcd-elector (go.etcd.io/etcd $ETCD_VERSION)"
  w=$(mktemp -d)
  build_module "$w" leasehold.test/etcd-peer "	go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION" "" "	_ \"go.etcd.io/etcd/etcdctl/v3\""
  mkdir -p "$w/etcdelector"
  cp "$go_src/etcd-peer/main.go" "$w/etcdelector/main.go"
  (cd "$w" && go mod tidy && go build -trimpath -ldflags=-s -o "$bin/etcdctl.tmp" go.etcd.io/etcd/etcdctl/v3 \
    && go build -trimpath -ldflags=-s -o "$bin/etcd-elector.tmp" ./etcdelector)
  mv "$bin/etcdctl.tmp" "$bin/etcdctl"
  mv "$bin/etcd-elector.tmp" "$bin/etcd-elector"
  echo "$etcd_peer_sum" >"$bin/etcd-elector.sha256"
  rm -rf "$w"
fi

# The controller-runtime operator, rebuilt when its source or CR_VERSION changes.
cr_sum=$( (sha256sum "$go_src/controller-runtime-peer/main.go"; echo "$CR_VERSION $STAGING_VERSION") | sha256sum | cut -d' ' -f1)
if [ ! -x "$bin/cr-operator" ] || [ "$(cat "$bin/cr-operator.sha256" 2>/dev/null)" != "$cr_sum" ]; then
  log "building cr-operator (sigs.k8s.io/controller-runtime $CR_VERSION, k8s.io/* $STAGING_VERSION)"
  w=$(mktemp -d)
  build_module "$w" leasehold.test/controller-runtime-peer "	sigs.k8s.io/controller-runtime $CR_VERSION
	k8s.io/client-go $STAGING_VERSION
	k8s.io/api $STAGING_VERSION
	k8s.io/apimachinery $STAGING_VERSION" "" "	_ \"sigs.k8s.io/controller-runtime\""
  mkdir -p "$w/croperator"
  cp "$go_src/controller-runtime-peer/main.go" "$w/croperator/main.go"
  (cd "$w" && go mod tidy && go build -trimpath -ldflags=-s -o "$bin/cr-operator.tmp" ./croperator)
  mv "$bin/cr-operator.tmp" "$bin/cr-operator"
  echo "$cr_sum" >"$bin/cr-operator.sha256"
  rm -rf "$w"
fi

echo "$bin"
