#!/usr/bin/env bash
# The one test command: formatting, lints, and every test (unit, property, integration with
# real sockets and the real binary). CI runs exactly this through .ci/run.
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
