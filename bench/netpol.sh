#!/bin/sh
# NetworkPolicy enforcement at scale (BENCHMARKS.md "NetworkPolicy"): full sync of 1,000 policies over 5,000 pods
# in 50 namespaces into a fresh network namespace, then one change at a time (pod add/remove, policy port
# change) p50/p99, and the memory of state + model + applied ruleset. Root required (creates and removes the
# namespace). Environment as in crates/netpol/benches/scale.rs (SKIFF_BENCH_POLICIES, _PODS, _NAMESPACES,
# _CHANGES, _LOCAL_EVERY).
#   usage: bench/netpol.sh
set -eu
exec cargo bench -p skiff-netpol --bench scale
