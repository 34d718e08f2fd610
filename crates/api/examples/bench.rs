//! API server benchmarks against a running server (see bench/api.sh):
//! creates/s with 16 concurrent clients, list of 10,000 services, watch delivery to 100 watchers,
//! server memory with 10,000 services + 100,000 endpoints.
//!
//! `bench --kubeconfig K --pid P [--watch-kubeconfig K2]` (watchers on another API server sharing the store)

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn ensure_ns(c: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns");
    let _ = api.create(&PostParams::default(), &ns).await;
}

/// `total` objects made by `make(i)` created by `clients` concurrent clients; returns objects/s.
async fn create_many<K, F>(clients: &[kube::Client], ns: &str, total: usize, make: F) -> f64
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
    F: Fn(usize) -> K + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let api: Api<K> = Api::namespaced(c.clone(), ns);
        let make = make.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if let Err(e) = api.create(&PostParams::default(), &make(i)).await {
                    eprintln!("create {i}: {e}");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let kubeconfig = get("--kubeconfig").expect("--kubeconfig");
    let pid: u32 = get("--pid").and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(client(&kubeconfig).await);
    }
    let watch_kubeconfig = get("--watch-kubeconfig").unwrap_or_else(|| kubeconfig.clone());
    let mut watch_clients = Vec::new();
    for _ in 0..16 {
        watch_clients.push(client(&watch_kubeconfig).await);
    }
    let c0 = clients[0].clone();
    ensure_ns(&c0, "bench").await;
    ensure_ns(&c0, "watch").await;
    println!("server RSS at start: {:.1} MB", rss_mb(pid));

    // 1. creates/s, 16 concurrent clients.
    let cm_rate = create_many(&clients, "bench", 5000, |i| {
        serde_json::from_value::<ConfigMap>(
            serde_json::json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}),
        )
        .expect("cm")
    })
    .await;
    println!("creates/s (ConfigMap, 16 clients, 5000 objects): {cm_rate:.0}");
    let svc_rate = create_many(&clients, "bench", 10_000, |i| {
        serde_json::from_value::<Service>(serde_json::json!({
            "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("a{}", i % 100)}},
            "spec": {"selector": {"app": format!("a{}", i % 100)}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .expect("svc")
    })
    .await;
    println!(
        "creates/s (Service with ClusterIP allocation, 16 clients, 10000 objects): {svc_rate:.0}"
    );

    // 2. list of 10,000 services (JSON and Table), median of 5.
    for (label, accept) in [
        ("JSON", "application/json"),
        (
            "Table",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        ),
    ] {
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..5 {
            let req = http::Request::get("/api/v1/namespaces/bench/services")
                .header("Accept", accept)
                .body(Vec::new())
                .expect("req");
            let t = Instant::now();
            let text = c0.request_text(req).await.expect("list");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            count = v["items"]
                .as_array()
                .or(v["rows"].as_array())
                .map(|a| a.len())
                .unwrap_or(0);
        }
        println!(
            "list 10,000 services ({label}, {count} items): median {:.1} ms",
            pct(&mut times, 0.5)
        );
    }

    // 3. watch delivery to 100 watchers.
    let api: Api<ConfigMap> = Api::namespaced(c0.clone(), "watch");
    let rv = api
        .list_metadata(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut sent: std::collections::HashMap<String, (Instant, Instant)> = Default::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let events = 200usize;
    for w in 0..100 {
        let api: Api<ConfigMap> = Api::namespaced(watch_clients[w % 16].clone(), "watch");
        let tx = tx.clone();
        let rv = rv.clone();
        tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default().timeout(290), &rv)
                .await
                .expect("watch")
                .boxed();
            let mut n = 0;
            while let Ok(Some(ev)) = s.try_next().await {
                if let WatchEvent::Added(o) = ev {
                    let _ = tx.send((o.metadata.name.unwrap_or_default(), Instant::now()));
                    n += 1;
                    if n == events {
                        break;
                    }
                }
            }
        });
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..events {
        let name = format!("w-{i}");
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("cm");
        let t0 = Instant::now();
        api.create(&PostParams::default(), &cm)
            .await
            .expect("create");
        sent.insert(name, (t0, Instant::now()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lat = Vec::new();
    let mut lat_ack = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lat.len() < events * 100 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((name, at))) => {
                if let Some((t0, ack)) = sent.get(&name) {
                    lat.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
                    // Delivered before the writer got its reply counts as 0.
                    lat_ack.push(at.saturating_duration_since(*ack).as_secs_f64() * 1000.0);
                }
            }
            _ => break,
        }
    }
    let got = lat.len();
    println!(
        "watch delivery, 100 watchers{} x {events} events ({got} deliveries): from create request start p50 {:.2} ms, p99 {:.2} ms; after the create's reply p50 {:.2} ms, p99 {:.2} ms",
        if watch_kubeconfig != kubeconfig {
            " on another API server"
        } else {
            ""
        },
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat_ack, 0.5),
        pct(&mut lat_ack, 0.99)
    );

    // 4. memory with 10,000 services + 100,000 endpoints (10,000 EndpointSlices x 10 endpoints).
    let eps_rate = create_many(&clients, "bench", 10_000, |i| {
        let endpoints: Vec<serde_json::Value> = (0..10)
            .map(|j| serde_json::json!({"addresses": [format!("10.{}.{}.{}", 244 + (i / 60000), (i / 250) % 240, (i % 250) + j)], "conditions": {"ready": true}, "nodeName": format!("node-{}", j % 3)}))
            .collect();
        serde_json::from_value::<EndpointSlice>(serde_json::json!({
            "metadata": {"name": format!("svc-{i}-abcde"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .expect("slice")
    })
    .await;
    println!(
        "creates/s (EndpointSlice with 10 endpoints, 16 clients, 10000 objects): {eps_rate:.0}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "server RSS with 10,000 services + 100,000 endpoints (+5,200 configmaps): {:.1} MB",
        rss_mb(pid)
    );
}
