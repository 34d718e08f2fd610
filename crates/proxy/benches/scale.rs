//! Service proxy at scale, in network namespaces this benchmark creates (and removes):
//! - full sync of N services × E endpoints into the kernel (one `nft -f -` transaction),
//! - one endpoint change among them (incremental sync) — p50 / p99,
//! - new TCP connections per second through a ClusterIP with 10 and with N services installed,
//! - process memory (objects + model + installed program) at N services.
//!
//! Run: `cargo bench -p skiff-proxy --bench scale` (as root). Environment: SKIFF_BENCH_SERVICES (10000),
//! SKIFF_BENCH_ENDPOINTS (10), SKIFF_BENCH_CHANGES (200), SKIFF_BENCH_CONN_SECS (3), SKIFF_BENCH_CONN_RUNS (5).
//! The binary re-executes itself inside the namespaces (`__serve`, `__connect`) for the connection test.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use skiff_proxy::apply::Runner;
use skiff_proxy::model::NodeContext;
use skiff_proxy::nft::RenderConfig;
use skiff_proxy::proxier::{Proxier, State};

const SERVER_IP: &str = "10.243.255.2";
const REAL_CLUSTER_IP: &str = "10.111.255.1";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Netns(Vec<String>, Vec<std::process::Child>);

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.1 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn cluster_ip(i: usize) -> String {
    let n = u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32;
    Ipv4Addr::from(n).to_string()
}

fn endpoint_ip(i: usize) -> String {
    let n = u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 2 + i as u32;
    Ipv4Addr::from(n).to_string()
}

fn service(name: &str, ip: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "bench"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}))
    .expect("service")
}

fn slice(service: &str, ips: &[String]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "bench", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "nodeName": "node-1", "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .expect("slice")
}

/// `__serve`: accept, write a byte, close — forever.
fn serve() {
    let l = TcpListener::bind("0.0.0.0:8080").expect("bind");
    for s in l.incoming().flatten() {
        let mut s = s;
        let _ = s.write_all(b"x");
    }
}

/// `__connect addr secs`: connections per second (connect, read one byte, close).
fn connect(addr: &str, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    let mut errors = 0u64;
    let start = Instant::now();
    while Instant::now() < end {
        match TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(1)) {
            Ok(mut s) => {
                // Read until the server's close, so the server ends the connection first and the client keeps
                // no TIME_WAIT port (tens of thousands per run would exhaust the ephemeral range).
                let mut b = Vec::with_capacity(1);
                if s.read_to_end(&mut b).is_ok() && b.len() == 1 {
                    n += 1;
                } else {
                    errors += 1;
                }
            }
            Err(_) => errors += 1,
        }
    }
    println!("{} {}", n as f64 / start.elapsed().as_secs_f64(), errors);
}

fn conn_rate(node_ns: &str, secs: u64) -> f64 {
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new("ip")
        .args(["netns", "exec", node_ns])
        .arg(exe)
        .args([
            "__connect",
            &format!("{REAL_CLUSTER_IP}:80"),
            &secs.to_string(),
        ])
        .output()
        .expect("connect");
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace();
    let rate: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let errors: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    if errors > 0 {
        eprintln!("  ({errors} failed connections)");
    }
    rate
}

/// A deterministic pseudo-random service index (the same services are touched in every run).
fn next_service(state: &mut u64, n: usize) -> usize {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 33) as usize % n
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn build_state(n: usize, e: usize) -> State {
    let mut st = State::new(NodeContext {
        name: "node-1".into(),
        ips: vec!["172.30.98.1".parse().expect("ip")],
    });
    for i in 0..n {
        let name = format!("svc-{i}");
        st.apply_service(service(&name, &cluster_ip(i)));
        let ips: Vec<String> = (0..e).map(|j| endpoint_ip(i * e + j)).collect();
        st.apply_slice(slice(&name, &ips));
    }
    st.apply_service(service("real", REAL_CLUSTER_IP));
    st.apply_slice(slice("real", &[SERVER_IP.to_string()]));
    st
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__serve") => return serve(),
        Some("__connect") => {
            return connect(&args[2], args[3].parse().unwrap_or(3));
        }
        _ => {}
    }
    let n = env("SKIFF_BENCH_SERVICES", 10000);
    let e = env("SKIFF_BENCH_ENDPOINTS", 10);
    let changes = env("SKIFF_BENCH_CHANGES", 200);
    let conn_secs = env("SKIFF_BENCH_CONN_SECS", 3) as u64;

    let id = format!(
        "{}{:04x}",
        std::process::id() % 100000,
        rand::random::<u16>()
    );
    let mut guard = Netns(Vec::new(), Vec::new());
    // Two nodes, each with a server pod: one gets 10 services, the other N; connection rates are measured
    // alternately so that machine noise hits both alike.
    let small_ns = setup_node(&mut guard, &format!("skpb-{id}-s"));
    let node_ns = setup_node(&mut guard, &format!("skpb-{id}-l"));
    std::thread::sleep(Duration::from_millis(300));

    let cfg = RenderConfig {
        // The pod network of this benchmark (the server pod) counts as the cluster network.
        cluster_cidr: "10.240.0.0/12".parse().ok(),
        ..RenderConfig::default()
    };
    let runner = Runner::in_netns(node_ns.clone());
    let small_runner = Runner::in_netns(small_ns.clone());

    println!(
        "Service proxy benchmark: {n} services x {e} endpoints (+1 real service), nft {}",
        nft_version()
    );

    // Connections/s with 10 services installed.
    let small = parking_lot::Mutex::new(build_state(10, e));
    let mut small_proxier = Proxier::new(cfg.clone(), small_runner);
    small_proxier.sync(&small).await.expect("small sync");
    drop(small);

    let rss0 = rss_mb();
    let t = Instant::now();
    let state = parking_lot::Mutex::new(build_state(n, e));
    let build_objects = t.elapsed();
    let rss_objects = rss_mb();
    let mut p = Proxier::new(cfg.clone(), runner.clone());
    let t = Instant::now();
    let r = p.sync(&state).await.expect("full sync");
    let full = t.elapsed();
    let rss1 = rss_mb();
    println!(
        "full sync (table replaced, one transaction): {:.3} s  ({} services, script {:.1} MB; model + script {:.3} s, nft {:.3} s; objects built in {:.2} s)",
        full.as_secs_f64(),
        r.changed,
        r.script_bytes as f64 / 1e6,
        r.compute.as_secs_f64(),
        (full - r.compute).as_secs_f64(),
        build_objects.as_secs_f64()
    );
    if std::env::var_os("SKIFF_BENCH_EXIT_AFTER_FULL_SYNC").is_some() {
        // For heap profilers: everything still allocated here shows up as "leaked" (namespaces removed first).
        drop(guard);
        std::process::exit(0);
    }
    // A second agent start: full resync over an existing table.
    let mut p2 = Proxier::new(cfg.clone(), runner.clone());
    let t = Instant::now();
    p2.sync(&state).await.expect("resync");
    println!(
        "full resync over the existing table (agent restart): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    // The restarted agent owns the table from now on (its program numbers the endpoint blocks).
    drop(p);
    let mut p = p2;

    // One endpoint change at a time.
    let mut times = Vec::with_capacity(changes);
    let mut compute = Vec::with_capacity(changes);
    let mut rng_state = 12345u64;
    for k in 0..changes {
        let i = next_service(&mut rng_state, n);
        let name = format!("svc-{i}");
        let mut ips: Vec<String> = (0..e).map(|j| endpoint_ip(i * e + j)).collect();
        ips[0] = endpoint_ip(n * e + 10 + k);
        state.lock().apply_slice(slice(&name, &ips));
        let t = Instant::now();
        let r = p.sync(&state).await.expect("incremental sync");
        times.push(t.elapsed());
        compute.push(r.compute);
        assert!(!r.full && r.changed == 1 && r.netlink);
    }
    times.sort();
    compute.sort();
    // One endpoint more or less (a scale step): the service's dispatch rule changes too.
    let mut scale_times = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = next_service(&mut rng_state, n);
        let name = format!("svc-{i}");
        let mut ips: Vec<String> = (0..e).map(|j| endpoint_ip(i * e + j)).collect();
        for step in 0..2 {
            if step == 0 {
                ips.push(endpoint_ip(n * e + 10 + changes + k));
            } else {
                ips.pop();
            }
            state.lock().apply_slice(slice(&name, &ips));
            let t = Instant::now();
            let r = p.sync(&state).await.expect("incremental sync");
            scale_times.push(t.elapsed());
            assert!(!r.full && r.changed == 1 && r.netlink);
        }
    }
    scale_times.sort();
    println!(
        "one endpoint added or removed (dispatch rule replaced too, {} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        scale_times.len(),
        percentile(&scale_times, 0.5).as_secs_f64() * 1e3,
        percentile(&scale_times, 0.99).as_secs_f64() * 1e3,
        scale_times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "one endpoint replaced (incremental sync over netlink, {changes} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  of which model + diff (before the kernel): p50 {:.3} ms, p99 {:.3} ms",
        percentile(&compute, 0.5).as_secs_f64() * 1e3,
        percentile(&compute, 0.99).as_secs_f64() * 1e3
    );

    let _ = conn_rate(&small_ns, 1); // warm-up
    let _ = conn_rate(&node_ns, 1);
    let mut smalls = Vec::new();
    let mut larges = Vec::new();
    let runs = env("SKIFF_BENCH_CONN_RUNS", 5).max(1);
    for _ in 0..runs {
        smalls.push(conn_rate(&small_ns, conn_secs));
        larges.push(conn_rate(&node_ns, conn_secs));
    }
    smalls.sort_by(f64::total_cmp);
    larges.sort_by(f64::total_cmp);
    let (rate_small, rate_large) = (smalls[runs / 2], larges[runs / 2]);
    println!("  samples (conn/s): 10 services {smalls:.0?}, {n} services {larges:.0?}");
    println!(
        "new connections/s through a ClusterIP: {rate_small:.0} with 10 services, {rate_large:.0} with {n} services (ratio {:.3})",
        rate_large / rate_small.max(1.0)
    );
    println!(
        "memory: process RSS {:.1} MB with {n} services installed (+{:.1} MB API objects, +{:.1} MB model + installed program + sync buffers)",
        rss1,
        rss_objects - rss0,
        rss1 - rss_objects
    );
    let rss_before_drop = rss_mb();
    drop(p);
    #[allow(unsafe_code)] // malloc_trim: no safe binding
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    let rss_after_drop = rss_mb();
    println!(
        "  RSS {rss_before_drop:.1} MB at the end, {rss_after_drop:.1} MB after dropping the proxier (model + installed program: {:.1} MB)",
        rss_before_drop - rss_after_drop
    );
    drop(guard);
}

/// A node namespace with a server pod behind a veth; returns the node namespace's name.
fn setup_node(guard: &mut Netns, prefix: &str) -> String {
    let node_ns = format!("{prefix}-node");
    let pod_ns = format!("{prefix}-pod");
    for ns in [&node_ns, &pod_ns] {
        sh(&["ip", "netns", "add", ns]);
        guard.0.push(ns.clone());
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // Tens of thousands of short connections per run: without reuse of TIME_WAIT ports the client runs out
        // of ephemeral ports and the rate measures the kernel's port search instead of the service path.
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ]);
    }
    sh(&[
        "ip", "-n", &node_ns, "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns",
        &pod_ns,
    ]);
    sh(&[
        "ip",
        "-n",
        &node_ns,
        "addr",
        "add",
        "10.243.255.1/24",
        "dev",
        "vp",
    ]);
    sh(&["ip", "-n", &node_ns, "link", "set", "vp", "up"]);
    sh(&[
        "ip",
        "-n",
        &pod_ns,
        "addr",
        "add",
        &format!("{SERVER_IP}/24"),
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &pod_ns, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        &pod_ns,
        "route",
        "add",
        "default",
        "via",
        "10.243.255.1",
    ]);
    sh(&[
        "ip", "-n", &node_ns, "route", "add", "default", "via", SERVER_IP,
    ]);
    let exe = std::env::current_exe().expect("exe");
    let server = Command::new("ip")
        .args(["netns", "exec", &pod_ns])
        .arg(&exe)
        .arg("__serve")
        .stdout(Stdio::null())
        .spawn()
        .expect("server");
    guard.1.push(server);
    node_ns
}

fn nft_version() -> String {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
