#!/bin/sh
# Pod-to-pod TCP throughput across two nodes: VXLAN overlay vs host-gw (same path, no encapsulation).
# Two node network namespaces joined by a veth pair, one pod each wired by skiff-cni, iperf3 between the pods.
# Needs root. BENCH_SECONDS (default 5) sets the iperf3 duration per measurement.
set -e
cd "$(dirname "$0")/.."
cargo test -p skiff-cni --test overlay -- --ignored --nocapture bench_pod_to_pod_throughput 2>&1 | grep '^BENCH'
