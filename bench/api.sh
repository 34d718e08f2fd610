#!/bin/sh
# API server benchmarks (BENCHMARKS.md "API server"): a release `serve` example on a fresh data dir, driven by the
# `bench` example: creates/s with 16 concurrent clients, list of 10,000 services, watch delivery to 100 watchers,
# server memory with 10,000 services + 100,000 endpoints.
#   usage: bench/api.sh [profile-dir]     (default target/release; build: cargo build --release -p skiff-api --examples)
set -eu
BIN=${1:-target/release}/examples
DATA=$(mktemp -d)
PORT=$((20000 + $$ % 10000))
"$BIN/serve" --data-dir "$DATA" --listen "127.0.0.1:$PORT" >"$DATA/serve.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 50); do [ -f "$DATA/kubeconfig" ] && grep -q listening "$DATA/serve.log" && break; sleep 0.1; done
"$BIN/bench" --kubeconfig "$DATA/kubeconfig" --pid "$PID"
