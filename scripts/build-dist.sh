#!/usr/bin/env bash
# Builds the `leasehold` binary as it ships: the `dist` profile (size over speed), statically
# linked, so it needs no shared library: it can be copied into any image, even `FROM scratch`, and
# it maps no libc.so or ld.so, which would be a quarter of its resident memory.
#
# On Linux it links musl (Rust's self-contained musl target: the smallest binary; host names
# resolve from /etc/hosts and /etc/resolv.conf). If the musl target cannot be installed (rustup
# offline), it links glibc statically instead: larger, but just as self-contained, since glibc
# 2.34 and later have the `files` and `dns` name services built in.
#
# Prints the binary's path on stdout. Extra arguments go to cargo.
#
# It builds the full binary, with the etcd backend (cargo feature `etcd`, which needs protoc).
# With --kube first, it builds the Kubernetes image's binary, without the etcd backend: etcd's gRPC stack turns on hyper's HTTP/2 code, which kube's client then
# carries too, and the sidecar on a Lease is resident at 4.9 MiB with it, 4.4 MiB without
# (docs/benchmarks.md). It is built in target/kube, so that the two builds never replace each
# other's binary (or rebuild each other's dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

out=target
if [ "${1:-}" = "--kube" ]; then
  shift
  out=target/kube
  export CARGO_TARGET_DIR="$out"
else
  # The full binary: every backend (the etcd client needs protoc to build).
  set -- --features etcd "$@"
fi
# The path of the binary built.
emit() {
  echo "$out/${1#target/}"
}

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
*-unknown-linux-gnu)
  musl="${host%-gnu}-musl"
  if rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl" >&2; then
    # ring's C and assembly are freestanding, so the host's gcc compiles them for musl when
    # musl-gcc (Debian's musl-tools) is not installed; the C library itself comes with the target.
    cc=gcc
    command -v musl-gcc >/dev/null 2>&1 && cc=musl-gcc
    # Packed relative relocations (DT_RELR): the binary is position-independent, so ASLR moves
    # it, and its startup code relocates every pointer in its data. As RELA entries those are
    # 24 bytes each, 370 KB here, all read at every start and so all resident; packed, they
    # are 5 KB. musl's startup applies them since 1.2.4 (Rust 1.95 bundles 1.2.5). An older
    # musl would not apply them and the binary would crash at start, so the flag is left out.
    flags="${RUSTFLAGS:-}"
    libc="$(rustc --print sysroot)/lib/rustlib/$musl/lib/self-contained/libc.a"
    ver=$(strings "$libc" 2>/dev/null | grep -m1 -xE '1\.[0-9]+\.[0-9]+' || true)
    if [ -n "$ver" ] && [ "$(printf '%s\n' 1.2.4 "$ver" | sort -V | head -1)" = 1.2.4 ]; then
      flags="$flags -C link-arg=-Wl,-z,pack-relative-relocs"
    else
      echo "build-dist: bundled musl ${ver:-of unknown version} predates 1.2.4; relocations stay unpacked" >&2
    fi
    # With --target, RUSTFLAGS reach only the shipped binary, not build scripts or proc-macros.
    env "CC_${musl//-/_}=$cc" RUSTFLAGS="$flags" \
      cargo build --profile dist -p leasehold-cli --target "$musl" "$@" >&2
    emit "target/$musl/dist/leasehold"
  else
    echo "build-dist: the $musl target is not available; linking glibc statically instead" >&2
    # --target keeps build scripts and proc-macros dynamic (the compiler loads them); only the
    # shipped binary is static. Its own directory keeps the flag from invalidating other builds.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
      cargo build --profile dist -p leasehold-cli --target "$host" "$@" >&2
    emit "target/$host/dist/leasehold"
  fi
  ;;
*)
  # Already static (musl hosts) or a platform whose libc must be linked dynamically (macOS).
  cargo build --profile dist -p leasehold-cli "$@" >&2
  emit "target/dist/leasehold"
  ;;
esac
