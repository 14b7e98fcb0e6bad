#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs libtorch on first use, then runs every
# crate's tests (release profile: the same build `./ponder` uses, and fast tensor code).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup-libtorch.sh
# One format for every crate (rustfmt.toml); `cargo fmt --all` fixes what this reports.
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all --check || { echo "scripts/test.sh: code is not formatted; run \`cargo fmt --all\`" >&2; exit 1; }
else
    echo "scripts/test.sh: rustfmt is not installed (rustup component add rustfmt): format check skipped" >&2
fi
cargo test --release --workspace "$@"
