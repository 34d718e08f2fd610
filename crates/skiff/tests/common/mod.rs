//! The end-to-end harness: a `TestCluster` built by `skiff up` under unique names (a Drop guard runs
//! `skiff down` even when an assertion fails midway), kubectl with the cluster's kubeconfig, and commands
//! inside a node's or a pod's network namespace.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

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

pub fn unique() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(2654435761) ^ nanos
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The node-network octet of the next cluster this process starts (see [`TestCluster::new`]).
fn next_octet() -> u8 {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One seed per process, so that this process's clusters differ from each other.
    let seed = std::process::id().wrapping_mul(2654435761) % 250;
    ((seed + n.wrapping_mul(53)) % 250) as u8 + 1
}

impl TestCluster {
    pub fn new(nodes: u32) -> TestCluster {
        let u = unique();
        let tmp = tempfile::tempdir().expect("temp dir");
        TestCluster {
            name: format!("e2e-{:06x}", u & 0xff_ffff),
            data_dir: tmp.path().join("data"),
            nodes,
            // 172.31.<octet>.0/24 and matching pod/service ranges: distinct from the default cluster's, and
            // from the other clusters of this test binary (which run concurrently): a per-process counter
            // steps the octet by 53, so neither the octet nor the pod/service ranges (octet mod 50) repeat.
            octet: next_octet(),
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
        // Tests send no traffic off this machine: cluster DNS must not forward to the host's resolvers.
        .args(["--dns-upstream", "none"])
        .args(extra)
        // SKIFF_E2E_BACKEND=bgp (or host-gw, vxlan) runs every suite on that backend unless a test picks one.
        .args(backend_from_env(extra))
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

    /// `kubectl --kubeconfig <cluster> args...` with `input` on its stdin (`apply -f -` of a manifest).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        child.wait_with_output().expect("kubectl output")
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

/// `--backend <SKIFF_E2E_BACKEND>` unless the test's own arguments choose a backend.
fn backend_from_env(extra: &[&str]) -> Vec<String> {
    match std::env::var("SKIFF_E2E_BACKEND") {
        Ok(b) if !b.is_empty() && !extra.iter().any(|a| *a == "--overlay" || *a == "--backend") => {
            vec!["--backend".into(), b]
        }
        _ => Vec::new(),
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
pub fn bridge_of(name: &str) -> String {
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
pub fn processes_mentioning(needle: &str) -> BTreeSet<u32> {
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

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

pub fn pid_file(dir: &Path, name: &str) -> u32 {
    std::fs::read_to_string(dir.join("run").join(format!("{name}.pid")))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Tests that apply manifests with fixed ClusterIPs / external IPs (the seed demos) take this lock: two such
/// clusters at once would both route the same addresses from the host.
pub fn fixed_addresses_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/lock/skiff-e2e-fixed-addresses.lock")
        .expect("opening the e2e lock file");
    // Blocks until the other test releases it (its guard is dropped).
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the e2e lock file")
}

/// `kubectl create -f` of an inline manifest (written next to the cluster's data dir).
pub fn create(c: &TestCluster, name: &str, yaml: &str) {
    let path = c.data_dir.with_file_name(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("writing manifest");
    let out = c.kubectl(&["create", "-f", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "kubectl create {name}: {}",
        text(&out)
    );
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn jsonpath(c: &TestCluster, kind: &str, ns: &str, name: &str, path: &str) -> String {
    stdout(&c.kubectl(&[
        "get",
        kind,
        "-n",
        ns,
        name,
        "-o",
        &format!("jsonpath={path}"),
    ]))
}

/// Waits until pod `ns/name` is Ready and returns its IP.
pub fn wait_ready(c: &TestCluster, ns: &str, name: &str) -> String {
    let ok = wait_until(Duration::from_secs(30), || {
        jsonpath(
            c,
            "pod",
            ns,
            name,
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
    });
    let pod = c.kubectl(&["get", "pod", "-n", ns, name, "-o", "yaml"]);
    assert!(ok, "pod {ns}/{name} not Ready: {}", text(&pod));
    jsonpath(c, "pod", ns, name, "{.status.podIP}")
}

/// A demoapp pod pinned to `node`, labelled `app`.
pub fn demoapp_pod(ns: &str, name: &str, node: &str, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {app}
spec:
  nodeName: {node}
  containers:
  - name: demoapp
    image: ikubernetes/demoapp:v1.0
    ports:
    - name: http
      containerPort: 80
---
"#
    )
}

/// `ip args...` in the host; panics with the output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
}

impl TestCluster {
    /// Adds node `i` (the next index) to the running cluster as `skiff up` builds one: a namespace on the
    /// bridge with the next address, and an agent with the arguments of node `i - 1`'s agent, renamed. Its
    /// pid file lets `skiff down` stop it; the namespace is the cluster's, so `skiff down` removes it.
    pub fn add_node(&self, i: u32) {
        let prev = pid_file(&self.data_dir, &format!("node-{}", i - 1));
        let cmdline =
            std::fs::read(format!("/proc/{prev}/cmdline")).expect("previous agent's cmdline");
        let (old_ip, new_ip) = (self.node_ip(i - 1), self.node_ip(i));
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .skip(1)
            .map(|a| {
                let a = String::from_utf8_lossy(a).to_string();
                if a == old_ip {
                    new_ip.clone()
                } else {
                    a.replace(&format!("node-{}", i - 1), &format!("node-{i}"))
                        .replace(&format!("/nodes/{}/", i - 1), &format!("/nodes/{i}/"))
                }
            })
            .collect();
        let dir = self.data_dir.join(format!("nodes/{i}"));
        for d in ["state", "cni/net.d", "cni/bin"] {
            std::fs::create_dir_all(dir.join(d)).expect("node dirs");
        }
        let _ = std::os::unix::fs::symlink(SKIFF, dir.join("cni/bin/skiff-cni"));
        let ns = self.node_netns(i);
        let veth = format!("skx{:06x}n{i}", unique() & 0xff_ffff);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &veth, "master", &bridge_of(&self.name), "up"]);
        let prefix = format!("{new_ip}/24");
        let gateway = format!("172.31.{}.1", self.octet);
        for cmd in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", &prefix, "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "route", "add", "default", "via", &gateway],
            vec!["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
        ] {
            let out = in_netns(&ns, &cmd);
            assert!(out.status.success(), "{cmd:?}: {}", text(&out));
        }
        let log =
            std::fs::File::create(self.data_dir.join(format!("logs/node-{i}.log"))).expect("log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, SKIFF])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting the agent");
        // `ip netns exec` execs the agent in place: the child's pid is the agent's.
        std::fs::write(
            self.data_dir.join(format!("run/node-{i}.pid")),
            child.id().to_string(),
        )
        .expect("pid file");
        // `skiff down` ends it; this thread reaps it then.
        std::thread::spawn(move || child.wait());
    }
}
