//! Against a real API server (skiff_api::testing::TestServer) through kube-rs watches: objects created,
//! changed and deleted through the API show up in answers; DNS programming latency is measured.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_dns::answer::query_message;
use skiff_dns::Options;
use tokio::net::UdpSocket;

async fn query(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let q = query_message(rand_id(), Name::from_ascii(name).ok()?, qtype);
    sock.send_to(&q.to_vec().ok()?, server).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..n]).ok()
}

fn rand_id() -> u16 {
    (Instant::now().elapsed().subsec_nanos() & 0xffff) as u16
}

/// Answer records rendered as "TYPE rdata" lines, plus the rcode.
fn summary(m: &Message) -> String {
    let mut s = format!("{:?}", m.metadata.response_code);
    for r in &m.answers {
        s.push_str(&format!(" | {} {}", r.record_type(), r.data));
    }
    s
}

/// Poll until `check` accepts the answer (or fail after `limit`); returns how long it took.
async fn wait_for(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    limit: Duration,
    check: impl Fn(&Message) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        if let Some(m) = query(server, name, qtype).await {
            if check(&m) {
                return start.elapsed();
            }
            last = summary(&m);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{name} {qtype}: condition not met within {limit:?}; last answer: {last}");
}

async fn start_dns(client: kube::Client) -> skiff_dns::Running {
    let mut o = Options::with_listen(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    // Loopback only: a closed port, so out-of-zone lookups fail fast without leaving the host.
    o.upstream = vec!["127.0.0.1:9".into()];
    skiff_dns::start(client, &o).await.expect("dns starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_api() {
    let api = skiff_api::testing::TestServer::start()
        .await
        .expect("api server");
    let client = api.client().await.expect("client");
    let dns = start_dns(client.clone()).await;
    let a = dns.dns_addr;
    let long = Duration::from_secs(20);

    // Synced: the bootstrap `kubernetes` service answers.
    wait_for(
        a,
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        long,
        |m| m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty(),
    )
    .await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap(),
        )
        .await
        .expect("namespace");
    wait_for(a, "team-a.svc.cluster.local.", RecordType::A, long, |m| {
        m.metadata.response_code == ResponseCode::NoError
    })
    .await;

    let services: Api<Service> = Api::namespaced(client.clone(), "team-a");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "team-a");
    let pp = PostParams::default();

    // ExternalName foo → bar → switched to ClusterIP.
    services
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "foo.example.org"}}))
            .unwrap(),
        )
        .await
        .expect("create ext");
    let cname = |target: &'static str| {
        move |m: &Message| {
            m.answers
                .iter()
                .any(|r| matches!(&r.data, RData::CNAME(c) if c.0.to_ascii() == target))
        }
    };
    wait_for(
        a,
        "ext.team-a.svc.cluster.local.",
        RecordType::CNAME,
        long,
        cname("foo.example.org."),
    )
    .await;
    services
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalName": "bar.example.org"}})),
        )
        .await
        .expect("patch ext");
    wait_for(
        a,
        "ext.team-a.svc.cluster.local.",
        RecordType::CNAME,
        long,
        cname("bar.example.org."),
    )
    .await;
    let switched = services
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "externalName": null,
            "ports": [{"name": "http", "port": 80}]}})),
        )
        .await
        .expect("switch ext to ClusterIP");
    let ip = switched
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("cluster IP allocated");
    wait_for(
        a,
        "ext.team-a.svc.cluster.local.",
        RecordType::A,
        long,
        |m| m.answers.iter().any(|r| r.data.to_string() == ip),
    )
    .await;

    // A headless service with an EndpointSlice (StatefulSet style hostnames).
    services
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}))
            .unwrap(),
        )
        .await
        .expect("create db");
    slices
        .create(&pp, &serde_json::from_value(json!({"metadata": {"name": "db-1",
                "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                          {"addresses": ["10.244.0.8"], "hostname": "db-1", "conditions": {"ready": false}}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]})).unwrap())
        .await
        .expect("create slice");
    wait_for(
        a,
        "db-0.db.team-a.svc.cluster.local.",
        RecordType::A,
        long,
        |m| summary(m) == "NoError | A 10.244.0.7",
    )
    .await;
    wait_for(
        a,
        "_pg._tcp.db.team-a.svc.cluster.local.",
        RecordType::SRV,
        long,
        |m| summary(m) == "NoError | SRV 0 100 5432 db-0.db.team-a.svc.cluster.local.",
    )
    .await;

    // Deleted services disappear.
    services
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete db");
    wait_for(
        a,
        "db.team-a.svc.cluster.local.",
        RecordType::A,
        long,
        |m| m.metadata.response_code == ResponseCode::NXDomain,
    )
    .await;
    services
        .delete("ext", &DeleteParams::default())
        .await
        .expect("delete ext");
    wait_for(
        a,
        "ext.team-a.svc.cluster.local.",
        RecordType::A,
        long,
        |m| m.metadata.response_code == ResponseCode::NXDomain,
    )
    .await;
}

/// DNS programming latency: from the API's create response to the first answer carrying the new service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programming_latency() {
    let api = skiff_api::testing::TestServer::start()
        .await
        .expect("api server");
    let client = api.client().await.expect("client");
    let dns = start_dns(client.clone()).await;
    let a = dns.dns_addr;
    wait_for(
        a,
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        Duration::from_secs(20),
        |m| !m.answers.is_empty(),
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let n: usize = std::env::var("SKIFF_DNS_LATENCY_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let created = services
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": format!("lat-{i}")},
                "spec": {"ports": [{"port": 80}]}}))
                .unwrap(),
            )
            .await
            .expect("create");
        let ip = created.spec.and_then(|s| s.cluster_ip).expect("cluster ip");
        let took = wait_for(
            a,
            &format!("lat-{i}.default.svc.cluster.local."),
            RecordType::A,
            Duration::from_secs(10),
            |m| m.answers.iter().any(|r| r.data.to_string() == ip),
        )
        .await;
        samples.push(took);
    }
    samples.sort();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "dns programming latency over {n} creates: p50 {:?} p90 {:?} p99 {:?} max {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[samples.len() - 1]
    );
    // The goal is 100 ms at p99 (measured in release, see BENCHMARKS.md); a debug build on a shared machine
    // gets a generous bound here.
    assert!(pct(0.99) < Duration::from_secs(1), "p99 {:?}", pct(0.99));
}
