#!/usr/bin/env python3
"""API change -> rules on every node (BENCHMARKS.md "Service proxy"), end to end on a real `skiff up` cluster.

For each sample: pollers already running in every node's network namespace open a new non-blocking TCP connection
to the future ClusterIP every millisecond; the script then POSTs a Service (fixed ClusterIP, selector matching one
ready demoapp pod) to the API server directly (no kubectl start-up in the measurement). The latency of a node is
the time from just before the POST to the first connection through the new Service that completes on that node
(controller -> EndpointSlice -> agent watch -> nft transaction -> packet DNATed and answered); the sample is the
slowest node. Resolution ~1 ms plus one round trip.

usage (root, from the workspace root): bench/service-propagation.py [samples=30] [nodes=3]
  SKIFF=path/to/skiff (default target/release/skiff if built, else target/debug/skiff)
"""
import base64, json, os, random, shutil, socket, ssl, statistics, subprocess, sys, tempfile, time, urllib.request

POLLER = r"""
import selectors, socket, sys, time, errno
ip, port = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()
print("ready", flush=True)
deadline = time.time() + 20
while time.time() < deadline:
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect((ip, port))
    except BlockingIOError:
        pass
    except OSError:
        s.close(); time.sleep(0.001); continue
    sel.register(s, selectors.EVENT_WRITE)
    for key, _ in sel.select(timeout=0.001):
        sock = key.fileobj
        sel.unregister(sock)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            print(repr(time.time()), flush=True)
            sys.exit(0)
        sock.close()
print("timeout", flush=True)
sys.exit(1)
"""


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def main():
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    skiff = os.environ.get("SKIFF") or (
        "target/release/skiff" if os.path.exists("target/release/skiff") else "target/debug/skiff")
    name = "bench-%05x" % (os.getpid() & 0xFFFFF)
    octet = random.randint(1, 250)
    svc_net = "10.%d" % (150 + octet % 50)
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        api_port = s.getsockname()[1]
    env = dict(os.environ, KUBECONFIG=os.path.join(tmp, "user-kubeconfig"))
    try:
        t = time.time()
        run(skiff, "up", "--name", name, "--nodes", str(nodes), "--data-dir", data,
            "--node-network", "172.31.%d.0/24" % octet, "--cluster-cidr", "10.%d.0.0/16" % (200 + octet % 50),
            "--service-cidr", svc_net + ".0.0/16", "--lb-pool", "172.31.%d.200-172.31.%d.250" % (octet, octet),
            "--api-port", str(api_port), "--dns-replicas", "0", "--timeout", "60", env=env)
        print("skiff up (%s, %d nodes): %.1f s" % (skiff, nodes, time.time() - t), file=sys.stderr)
        kubeconfig = os.path.join(data, "server/kubeconfig")
        kc = lambda *a: run("kubectl", "--kubeconfig", kubeconfig, *a)
        kc("create", "deployment", "backend", "--image=ikubernetes/demoapp:v1.0")
        for _ in range(300):
            if kc("get", "pods", "-l", "app=backend", "-o",
                  "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").stdout.strip() == "True":
                break
            time.sleep(0.1)
        else:
            raise SystemExit("backend pod never became Ready")

        cfg = json.loads(kc("config", "view", "--raw", "-o", "json").stdout)
        server = cfg["clusters"][0]["cluster"]["server"]
        ctx = ssl.create_default_context(
            cadata=base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]).decode())
        token = cfg["users"][0]["user"]["token"]

        worst, per_node = [], []
        for i in range(samples):
            ip = "%s.7.%d" % (svc_net, 10 + i)
            pollers = [subprocess.Popen(["ip", "netns", "exec", "skiff-%s-node-%d" % (name, n), "python3", "-c",
                                         POLLER, ip, "80"], stdout=subprocess.PIPE, text=True)
                       for n in range(1, nodes + 1)]
            for p in pollers:
                assert p.stdout.readline().strip() == "ready"
            time.sleep(0.05)  # pollers in their loop
            body = json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe-%d" % i},
                               "spec": {"clusterIP": ip, "selector": {"app": "backend"},
                                        "ports": [{"port": 80, "targetPort": 80}]}}).encode()
            req = urllib.request.Request(server + "/api/v1/namespaces/default/services", data=body, method="POST",
                                         headers={"Authorization": "Bearer " + token,
                                                  "Content-Type": "application/json"})
            t0 = time.time()
            urllib.request.urlopen(req, context=ctx).read()
            lat = []
            for p in pollers:
                line = p.stdout.readline().strip()
                p.wait()
                if line == "timeout" or not line:
                    raise SystemExit("sample %d: a node never reached %s" % (i, ip))
                lat.append((float(line) - t0) * 1000)
            per_node.extend(lat)
            worst.append(max(lat))
            print("sample %2d: every node %.1f ms (nodes: %s)" % (i, max(lat), ", ".join("%.1f" % x for x in lat)),
                  file=sys.stderr)
        q = statistics.quantiles(worst, n=100, method="inclusive")
        print("API change -> rules on every node (%d nodes, %d samples): p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, "
              "max %.1f ms; single node p50 %.1f ms" % (nodes, samples, statistics.median(worst), q[89], q[98],
                                                        max(worst), statistics.median(per_node)))
    finally:
        subprocess.run([skiff, "down", "--name", name, "--data-dir", data], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
