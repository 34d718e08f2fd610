#!/usr/bin/env bash
# The project's test command: every crate's unit, API, kernel and end-to-end tests.
# Needs root (tests create network namespaces and nftables tables with unique names) and the packages
# .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# The workspace lints (Cargo.toml) and formatting hold the invariants; they fail the run like a test does.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
# The API suites once more with etcd as the store (a real etcd started by the tests; see skiff_api::testing).
SKIFF_TEST_STORE=etcd cargo test -p skiff-api --tests -- --test-threads=2
