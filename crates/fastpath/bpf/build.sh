#!/usr/bin/env bash
# Compiles the fast path's BPF programs with Debian's clang into the objects committed beside
# them, so that `cargo build` needs no clang. Reproducible: no absolute paths in the debug info
# (BTF needs -g), and the same clang gives the same bytes. `--check` rebuilds into a temporary
# file and fails if it differs from the committed object.
set -euo pipefail
cd "$(dirname "$0")"
CLANG="${CLANG:-$(command -v clang-14 || command -v clang)}"
ARCH_INCLUDE="/usr/include/$(uname -m)-linux-gnu"
OBJECTS=(sock_lb udp_offload)
build() {
  "$CLANG" -O2 -g -target bpf -c "$2.c" -o "$1" \
    -I"$ARCH_INCLUDE" -Wall -Werror \
    -fdebug-prefix-map="$PWD"=. -fdebug-compilation-dir=.
  # Keep BTF (.BTF, .BTF.ext) that aya needs; drop the DWARF that only makes the file large.
  llvm-strip-14 --strip-debug "$1" 2>/dev/null || llvm-strip --strip-debug "$1"
}
if [ "${1:-}" = "--check" ]; then
  tmp="$(mktemp)"
  trap 'rm -f "$tmp"' EXIT
  for object in "${OBJECTS[@]}"; do
    build "$tmp" "$object"
    if ! cmp -s "$tmp" "$object.o"; then
      echo "crates/fastpath/bpf/$object.o differs from what $("$CLANG" --version | head -1) builds from $object.c: run crates/fastpath/bpf/build.sh and commit the object" >&2
      exit 1
    fi
    echo "$object.o matches $object.c"
  done
else
  for object in "${OBJECTS[@]}"; do
    build "$object.o" "$object"
  done
fi
