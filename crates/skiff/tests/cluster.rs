//! End-to-end: `skiff up` builds a real embedded cluster (host bridge, node namespaces, server and agent
//! processes) under unique names, and `skiff down` removes every trace of it. A Drop guard runs
//! `skiff down` even when an assertion fails midway.
//!
//! Also the harness later end-to-end tests build on: kubectl with the cluster's kubeconfig, and commands
//! inside a node's or a pod's network namespace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// A cluster under test: unique name, bridge, node network, pod/service ranges, API port and data dir.
pub struct TestCluster {
    pub name: String,
    pub data_dir: PathBuf,
    pub nodes: u32,
    pub octet: u8,
    pub api_port: u16,
    /// The demo manifests pin ClusterIPs in 10.97.0.0/16; other tests use a range of their own.
    pub service_cidr: Option<String>,
    _tmp: tempfile::TempDir,
}

fn unique() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(2654435761) ^ nanos
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl TestCluster {
    pub fn new(nodes: u32) -> TestCluster {
        let u = unique();
        let tmp = tempfile::tempdir().expect("temp dir");
        TestCluster {
            name: format!("e2e-{:06x}", u & 0xff_ffff),
            data_dir: tmp.path().join("data"),
            nodes,
            // 172.31.<octet>.0/24 and matching pod/service ranges: distinct from the default cluster's and,
            // with high probability, from concurrently running tests'.
            octet: (u % 250) as u8 + 1,
            api_port: free_port(),
            service_cidr: None,
            _tmp: tmp,
        }
    }

    pub fn node_network(&self) -> String {
        format!("172.31.{}.0/24", self.octet)
    }
    pub fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", 200 + self.octet % 50)
    }
    pub fn service_cidr(&self) -> String {
        self.service_cidr
            .clone()
            .unwrap_or_else(|| format!("10.{}.0.0/16", 150 + self.octet % 50))
    }
    pub fn node_ip(&self, i: u32) -> String {
        format!("172.31.{}.{}", self.octet, 1 + i)
    }
    pub fn node_netns(&self, i: u32) -> String {
        format!("skiff-{}-node-{i}", self.name)
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("server/kubeconfig")
    }
    /// What `--update-kubeconfig` writes to: $KUBECONFIG of `skiff up` / `skiff down`, kept out of $HOME.
    pub fn user_kubeconfig(&self) -> PathBuf {
        self._tmp.path().join("user-kubeconfig")
    }

    pub fn up(&self, extra: &[&str]) -> Output {
        let mut cmd = Command::new(SKIFF);
        cmd.args([
            "up",
            "--name",
            &self.name,
            "--nodes",
            &self.nodes.to_string(),
        ])
        .args(["--data-dir", &self.data_dir.display().to_string()])
        .args(["--node-network", &self.node_network()])
        .args([
            "--cluster-cidr",
            &self.cluster_cidr(),
            "--service-cidr",
            &self.service_cidr(),
        ])
        .args([
            "--lb-pool",
            &format!("172.31.{0}.200-172.31.{0}.250", self.octet),
        ])
        .args(["--api-port", &self.api_port.to_string(), "--timeout", "60"])
        .args(extra)
        // --update-kubeconfig must never touch the real ~/.kube/config.
        .env("KUBECONFIG", self.user_kubeconfig());
        cmd.output().expect("running skiff up")
    }

    pub fn down(&self) -> Output {
        Command::new(SKIFF)
            .args([
                "down",
                "--name",
                &self.name,
                "--data-dir",
                &self.data_dir.display().to_string(),
            ])
            .env("KUBECONFIG", self.user_kubeconfig())
            .output()
            .expect("running skiff down")
    }

    /// `kubectl --kubeconfig <cluster> args...`
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// A command inside node `i`'s network namespace.
    pub fn in_node(&self, i: u32, cmd: &[&str]) -> Output {
        in_netns(&self.node_netns(i), cmd)
    }

    /// The network namespace of pod `namespace/name`, from the record its node's agent keeps
    /// (`<node dir>/state/pods/<uid>/state.json`, field `netns`).
    pub fn pod_netns(&self, namespace: &str, name: &str) -> Option<String> {
        let out = self.kubectl(&[
            "get",
            "pod",
            "-n",
            namespace,
            name,
            "-o",
            "jsonpath={.metadata.uid} {.spec.nodeName}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (uid, node) = text.split_once(' ')?;
        let index = node.strip_prefix("node-")?;
        let record = self
            .data_dir
            .join(format!("nodes/{index}/state/pods/{uid}/state.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(record).ok()?).ok()?;
        v["netns"].as_str().map(str::to_string)
    }

    /// A command inside pod `namespace/name`'s network namespace.
    pub fn in_pod(&self, namespace: &str, name: &str, cmd: &[&str]) -> Output {
        let netns = self
            .pod_netns(namespace, name)
            .unwrap_or_else(|| panic!("no network namespace recorded for pod {namespace}/{name}"));
        in_netns(&netns, cmd)
    }

    /// Everything of this cluster still present in the kernel or the process table.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = format!("skiff-{}-", self.name);
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&prefix) {
                    left.push(format!("netns {n}"));
                }
            }
        }
        let links = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip link");
        let routes = Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .expect("ip route");
        let net = format!("172.31.{}.", self.octet);
        for l in String::from_utf8_lossy(&routes.stdout).lines() {
            if l.contains(&net) {
                left.push(format!("route {l}"));
            }
        }
        let bridge = bridge_of(&self.name);
        for l in String::from_utf8_lossy(&links.stdout).lines() {
            if l.contains(&format!(" {bridge}:")) || l.contains(&format!("master {bridge} ")) {
                left.push(format!("link {l}"));
            }
        }
        let dd = self.data_dir.display().to_string();
        for pid in processes_mentioning(&dd) {
            left.push(format!("process {pid}"));
        }
        if self.data_dir.exists() {
            left.push(format!("data dir {dd}"));
        }
        left
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let out = self.down();
        if !out.status.success() {
            eprintln!("cleanup `skiff down` failed: {}", text(&out));
        }
    }
}

/// The bridge name `skiff up` derives (layout::bridge_name), recomputed from what `ip` shows: the link whose
/// address is the cluster's `.1`. Kept independent of the crate so the test checks what users see.
fn bridge_of(name: &str) -> String {
    let plain = format!("sk-{name}");
    if plain.len() <= 15 {
        return plain;
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("sk-{:08x}", h as u32)
}

pub fn in_netns(netns: &str, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(cmd)
        .output()
        .expect("ip netns exec")
}

/// Pids whose command line mentions `needle` (our data dir is in every server/agent command line).
fn processes_mentioning(needle: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.insert(pid);
        }
    }
    out
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn pid_file(dir: &Path, name: &str) -> u32 {
    std::fs::read_to_string(dir.join("run").join(format!("{name}.pid")))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn up_builds_a_ready_cluster_and_down_removes_every_trace() {
    let c = TestCluster::new(2);
    let out = c.up(&["--update-kubeconfig"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("export KUBECONFIG={}", c.kubeconfig().display())),
        "{stdout}"
    );

    // What a user sees: both nodes Ready in kubectl, with their node IPs.
    let nodes = c.kubectl(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let listing = String::from_utf8_lossy(&nodes.stdout).to_string();
    assert!(nodes.status.success(), "{}", text(&nodes));
    for i in 1..=2 {
        let line = listing
            .lines()
            .find(|l| l.starts_with(&format!("node-{i} ")))
            .unwrap_or_else(|| panic!("node-{i} missing:\n{listing}"));
        assert!(line.contains(" Ready "), "{line}");
        assert!(line.contains(&c.node_ip(i)), "{line}");
    }

    // --update-kubeconfig: the user's kubeconfig gets context skiff-<name> as the current one.
    let ctx = Command::new("kubectl")
        .args(["config", "current-context"])
        .env("KUBECONFIG", c.user_kubeconfig())
        .output()
        .expect("kubectl config");
    assert_eq!(
        String::from_utf8_lossy(&ctx.stdout).trim(),
        format!("skiff-{}", c.name),
        "{}\n{}",
        text(&ctx),
        std::fs::read_to_string(c.user_kubeconfig()).unwrap_or_default()
    );
    let via_user = Command::new("kubectl")
        .args(["get", "nodes", "--no-headers"])
        .env("KUBECONFIG", c.user_kubeconfig())
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&via_user.stdout).lines().count(),
        2,
        "{}",
        text(&via_user)
    );

    // The host reaches the nodes over the bridge, and node 1 reaches node 2 and the host.
    let ping = Command::new("busybox")
        .args(["ping", "-c1", "-W2", &c.node_ip(1)])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "host -> node-1: {}", text(&ping));
    let ping = c.in_node(1, &["busybox", "ping", "-c1", "-W2", &c.node_ip(2)]);
    assert!(ping.status.success(), "node-1 -> node-2: {}", text(&ping));

    // A second `skiff up` of a running cluster refuses and leaves it alone.
    let again = c.up(&[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is already running"),
        "{}",
        text(&again)
    );

    // `skiff status` reports the server and both nodes Ready.
    let st = Command::new(SKIFF)
        .args([
            "status",
            "--name",
            &c.name,
            "--data-dir",
            &c.data_dir.display().to_string(),
        ])
        .output()
        .expect("skiff status");
    let st_out = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st.status.success(), "{}", text(&st));
    assert!(st_out.starts_with("server: running"), "{st_out}");
    assert_eq!(
        st_out
            .lines()
            .filter(|l| l.starts_with("node-") && l.contains(" Ready "))
            .count(),
        2,
        "{st_out}"
    );

    let before = c.leftovers();
    assert!(before.iter().any(|l| l.starts_with("netns")), "{before:?}");
    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
    let user_kc = std::fs::read_to_string(c.user_kubeconfig()).unwrap_or_default();
    assert!(!user_kc.contains(&format!("skiff-{}", c.name)), "{user_kc}");
    // Idempotent.
    let again = c.down();
    assert!(
        again.status.success(),
        "second skiff down: {}",
        text(&again)
    );
}

#[test]
fn down_and_up_clean_up_after_a_crash() {
    let c = TestCluster::new(1);
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    // Crash: SIGKILL the server and the agent; namespaces, bridge and routes stay behind.
    for name in ["server", "node-1"] {
        let pid = pid_file(&c.data_dir, name);
        assert!(pid > 1, "{name} pid file");
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(wait_until(Duration::from_secs(5), || processes_mentioning(
        &c.data_dir.display().to_string()
    )
    .is_empty()));
    assert!(!c.leftovers().is_empty());

    // A new `skiff up` of the same name removes the leftovers first and comes up again.
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(
        out.status.success(),
        "second skiff up failed: {}",
        text(&out)
    );
    let nodes = c.kubectl(&["get", "nodes", "--no-headers"]);
    assert!(
        String::from_utf8_lossy(&nodes.stdout).contains(" Ready "),
        "{}",
        text(&nodes)
    );

    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "3", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `ServerName: <pod>` from a demoapp answer.
fn server_name(answer: &str) -> Option<String> {
    let rest = answer.split("ServerName: ").nth(1)?;
    Some(rest.split(',').next()?.to_string())
}

/// The seed-004 tutorial, as its reader does it from the master node: `skiff up --demo`, then curl the
/// ClusterIP (answers from both pods), the NodePort on a node IP, the LoadBalancer address and the external IP.
#[test]
fn seed_004_demo_answers_on_every_service_type_from_the_host() {
    let mut c = TestCluster::new(3);
    c.service_cidr = Some("10.97.0.0/16".to_string());
    let out = c.up(&["--demo"]);
    assert!(
        out.status.success(),
        "skiff up --demo failed: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("curl 10.97.72.1"), "{stdout}");

    let pods = c.kubectl(&["get", "pods", "-l", "app=demoapp", "--no-headers"]);
    let pod_names: BTreeSet<String> = String::from_utf8_lossy(&pods.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(pod_names.len(), 2, "{}", text(&pods));

    // Inside each pod's network namespace, eth0 carries the pod IP kubectl shows.
    for pod in &pod_names {
        let ip = c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
        let ip = String::from_utf8_lossy(&ip.stdout).to_string();
        let addrs = c.in_pod(
            "default",
            pod,
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        let addrs = String::from_utf8_lossy(&addrs.stdout).to_string();
        assert!(
            !ip.is_empty() && addrs.contains(&format!("inet {ip}/")),
            "{pod}: podIP {ip:?}, eth0: {addrs}"
        );
    }

    // ClusterIP: every answer comes from one of the demo pods, and both pods answer.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let answer = curl("http://10.97.72.1/");
        assert!(
            answer.starts_with("iKubernetes demoapp v1.0 !! ClientIP: "),
            "{answer:?}"
        );
        seen.insert(server_name(&answer).unwrap_or_default());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, pod_names);

    let node2 = c.node_ip(2);
    let answer = curl(&format!("http://{node2}:31399/"));
    assert!(
        pod_names.contains(&server_name(&answer).unwrap_or_default()),
        "NodePort: {answer:?}"
    );

    let lb = c.kubectl(&[
        "get",
        "svc",
        "demoapp-loadbalancer-svc",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[0].ip}",
    ]);
    let lb_ip = String::from_utf8_lossy(&lb.stdout).to_string();
    assert!(
        lb_ip.starts_with(&format!("172.31.{}.2", c.octet)),
        "LoadBalancer ingress {lb_ip:?}"
    );
    let answer = curl(&format!("http://{lb_ip}/"));
    assert!(
        pod_names.contains(&server_name(&answer).unwrap_or_default()),
        "LoadBalancer: {answer:?}"
    );

    let answer = curl("http://172.30.0.100/");
    assert!(
        pod_names.contains(&server_name(&answer).unwrap_or_default()),
        "externalIPs: {answer:?}"
    );

    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
