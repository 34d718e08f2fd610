//! NetworkPolicy enforcement at scale, in a network namespace this benchmark creates (and removes):
//! - full sync of P policies over N pods in S namespaces (model + render + one `nft -f -` transaction),
//! - one change (a pod added or removed, a policy's port changed): model + diff + transaction, p50 / p99,
//! - process memory (watch state + model + applied ruleset).
//!
//! Run: `cargo bench -p skiff-netpol --bench scale` (as root). Environment: SKIFF_BENCH_POLICIES (1000),
//! SKIFF_BENCH_PODS (5000), SKIFF_BENCH_NAMESPACES (50), SKIFF_BENCH_CHANGES (200), SKIFF_BENCH_LOCAL_EVERY
//! (1: every pod is on this node, the worst case; 10: one pod in ten).

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use skiff_netpol::agent::{Enforcer, State};
use skiff_netpol::apply::Runner;
use skiff_netpol::nft::RenderConfig;

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

fn pod(ns: usize, i: usize, local_every: usize) -> Pod {
    let node = if i.is_multiple_of(local_every) {
        "node-1"
    } else {
        "node-2"
    };
    let ip = format!(
        "10.{}.{}.{}",
        100 + ns / 50,
        ns % 50 * 4 + i / 250,
        i % 250 + 2
    );
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns-{ns}"), "name": format!("pod-{i}"),
                     "labels": {"app": format!("app-{}", i % 10), "tier": if i.is_multiple_of(2) { "web" } else { "db" }}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip},
    }))
    .unwrap()
}

fn policy(ns: usize, i: usize, port: u16) -> NetworkPolicy {
    let app = |k: usize| json!({"matchLabels": {"app": format!("app-{}", k % 10)}});
    let spec = match i % 4 {
        0 => {
            json!({"podSelector": app(i), "ingress": [{"from": [{"podSelector": app(i + 1)}], "ports": [{"port": port}]}]})
        }
        1 => {
            json!({"podSelector": app(i), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 5)}}, "podSelector": app(i + 2)}],
                    "ports": [{"port": port, "endPort": port + 10}]}]})
        }
        2 => json!({"podSelector": app(i), "policyTypes": ["Egress"], "egress": [
                    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}], "ports": [{"port": 53, "protocol": "UDP"}]},
                    {"to": [{"podSelector": app(i + 3)}], "ports": [{"port": port}]}]}),
        _ => {
            json!({"podSelector": app(i), "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}]})
        }
    };
    serde_json::from_value(json!({"metadata": {"namespace": format!("ns-{ns}"), "name": format!("policy-{i}")}, "spec": spec})).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn main() {
    let (n_policies, n_pods, n_ns) = (
        env("SKIFF_BENCH_POLICIES", 1000),
        env("SKIFF_BENCH_PODS", 5000),
        env("SKIFF_BENCH_NAMESPACES", 50),
    );
    let changes = env("SKIFF_BENCH_CHANGES", 200);
    let local_every = env("SKIFF_BENCH_LOCAL_EVERY", 1).max(1);
    let netns = Netns(format!("sknp-bench-{}", std::process::id()));
    let out = Command::new("ip")
        .args(["netns", "add", &netns.0])
        .output()
        .expect("ip netns add");
    assert!(
        out.status.success(),
        "needs root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let rss0 = rss_mb();
    let mut state = State::new("node-1");
    let (pods_per_ns, pols_per_ns) = (n_pods / n_ns, n_policies / n_ns);
    state.replace_namespaces(
        (0..n_ns)
            .map(|n| serde_json::from_value::<Namespace>(json!({"metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("t{}", n % 5)}}})).unwrap())
            .collect(),
    );
    state.replace_pods(
        (0..n_ns)
            .flat_map(|n| (0..pods_per_ns).map(move |i| pod(n, i, local_every)))
            .collect(),
    );
    state.replace_policies(
        (0..n_ns)
            .flat_map(|n| (0..pols_per_ns).map(move |i| policy(n, i, 8080)))
            .collect(),
    );

    let mut enforcer = Enforcer::new(RenderConfig::default(), Runner::in_netns(&netns.0));
    let t = Instant::now();
    let model = state.model();
    let t_model = t.elapsed();
    let rs = skiff_netpol::nft::render(&model);
    let elements: usize = rs.sets.values().map(|s| s.elements.len()).sum();
    let t_render = t.elapsed() - t_model;
    let t = Instant::now();
    let model = state.model();
    rt.block_on(enforcer.sync(&model)).expect("full sync");
    let t_full = t.elapsed();
    println!(
        "full sync: {n_policies} policies over {n_pods} pods in {n_ns} namespaces ({} programmed, {} chains, {} sets, {elements} elements): {:.0} ms (model {:.0} ms, render {:.0} ms)",
        model.policies.len(),
        rs.chains.len(),
        rs.sets.len(),
        ms(t_full),
        ms(t_model),
        ms(t_render)
    );
    drop(rs);
    println!(
        "memory: {:.1} MB RSS over the empty process (state + model + applied ruleset)",
        rss_mb() - rss0
    );

    let mut times = Vec::with_capacity(changes);
    for c in 0..changes {
        match c % 4 {
            0 => state.apply_pod(&pod(c % n_ns, pods_per_ns + 1, 1)),
            1 => state.delete_pod(&pod((c - 1) % n_ns, pods_per_ns + 1, 1)),
            2 => state.apply_policy(policy(c % n_ns, c % pols_per_ns.max(1), 9090)),
            _ => state.apply_policy(policy((c - 1) % n_ns, (c - 1) % pols_per_ns.max(1), 8080)),
        }
        let t = Instant::now();
        let model = state.model();
        rt.block_on(enforcer.sync(&model))
            .expect("incremental sync");
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "one change (pod add/remove, policy port change), model + diff + nft: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {changes}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
}
