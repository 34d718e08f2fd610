#!/bin/sh
# BGP backend (issue 13), needs root, bird2 and iperf3:
#  1. node join → its pod CIDR routable from every node and the host, on a `skiff up --backend bgp` cluster
#     (BENCH_ROUNDS joins, default 5; BGP timers as `skiff up` configures them);
#  2. pod-to-pod TCP throughput across two node namespaces, in one run: BGP vs host-gw vs VXLAN vs BGP with
#     VXLAN encapsulation (and IP-in-IP where the kernel has it). BENCH_SECONDS (default 5) per iperf3 run.
set -e
cd "$(dirname "$0")/.."
cargo build -p skiff --bin skiff
cargo test -p skiff --test bgp -- --ignored --nocapture bench_node_join 2>&1 | grep '^BENCH'
cargo test -p skiff-cni --test bgp -- --ignored --nocapture bench_pod_to_pod 2>&1 | grep '^BENCH'
