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
