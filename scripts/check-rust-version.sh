#!/usr/bin/env bash
# The minimum supported Rust version (MSRV), as far as one toolchain can check it.
#
# The workspace's Cargo.toml declares `rust-version`. We have a single toolchain (the one
# rust-toolchain.toml pins) and no way to fetch an older one, so building with the MSRV itself
# (`cargo +1.88 check`) is not possible here. What this script checks instead:
#   1. every workspace crate inherits the field (`rust-version.workspace = true` in its
#      manifest) and `cargo metadata` reports the workspace's value for it;
#   2. the toolchain in use is at least that version;
#   3. no dependency in Cargo.lock (those built on Linux, dev-dependencies included) declares a
#      `rust-version` newer than ours: `cargo update` raising one is caught here.
# The standard library items our own code uses are checked against it by clippy's
# `incompatible_msrv` lint, which reads the inherited field, in the clippy step of
# scripts/test.sh. Language features newer than the MSRV are not checked by anything.
set -euo pipefail
cd "$(dirname "$0")/.."

metadata="$(mktemp)"
trap 'rm -f "$metadata"' EXIT
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu >"$metadata"
rustc_version="$(rustc --version | awk '{print $2}')"

python3 - "$rustc_version" "$metadata" <<'EOF'
import json, re, sys, tomllib

def parse(v):
    return tuple(int(x) for x in re.match(r"\d+(\.\d+){0,2}", v).group(0).split("."))

with open("Cargo.toml", "rb") as f:
    want = tomllib.load(f)["workspace"]["package"]["rust-version"]
meta = json.load(open(sys.argv[2]))
members = set(meta["workspace_members"])
resolved = {n["id"] for n in meta["resolve"]["nodes"]}
errors = []

for p in meta["packages"]:
    if p["id"] not in members:
        continue
    with open(p["manifest_path"], "rb") as f:
        field = tomllib.load(f)["package"].get("rust-version")
    if field != {"workspace": True}:
        errors.append(f"{p['name']}: Cargo.toml must say `rust-version.workspace = true`")
    if p.get("rust_version") != want:
        errors.append(f"{p['name']}: rust-version is {p.get('rust_version')}, workspace says {want}")

rustc = sys.argv[1]
if parse(rustc) < parse(want):
    errors.append(f"the toolchain is rustc {rustc}, older than the workspace's rust-version {want}")

for p in meta["packages"]:
    if p["id"] in resolved and p["id"] not in members and p.get("rust_version"):
        if parse(p["rust_version"]) > parse(want):
            errors.append(f"dependency {p['name']} {p['version']} needs Rust {p['rust_version']}, "
                          f"newer than the workspace's rust-version {want}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"rust-version {want}: inherited by {len(members)} crates, "
      f"rustc {rustc} satisfies it, no locked dependency needs more")
EOF
