#!/usr/bin/env bash
# The one test command: the project's policy checks (each step below names its own), then
# every test (unit, property, integration with real sockets and the real binary). CI runs
# exactly this through .ci/run, with CI=true: then a test that lacks a tool or a privilege
# fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time, printed at the end.
timings=()
step_name=""
step_start=0
finish_step() {
  if [ -n "$step_name" ]; then
    timings+=("$(printf '%6ds  %s' "$((SECONDS - step_start))" "$step_name")")
  fi
}
step() {
  finish_step
  step_name="$*"
  step_start=$SECONDS
  printf '\n==> %s\n' "$*"
}

step "rust-version inherited and satisfied"
scripts/check-rust-version.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc, warnings as errors"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "cargo deny: licenses, duplicate versions (warnings), sources, advisories if reachable"
# The RustSec advisory database is a GitHub repository; where it cannot be fetched (the
# project's machines reach package registries only), the other checks still run.
if cargo deny --locked fetch db >/dev/null 2>&1; then
  cargo deny --locked check
else
  echo "advisories NOT checked: the RustSec database (github.com/RustSec/advisory-db) cannot be fetched here"
  cargo deny --locked check licenses bans sources
fi

step "fuzz targets built (stable) and run once on their seeds"
# Fuzzing itself needs nightly and cargo-fuzz (fuzz/Cargo.toml); this keeps the targets
# compiling and their checks passing on the seed inputs.
cargo build --manifest-path fuzz/Cargo.toml --locked
for target in client_hello proxy_header; do
  if ! out="$(fuzz/target/debug/"$target" fuzz/seeds/"$target"/* 2>&1)"; then
    printf '%s\n' "$out"
    exit 1
  fi
  echo "$target: $(ls fuzz/seeds/"$target" | wc -l) seeds pass"
done

step "BPF objects match their C sources"
# crates/fastpath/bpf/sock_lb.o is committed so that `cargo build` needs no clang; rebuild it
# and fail if the bytes differ. CI installs clang-14; elsewhere a missing clang is a skip,
# which CI=true turns into a failure.
if command -v clang-14 >/dev/null 2>&1 || command -v clang >/dev/null 2>&1; then
  crates/fastpath/bpf/build.sh --check
elif [ "${CI:-}" = "true" ]; then
  echo "clang is not installed: .ci/run must install clang-14 and llvm-14" >&2
  exit 1
else
  echo "skipped: no clang, the committed BPF object is not rebuilt"
fi

step "cargo test"
cargo test --workspace --locked

step "ballast check on every file under configs/"
for f in configs/*.yaml; do
  cargo run --quiet --locked -p ballast -- check -c "$f"
done

finish_step
echo
printf '%s\n' "${timings[@]}"
echo "all tests passed"
