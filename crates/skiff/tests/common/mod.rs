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
        // Tests send no traffic off this machine: cluster DNS must not forward to the host's resolvers.
        .args(["--dns-upstream", "none"])
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
pub fn fixed_addresses_lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/lock/skiff-e2e-fixed-addresses.lock")
        .expect("opening the e2e lock file");
    // SAFETY: flock on a descriptor we own and keep open; blocks until the other test releases it.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    assert_eq!(rc, 0, "locking the e2e lock file");
    file
}
