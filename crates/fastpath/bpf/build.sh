#!/usr/bin/env bash
# Compiles the fast path's BPF programs with Debian's clang into the objects committed beside
# them, so that `cargo build` needs no clang. Reproducible: no absolute paths in the debug info
# (BTF needs -g), and the same clang gives the same bytes. `--check` rebuilds into a temporary
# file and fails if it differs from the committed object.
set -euo pipefail
cd "$(dirname "$0")"
CLANG="${CLANG:-$(command -v clang-14 || command -v clang)}"
ARCH_INCLUDE="/usr/include/$(uname -m)-linux-gnu"
build() {
  "$CLANG" -O2 -g -target bpf -c sock_lb.c -o "$1" \
    -I"$ARCH_INCLUDE" -Wall -Werror \
    -fdebug-prefix-map="$PWD"=. -fdebug-compilation-dir=.
  # Keep BTF (.BTF, .BTF.ext) that aya needs; drop the DWARF that only makes the file large.
  llvm-strip-14 --strip-debug "$1" 2>/dev/null || llvm-strip --strip-debug "$1"
}
if [ "${1:-}" = "--check" ]; then
  tmp="$(mktemp)"
  trap 'rm -f "$tmp"' EXIT
  build "$tmp"
  if ! cmp -s "$tmp" sock_lb.o; then
    echo "crates/fastpath/bpf/sock_lb.o differs from what $("$CLANG" --version | head -1) builds from sock_lb.c: run crates/fastpath/bpf/build.sh and commit the object" >&2
    exit 1
  fi
  echo "sock_lb.o matches sock_lb.c"
else
  build sock_lb.o
fi
