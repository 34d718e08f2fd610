#!/usr/bin/env bash
# Cluster DNS benchmark (BENCHMARKS.md "Cluster DNS"):
#  1. skiff dns (release) serving 10,000 services / 100,000 endpoints, pinned to CPU 0: memory, incremental
#     publish cost, and queries/s measured by dnsperf (pinned to CPU 1) over loopback;
#  2. nsd (Debian's C authoritative server), one server process pinned to CPU 0, serving the same records from
#     a zone file, measured with the same dnsperf query file.
# Usage: bench/dns.sh [seconds-per-run]   (needs: dnsperf, nsd, taskset; run from the workspace root)
# RUNS=n (default 1) alternates n dnsperf runs skiff / nsd, so both see the same varying load. Each run prints
# the 1-minute load average and the server's CPU time per answered query (utime+stime of the server process
# and its children over the run / queries completed), which is less sensitive to other load than queries/s.
set -euo pipefail
SECS=${1:-10}
RUNS=${RUNS:-1}
SERVICES=${SERVICES:-10000}
ENDPOINTS=${ENDPOINTS:-10}
SKIFF_PORT=${SKIFF_PORT:-15353}
NSD_PORT=${NSD_PORT:-15354}
DIR=$(mktemp -d /tmp/skiff-dns-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # nsd's forked processes may still write their state files for a moment after the main one exits.
  rm -rf "$DIR" 2>/dev/null || { sleep 1; rm -rf "$DIR"; }
}
trap cleanup EXIT

# BIN=path runs another build of the benchmark server (e.g. a copy of an older one, for a before/after).
if [ -z "${BIN:-}" ]; then
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release -p skiff-dns --features bench --bin dns_bench_server >/dev/null
  BIN=target/release/dns_bench_server
fi

"$BIN" files "$SERVICES" "$ENDPOINTS" "$DIR/cluster.local.zone" "$DIR/queries"
echo "== pure answer path (decode + answer + encode, no sockets), 1 core"
taskset -c 0 "$BIN" pure "$SERVICES" "$ENDPOINTS" "$DIR/queries"
taskset -c 0 "$BIN" serve "127.0.0.1:$SKIFF_PORT" "$SERVICES" "$ENDPOINTS" >"$DIR/skiff.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do grep -q "serving on" "$DIR/skiff.log" 2>/dev/null && break; sleep 0.1; done
echo "== skiff dns: $SERVICES services x $ENDPOINTS endpoints"
cat "$DIR/skiff.log"
echo "query mix: $(wc -l <"$DIR/queries") queries (50% ClusterIP A, 10% AAAA NODATA, 10% SRV, 10% headless A, 20% search-path NXDOMAIN)"
dig @127.0.0.1 -p "$SKIFF_PORT" +short svc-1.ns-1.svc.cluster.local

cat >"$DIR/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$NSD_PORT
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$DIR"
  database: ""
  pidfile: "$DIR/nsd.pid"
  zonelistfile: "$DIR/zone.list"
  xfrdir: "$DIR"
  xfrdfile: "$DIR/xfrd.state"
  logfile: "$DIR/nsd.log"
  do-ip6: no
  verbosity: 0
  # Debian's nsd rate-limits responses per client /24 by default (RRL); a benchmark from one address must not.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: cluster.local
  zonefile: "$DIR/cluster.local.zone"
CONF
taskset -c 0 nsd -d -c "$DIR/nsd.conf" &
PIDS+=($!)
for _ in $(seq 1 300); do dig @127.0.0.1 -p "$NSD_PORT" +short +time=1 +tries=1 svc-1.ns-1.svc.cluster.local >/dev/null 2>&1 && break; sleep 0.1; done
echo "== nsd $(nsd -v 2>&1 | head -1 | awk '{print $3}') serving the same records"
dig @127.0.0.1 -p "$NSD_PORT" +short svc-1.ns-1.svc.cluster.local

TCK=$(getconf CLK_TCK)
# utime+stime (clock ticks, all threads) of process $1 and all its descendants (nsd forks its main process,
# which forks the server).
cpu_ticks() {
  local t=0 c
  if [ -r "/proc/$1/stat" ]; then
    # Fields after "pid (comm) " (comm may contain spaces, e.g. "nsd: main"): utime and stime are 12 and 13.
    t=$(sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}')
  fi
  for c in $(pgrep -P "$1" || true); do
    t=$((t + $(cpu_ticks "$c")))
  done
  echo "$t"
}
# run_perf <port> <server pid>
run_perf() {
  local t0 t1 out done
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  t0=$(cpu_ticks "$2")
  out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p "$1" -d "$DIR/queries" -l "$SECS" -c 20 -q 200 -T 1 2>&1)
  t1=$(cpu_ticks "$2")
  echo "$out" | grep -E "Queries sent|Queries completed|Queries lost|Response codes|Queries per second|Average Latency"
  done=$(echo "$out" | awk '/Queries completed/ {print $3}')
  echo "  server CPU per query: $(awk -v t=$((t1 - t0)) -v h="$TCK" -v q="${done:-0}" \
    'BEGIN { if (q > 0) printf "%.2f us", t * 1e6 / h / q; else print "-" }') ($((t1 - t0)) ticks of 1/$TCK s)"
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}
for run in $(seq 1 "$RUNS"); do
  echo "== run $run/$RUNS: dnsperf -> skiff dns (1 core)"
  run_perf "$SKIFF_PORT" "${PIDS[0]}"
  echo "skiff dns RSS after the run: $(grep VmRSS /proc/"${PIDS[0]}"/status)"
  echo "== run $run/$RUNS: dnsperf -> nsd (1 server process, 1 core)"
  run_perf "$NSD_PORT" "${PIDS[1]}"
done
