#!/bin/sh
# Cluster start: `skiff up` with 3 nodes until every node is Ready (and the host routes are in), then
# `skiff down`. Runs RUNS times under a unique cluster name / node network / API port so it does not disturb
# a default cluster, and prints each wall time and the median.
#   usage: bench/cluster-start.sh [path/to/skiff] [runs]      (root required)
set -eu
SKIFF=${1:-target/release/skiff}
RUNS=${2:-5}
NAME=bench-$$
DATA=$(mktemp -d)
PORT=$((20000 + $$ % 10000))
trap '"$SKIFF" down --name "$NAME" --data-dir "$DATA/d" >/dev/null 2>&1 || true; rm -rf "$DATA"' EXIT
times=""
failed=0
i=0
while [ "$i" -lt "$RUNS" ]; do
  i=$((i + 1))
  start=$(date +%s.%N)
  "$SKIFF" up --name "$NAME" --nodes 3 --data-dir "$DATA/d" --node-network 172.31.250.0/24 \
    --lb-pool 172.31.250.200-172.31.250.250 --cluster-cidr 10.249.0.0/16 --service-cidr 10.199.0.0/16 \
    --api-port "$PORT" --dns-replicas "${DNS_REPLICAS:-0}" >/dev/null 2>"$DATA/up.log" || {
    echo "run $i: FAILED: $(grep '^error' "$DATA/up.log" | head -2 | cut -c1-160)"; failed=$((failed + 1)); continue; }
  end=$(date +%s.%N)
  t=$(echo "$end - $start" | bc)
  echo "run $i: ${t}s ($(grep -o 'up in [0-9.]*s' "$DATA/up.log"))"
  times="$times $t"
  "$SKIFF" down --name "$NAME" --data-dir "$DATA/d" >/dev/null 2>&1
done
echo "$times" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "median %.3fs over %d successful runs (min %.3fs, max %.3fs)\n", a[int((NR+1)/2)], NR, a[1], a[NR]}'
echo "failed runs: $failed"
