#!/bin/sh
# API server benchmarks (BENCHMARKS.md "API server"), the embedded redb store and etcd side by side in one run.
# A release `serve` example (the same `skiff_api::serve` the binary runs) driven by the `bench` example:
# creates/s with 16 concurrent clients, list of 10,000 services, watch delivery to 100 watchers, server memory.
#   1. redb: one server on a fresh data dir.
#   2. etcd: a 3-member etcd cluster (Debian's etcd, data on disk, loopback) and two API servers on it; creates and
#      lists go to server A, the 100 watchers watch through server B.
#   3. leader failover: two `skiff server --leader-elect` processes (upstream's 15 s / 10 s / 2 s) on that etcd;
#      the Lease holder is killed with SIGKILL; time until the other one holds the Lease.
#   usage: bench/api.sh [profile-dir]   (build: cargo build --release -p skiff-api --examples; and the skiff
#          binary for step 3: SKIFF=target/debug/skiff by default, or SKIFF=... to choose)
set -eu
BIN=${1:-target/release}/examples
SKIFF=${SKIFF:-target/debug/skiff}
ETCD=${ETCD:-/usr/bin/etcd}
# On disk (not tmpfs): etcd's fsync per commit is part of what is measured.
WORK=$(mktemp -d /var/tmp/skiff-bench-api.XXXXXX)
PIDS=""
cleanup() {
  for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
BASE=$((20000 + ($$ % 400) * 50))
LAST=0

serve() { # dir port [serve flags...]
  dir=$1 port=$2
  shift 2
  "$BIN/serve" --data-dir "$dir" --listen "127.0.0.1:$port" "$@" >"$dir.log" 2>&1 &
  LAST=$!
  PIDS="$PIDS $LAST"
  for _ in $(seq 200); do grep -q listening "$dir.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "server $dir did not start:"; cat "$dir.log"; exit 1
}

echo "== 1. redb (embedded store) =="
serve "$WORK/redb" "$BASE"
"$BIN/bench" --kubeconfig "$WORK/redb/kubeconfig" --pid "$LAST"
kill "$LAST"

echo "== 2. etcd: 3 members, 2 API servers (writes via A, watches via B) =="
CLUSTER="" ENDPOINTS=""
for i in 0 1 2; do
  CLUSTER="${CLUSTER:+$CLUSTER,}m$i=http://127.0.0.1:$((BASE + 10 + i))"
  ENDPOINTS="${ENDPOINTS:+$ENDPOINTS,}http://127.0.0.1:$((BASE + 20 + i))"
done
for i in 0 1 2; do
  "$ETCD" --name "m$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((BASE + 20 + i))" --advertise-client-urls "http://127.0.0.1:$((BASE + 20 + i))" \
    --listen-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" \
    --initial-cluster "$CLUSTER" --initial-cluster-token "bench-$$" --initial-cluster-state new \
    --logger zap --log-level warn >"$WORK/etcd$i.log" 2>&1 &
  PIDS="$PIDS $!"
done
for i in 0 1 2; do
  for _ in $(seq 200); do curl -s "http://127.0.0.1:$((BASE + 20 + i))/health" | grep -q '"health":"true"' && break; sleep 0.1; done
done
serve "$WORK/a" $((BASE + 1)) --etcd-servers "$ENDPOINTS"
A=$LAST
serve "$WORK/b" $((BASE + 2)) --etcd-servers "$ENDPOINTS"
"$BIN/bench" --kubeconfig "$WORK/a/kubeconfig" --watch-kubeconfig "$WORK/b/kubeconfig" --pid "$A"
kill "$A" "$LAST"

echo "== 3. leader failover (skiff server --leader-elect, lease 15 s, renew deadline 10 s, retry 2 s) =="
if [ ! -x "$SKIFF" ]; then echo "no $SKIFF: skipped (cargo build -p skiff --bin skiff)"; exit 0; fi
TOKEN=bench-failover-token
LEASE=apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager
for i in 0 1; do
  "$SKIFF" server --data-dir "$WORK/s$i" --listen "127.0.0.1:$((BASE + 30 + i))" --etcd-servers "$ENDPOINTS" \
    --etcd-prefix /failover --token "$TOKEN" --leader-elect --leader-elect-identity "server-$i" >"$WORK/s$i.log" 2>&1 &
  eval "S$i=$!"
  PIDS="$PIDS $!"
done
holder() { # port
  curl -sk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$1/$LEASE" |
    sed -n 's/.*"holderIdentity": *"\([^"]*\)".*/\1/p'
}
H=""
for _ in $(seq 600); do H=$(holder $((BASE + 30))); [ -n "$H" ] && break; sleep 0.1; done
[ -n "$H" ] || { echo "no leader"; cat "$WORK/s0.log"; exit 1; }
# Let a few renewals pass, as in a running cluster.
sleep 5
case "$H" in server-0) DEAD=$S0 ALIVE=$((BASE + 31)) ;; *) DEAD=$S1 ALIVE=$((BASE + 30)) ;; esac
T0=$(date +%s.%N)
kill -9 "$DEAD"
NEW=""
for _ in $(seq 1200); do NEW=$(holder "$ALIVE"); [ -n "$NEW" ] && [ "$NEW" != "$H" ] && break; sleep 0.05; done
T1=$(date +%s.%N)
echo "leader failover: $H killed, $NEW holds the lease after $(echo "$T1 - $T0" | bc) s (goal <= 17 s: lease duration + 2 s)"
