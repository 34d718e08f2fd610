#!/usr/bin/env python3
"""100 pods per node and the memory of an agent (BENCHMARKS.md "Nodes and pods"), on a real `skiff up` cluster.

1. `skiff up` (NODES nodes, one DNS replica) under a unique name, node network, CIDRs and API port, plus the
   seed-004 demo's workload (a 2-replica ikubernetes/demoapp Deployment behind a ClusterIP Service; its own
   ClusterIP rather than the demo's fixed 10.97.72.1, so a default cluster is not disturbed).
2. Memory of every `skiff agent` process idle with the demo: VmRSS, VmHWM, RssAnon/RssFile, threads, and the
   resident bytes by mapping kind (binary, other files, heap, anonymous regions, stacks) from /proc/<pid>/smaps.
3. SEQUENTIAL (default 20) pods one at a time, each POSTed after the previous one is Ready: creation -> Ready
   without probes on an otherwise idle cluster (through the scheduler). Then PODS pods per node, POSTed one after another to the API server (no kubectl start-up in the measurement),
   each pinned to its node with a nodeSelector on kubernetes.io/hostname (so the scheduler places them and the
   count per node is exact). A watch opened before the first POST records when each pod is first seen Ready;
   per-pod latency = Ready seen - just before its POST; p50/p90/p99/max and the time until all are Ready.
4. Memory of the agents with the pods running, then again after every pod is deleted (and the deletion time).
5. `skiff down`; nothing of the cluster is left.

usage (root, from the workspace root): bench/pods-per-node.py [pods-per-node=100] [nodes=2]
  SKIFF=path/to/skiff (default target/release/skiff if built, else target/debug/skiff)
  IMAGE=busybox (default; the container runs `sleep 3600`) | ikubernetes/demoapp:v1.0 (one HTTP server per pod)
  REPEAT=n repeats step 3-4 (create, Ready, delete) n times: agent memory after each cycle shows growth vs reuse.
  AGENT_ENV="MALLOC_ARENA_MAX=2 ..." is exported to `skiff up` (and so to the agents) to compare allocator settings.
"""
import base64, json, os, random, shutil, socket, ssl, statistics, subprocess, sys, tempfile, threading, time
import http.client, urllib.parse, urllib.request


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def smaps_breakdown(pid):
    """Resident KiB by mapping kind."""
    kinds = {}
    exe = os.path.realpath("/proc/%d/exe" % pid)
    kind = None
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                if not parts[0].endswith(":") or "-" in parts[0]:
                    # A mapping header: address perms offset dev inode [path]
                    path = parts[5] if len(parts) > 5 else ""
                    if path == exe:
                        kind = "binary"
                    elif path == "[heap]":
                        kind = "heap"
                    elif path == "[stack]" or path.startswith("[stack"):
                        kind = "stack"
                    elif path.startswith("/"):
                        kind = "files"
                    elif path == "":
                        start, end = (int(x, 16) for x in parts[0].split("-"))
                        size_kib = (end - start) // 1024
                        # glibc malloc arenas: heaps mmapped 64 MiB-aligned; Rust/tokio threads: 2 MiB stacks.
                        if start % (64 << 20) == 0:
                            kind = "malloc arenas"
                        elif 2040 <= size_kib <= 2056:
                            kind = "thread stacks"
                        else:
                            kind = "anon"
                    else:
                        kind = "other"
                elif parts[0] == "Rss:" and kind:
                    kinds[kind] = kinds.get(kind, 0) + int(parts[1])
    except OSError:
        pass
    return kinds


def agent_memory(data, nodes, label):
    out = []
    for n in range(1, nodes + 1):
        try:
            with open(os.path.join(data, "run", "node-%d.pid" % n)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            out.append("node-%d: no pid file" % n)
            continue
        st = "/proc/%d/status" % pid
        b = smaps_breakdown(pid)
        sockets = 0
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                sockets += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:")
            except OSError:
                pass
        # Pss charges shared pages (the skiff binary's text, shared with the server and demoapp pods) pro rata.
        line = ("%s node-%d agent pid %d: VmRSS %.1f MB, VmHWM %.1f MB, Pss %.1f MB, RssAnon %.1f MB, "
                "RssFile %.1f MB, threads %d, sockets %d; resident by kind (MB): %s" % (
                    label, n, pid, kib(st, "VmRSS") / 1024, kib(st, "VmHWM") / 1024,
                    kib("/proc/%d/smaps_rollup" % pid, "Pss") / 1024, kib(st, "RssAnon") / 1024,
                    kib(st, "RssFile") / 1024, kib(st, "Threads"), sockets,
                    ", ".join("%s %.1f" % (k, v / 1024) for k, v in sorted(b.items(), key=lambda x: -x[1]))))
        out.append(line)
        print(line, flush=True)
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


def main():
    per_node = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    skiff = os.environ.get("SKIFF") or (
        "target/release/skiff" if os.path.exists("target/release/skiff") else "target/debug/skiff")
    image = os.environ.get("IMAGE", "busybox")
    name = "bp-%05x" % (os.getpid() & 0xFFFFF)
    octet = random.randint(1, 250)
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        api_port = s.getsockname()[1]
    env = dict(os.environ, KUBECONFIG=os.path.join(tmp, "user-kubeconfig"))
    for kv in os.environ.get("AGENT_ENV", "").split():
        k, _, v = kv.partition("=")
        env[k] = v
    print("skiff %s (%s), image %s, %d nodes x %d pods, AGENT_ENV=%r" % (
        skiff, os.path.realpath(skiff), image, nodes, per_node, os.environ.get("AGENT_ENV", "")), flush=True)
    try:
        t = time.time()
        run(skiff, "up", "--name", name, "--nodes", str(nodes), "--data-dir", data,
            "--node-network", "172.31.%d.0/24" % octet, "--cluster-cidr", "10.%d.0.0/16" % (200 + octet % 50),
            "--service-cidr", "10.%d.0.0/16" % (150 + octet % 50),
            "--lb-pool", "172.31.%d.200-172.31.%d.250" % (octet, octet),
            "--api-port", str(api_port), "--dns-upstream", "none", "--timeout", "90", env=env)
        print("skiff up: %.1f s" % (time.time() - t), flush=True)
        kubeconfig = os.path.join(data, "server/kubeconfig")
        kc = lambda *a: run("kubectl", "--kubeconfig", kubeconfig, *a)

        # Node capacity as the agents report it.
        for n in range(1, nodes + 1):
            cap = kc("get", "node", "node-%d" % n, "-o", "jsonpath={.status.capacity.pods} {.spec.podCIDR}").stdout
            print("node-%d: capacity.pods %s, podCIDR %s" % (n, *cap.split()), flush=True)

        # The demo's workload.
        kc("create", "deployment", "demoapp", "--image=ikubernetes/demoapp:v1.0", "--replicas=2")
        kc("expose", "deployment", "demoapp", "--port=80")
        for _ in range(600):
            ready = kc("get", "pods", "-A", "-o",
                       "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").stdout.split()
            if len(ready) == 3 and all(r == "True" for r in ready):
                break
            time.sleep(0.1)
        else:
            raise SystemExit("demo / DNS pods never became Ready")
        time.sleep(10)  # let start-up allocations settle
        print("load average (idle): %s" % loadavg(), flush=True)
        agent_memory(data, nodes, "idle with demo:")

        cfg = json.loads(kc("config", "view", "--raw", "-o", "json").stdout)
        server = cfg["clusters"][0]["cluster"]["server"]
        ctx = ssl.create_default_context(
            cadata=base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]).decode())
        token = cfg["users"][0]["user"]["token"]
        hdrs = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

        # One kept-alive connection for the POSTs, as a client like kubectl or a controller would use: the
        # creation rate is then the API server's, not TLS handshakes'.
        host, port = urllib.parse.urlsplit(server).hostname, urllib.parse.urlsplit(server).port
        conn = [None]

        def api(path, method="GET", body=None):
            for attempt in range(2):
                if conn[0] is None:
                    conn[0] = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
                try:
                    conn[0].request(method, path, body=json.dumps(body).encode() if body is not None else None,
                                    headers=hdrs)
                    resp = conn[0].getresponse()
                    data = resp.read()
                    if resp.status >= 300:
                        raise SystemExit("%s %s: %d %s" % (method, path, resp.status, data[:300]))
                    return json.loads(data)
                except (http.client.HTTPException, OSError):
                    conn[0].close()
                    conn[0] = None
                    if attempt:
                        raise

        container = {"name": "c", "image": image}
        if image.startswith("busybox"):
            container["command"] = ["sleep", "3600"]

        # One pod at a time (the next POST after the previous pod is Ready): creation -> Ready on an idle
        # node, through the scheduler (no nodeName preset), without probes.
        seq = int(os.environ.get("SEQUENTIAL", "20"))
        if seq:
            rv = api("/api/v1/namespaces/default/pods?labelSelector=bench%3Dseq")["metadata"]["resourceVersion"]
            seen = {}
            cond = threading.Condition()

            def watch_seq():
                req = urllib.request.Request(
                    server + "/api/v1/namespaces/default/pods?watch=true&labelSelector=bench%3Dseq"
                    "&resourceVersion=" + rv, headers=hdrs)
                with urllib.request.urlopen(req, context=ctx, timeout=600) as resp:
                    for line in resp:
                        now = time.time()
                        pod = json.loads(line)["object"]
                        conds = (pod.get("status") or {}).get("conditions") or []
                        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                            with cond:
                                seen.setdefault(pod["metadata"]["name"], now)
                                cond.notify_all()

            threading.Thread(target=watch_seq, daemon=True).start()
            time.sleep(0.3)
            lat = []
            load_before = loadavg()
            for k in range(seq):
                nm = "seq-%03d" % k
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": nm, "labels": {"bench": "seq"}},
                        "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}}
                t0 = time.time()
                api("/api/v1/namespaces/default/pods", "POST", body)
                with cond:
                    if not cond.wait_for(lambda: nm in seen, timeout=30):
                        raise SystemExit("%s not Ready after 30 s" % nm)
                lat.append((seen[nm] - t0) * 1000)
            print("one pod at a time, POST -> Ready seen (ms, %d pods): p50 %.0f, p90 %.0f, p99 %.0f, max %.0f; "
                  "load average %s -> %s" % (seq, statistics.median(lat), pct(lat, 90), pct(lat, 99), max(lat),
                                             load_before, loadavg()), flush=True)
            kc("delete", "pods", "-l", "bench=seq", "--wait=false")
            for _ in range(300):
                if not kc("get", "pods", "-l", "bench=seq", "-o", "name").stdout.strip():
                    break
                time.sleep(0.2)
            time.sleep(6)  # the agents' clean-up tick after the churn

        repeat = int(os.environ.get("REPEAT", "1"))
        for cycle in range(1, repeat + 1):
            if repeat > 1:
                print("--- cycle %d of %d" % (cycle, repeat), flush=True)
            rv = api("/api/v1/namespaces/default/pods?labelSelector=bench%3Dpods")["metadata"]["resourceVersion"]
            ready_at, node_of, watch_err = {}, {}, []
            total = per_node * nodes
            done = threading.Event()

            def watch():
                try:
                    req = urllib.request.Request(
                        server + "/api/v1/namespaces/default/pods?watch=true&labelSelector=bench%3Dpods"
                        "&allowWatchBookmarks=false&resourceVersion=" + rv, headers=hdrs)
                    with urllib.request.urlopen(req, context=ctx, timeout=600) as resp:
                        for line in resp:
                            now = time.time()
                            ev = json.loads(line)
                            pod = ev["object"]
                            nm = pod["metadata"]["name"]
                            conds = (pod.get("status") or {}).get("conditions") or []
                            if nm not in ready_at and any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                                ready_at[nm] = now
                                node_of[nm] = pod["spec"].get("nodeName")
                                if len(ready_at) == total:
                                    done.set()
                                    return
                except Exception as e:  # noqa: BLE001 - reported below
                    watch_err.append(repr(e))
                    done.set()

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            time.sleep(0.3)

            posted = {}
            load_before = loadavg()
            t_first = time.time()
            for k in range(per_node):
                for n in range(1, nodes + 1):
                    nm = "bench-n%d-%03d" % (n, k)
                    body = {"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": nm, "labels": {"bench": "pods"}},
                            "spec": {"nodeSelector": {"kubernetes.io/hostname": "node-%d" % n},
                                     "terminationGracePeriodSeconds": 5, "containers": [container]}}
                    posted[nm] = time.time()
                    api("/api/v1/namespaces/default/pods", "POST", body)
            t_posted = time.time()
            done.wait(timeout=600)
            t_all = max(ready_at.values()) if ready_at else float("nan")
            load_after = loadavg()
            if watch_err:
                print("watch failed: %s" % watch_err, flush=True)
            if len(ready_at) < total:
                raise SystemExit("only %d of %d pods Ready" % (len(ready_at), total))
            lat = [(ready_at[nm] - posted[nm]) * 1000 for nm in posted]
            print("created %d pods in %.2f s; all Ready %.2f s after the first POST; load average %s -> %s" % (
                total, t_posted - t_first, t_all - t_first, load_before, load_after), flush=True)
            print("pod POST -> Ready seen (ms, %d pods): p50 %.0f, p90 %.0f, p99 %.0f, max %.0f" % (
                len(lat), statistics.median(lat), pct(lat, 90), pct(lat, 99), max(lat)), flush=True)
            per = {}
            for nm, n in node_of.items():
                per[n] = per.get(n, 0) + 1
            print("pods Ready per node: %s" % ", ".join("%s %d" % kv for kv in sorted(per.items())), flush=True)

            time.sleep(5)
            print("load average (with pods): %s" % loadavg(), flush=True)
            agent_memory(data, nodes, "with %d pods/node:" % per_node)

            t = time.time()
            kc("delete", "pods", "-l", "bench=pods", "--wait=false")
            for _ in range(3000):
                if not kc("get", "pods", "-l", "bench=pods", "-o", "name").stdout.strip():
                    break
                time.sleep(0.2)
            else:
                raise SystemExit("pods not deleted after 600 s")
            print("deleted %d pods in %.1f s" % (total, time.time() - t), flush=True)
            time.sleep(5)
            agent_memory(data, nodes, "after deleting them:")
    finally:
        subprocess.run([skiff, "down", "--name", name, "--data-dir", data], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        left = [l for l in run("ip", "netns", "list").stdout.splitlines() if name in l]
        if left:
            print("LEFT BEHIND: %s" % left, flush=True)


if __name__ == "__main__":
    main()
