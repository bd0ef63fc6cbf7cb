#!/usr/bin/env bash
# Fetches the newest Go 1.26 toolchain from the Go module proxy (golang.org/toolchain, the
# module a newer go downloads for GOTOOLCHAIN) into ~/.cache/leasehold/go, once, and prints its
# bin directory. For machines whose packaged Go is older than 1.21 (Debian 12 has 1.19).
set -euo pipefail
cache=${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}
proxy=${GOPROXY:-https://proxy.golang.org}
proxy=${proxy%%,*}
case "$proxy" in direct | off | "") proxy=https://proxy.golang.org ;; esac
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "fetch-go: no Go toolchain for $(uname -m)" >&2; exit 1 ;;
esac
if [ -x "$cache/go/bin/go" ]; then
  echo "$cache/go/bin"
  exit 0
fi
version=$(curl -fsS "$proxy/golang.org/toolchain/@v/list" \
  | grep -E "^v0\.0\.1-go1\.26\.[0-9]+\.linux-$arch$" | sort -t. -k5 -n | tail -1)
[ -n "$version" ] || { echo "fetch-go: $proxy lists no Go 1.26 toolchain for linux-$arch" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-go: downloading $version from $proxy" >&2
curl -fsS -o "$tmp/go.zip" "$proxy/golang.org/toolchain/@v/$version.zip"
(cd "$tmp" && unzip -q go.zip)
mkdir -p "$cache"
rm -rf "$cache/go"
mv "$tmp/golang.org/toolchain@$version" "$cache/go"
chmod +x "$cache/go/bin/"* "$cache/go/pkg/tool/"*/* 2>/dev/null || true
echo "$cache/go/bin"
