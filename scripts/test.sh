#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs libtorch on first use, then runs every
# crate's tests (release profile: the same build `./ponder` uses, and fast tensor code).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup-libtorch.sh
cargo test --release --workspace "$@"
