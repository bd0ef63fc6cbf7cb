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
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
*-unknown-linux-gnu)
  musl="${host%-gnu}-musl"
  if rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl" >&2; then
    # ring's C and assembly are freestanding, so the host's gcc compiles them for musl when
    # musl-gcc (Debian's musl-tools) is not installed; the C library itself comes with the target.
    cc=gcc
    command -v musl-gcc >/dev/null 2>&1 && cc=musl-gcc
    env "CC_${musl//-/_}=$cc" cargo build --profile dist -p leasehold-cli --target "$musl" "$@" >&2
    echo "target/$musl/dist/leasehold"
  else
    echo "build-dist: the $musl target is not available; linking glibc statically instead" >&2
    # --target keeps build scripts and proc-macros dynamic (the compiler loads them); only the
    # shipped binary is static. Its own directory keeps the flag from invalidating other builds.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
      cargo build --profile dist -p leasehold-cli --target "$host" "$@" >&2
    echo "target/$host/dist/leasehold"
  fi
  ;;
*)
  # Already static (musl hosts) or a platform whose libc must be linked dynamically (macOS).
  cargo build --profile dist -p leasehold-cli "$@" >&2
  echo "target/dist/leasehold"
  ;;
esac
