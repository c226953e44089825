#!/usr/bin/env bash
# The one test command: formatting, lints, and every test (unit, property, integration with
# real sockets and the real binary). CI runs exactly this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

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

echo
echo "all tests passed"
