//! Benchmarks of the figures (ignored in the normal suite; run with
//! `cargo test -p skiff-controllers --release --test bench -- --ignored --nocapture`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use serde_json::json;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Pod becomes Ready → its EndpointSlice shows it ready (watch-observed), p50/p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_ready_to_slice_latency() {
    let c = start(Default::default()).await;
    add_node(&c.client, "node-1", json!({})).await;
    let svcs: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let s: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
    svcs.create(&PostParams::default(), &s).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let mut ips = BTreeMap::new();
    for i in 0..20 {
        let name = format!("web-{i}");
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
        let ip = next_ip();
        set_pod_status(&c.client, "default", &name, Some(&ip), false)
            .await
            .unwrap();
        ips.insert(name, ip);
    }
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool, Instant)>();
    tokio::spawn(async move {
        let mut stream = watcher(slices, watcher::Config::default()).boxed();
        while let Some(Ok(ev)) = stream.next().await {
            if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = ev {
                for e in s.endpoints {
                    let _ = tx.send((
                        e.addresses[0].clone(),
                        e.conditions.and_then(|c| c.ready).unwrap_or(false),
                        Instant::now(),
                    ));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    while rx.try_recv().is_ok() {}
    let mut samples = vec![];
    for round in 0..10 {
        let ready = round % 2 == 0;
        for (name, ip) in &ips {
            let t0 = Instant::now();
            set_pod_status(&c.client, "default", name, Some(ip), ready)
                .await
                .unwrap();
            loop {
                let (addr, r, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .expect("slice update")
                    .unwrap();
                if &addr == ip && r == ready {
                    samples.push(at.duration_since(t0));
                    break;
                }
            }
        }
    }
    samples.sort();
    println!(
        "pod Ready -> EndpointSlice updated: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        samples.last().unwrap()
    );
}

/// Scale a Deployment 0 → 1000: time until all pods are bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_scale_to_1000_bound() {
    let c = start(skiff_controllers::Options {
        concurrent_writes: 32,
        ..Default::default()
    })
    .await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    for i in 1..=3 {
        let name = format!("node-{i}");
        add_node(&c.client, &name, json!({})).await;
        // Room for 1,000 pods (the default allocatable is 110 per node).
        nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"allocatable": {"pods": "1000", "cpu": "64", "memory": "256Gi"}}}))).await.unwrap();
    }
    let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "big"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "big"}},
        "template": {"metadata": {"labels": {"app": "big"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})).unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let t0 = Instant::now();
    deploys
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1000}})),
        )
        .await
        .unwrap();
    loop {
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        let bound = list
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        println!("{:?}: {} pods, {bound} bound", t0.elapsed(), list.len());
        if bound >= 1000 {
            assert_eq!(list.len(), 1000);
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {bound} bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("scale 0 -> 1000: all bound after {:?}", t0.elapsed());
}

/// The pure slice computation for 10,000 services × 10 pods (100,000 pods), as the initial sync does it.
#[test]
#[ignore]
fn bench_initial_slice_computation_10k_services_100k_pods() {
    let mut services = vec![];
    let mut pods_by_service = vec![];
    for s in 0..10_000 {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{s}"), "namespace": "default", "uid": format!("u{s}")},
            "spec": {"selector": {"app": format!("a{s}")}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})).unwrap();
        let pods: Vec<Arc<Pod>> = (0..10)
            .map(|i| {
                let n = s * 10 + i;
                Arc::new(serde_json::from_value(json!({"metadata": {"name": format!("p{n}"), "namespace": "default", "uid": format!("p{n}"), "labels": {"app": format!("a{s}")}},
                    "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                    "status": {"podIP": format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256), "conditions": [{"type": "Ready", "status": "True"}]}})).unwrap())
            })
            .collect();
        services.push(svc);
        pods_by_service.push(pods);
    }
    let t0 = Instant::now();
    let mut slices = 0;
    for (svc, pods) in services.iter().zip(&pods_by_service) {
        let changes =
            skiff_controllers::endpoints::desired_endpoint_slices(svc, pods, &|_| None, &[]);
        let _ = skiff_controllers::endpoints::desired_endpoints(svc, pods);
        slices += changes.create.len();
    }
    println!(
        "10k services / 100k pods: {slices} slices + 10k Endpoints computed in {:?}",
        t0.elapsed()
    );
}
