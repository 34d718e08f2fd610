//! The UDP/TCP server on loopback, checked with `dig` (dnsutils), forwarding to a real DNS responder on
//! loopback (a second server instance authoritative for another zone), loop detection, truncation, metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_dns::model::SnapshotBuilder;
use skiff_dns::testing::{
    add_service, add_slice, example_cluster, example_cluster_with_big_headless,
};
use skiff_dns::{serve_snapshot, Options, Running};

fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Options for a test server: ephemeral ports; upstreams always explicit loopback addresses (never the host's
/// resolv.conf: tests send nothing off the machine).
fn options(upstream: &[SocketAddr]) -> Options {
    let mut o = Options::with_listen(loopback0(), loopback0());
    o.upstream = upstream.iter().map(|u| u.to_string()).collect();
    if o.upstream.is_empty() {
        // A closed loopback port: forwarding fails fast (ICMP refused) without leaving the host.
        o.upstream.push("127.0.0.1:9".to_string());
    }
    o
}

async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=3", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn start(b: &mut SnapshotBuilder, upstream: &[SocketAddr]) -> Running {
    serve_snapshot(b.snapshot(), &options(upstream))
        .await
        .expect("server starts")
}

#[tokio::test]
async fn dig_over_udp_and_tcp() {
    let s = start(&mut example_cluster(), &[]).await;
    let a = s.dns_addr;
    assert_eq!(
        dig(a, &["+short", "web.default.svc.cluster.local"]).await,
        "10.96.0.20\n"
    );
    assert_eq!(
        dig(a, &["+short", "+tcp", "web.default.svc.cluster.local"]).await,
        "10.96.0.20\n"
    );
    assert_eq!(
        dig(a, &["+short", "+tcp", "db.default.svc.cluster.local"]).await,
        "10.244.1.5\n10.244.2.6\n"
    );
    assert_eq!(
        dig(a, &["+short", "SRV", "_mysql._tcp.mysql.prod.svc.cluster.local"]).await,
        "0 50 3306 mysql-0.mysql.prod.svc.cluster.local.\n0 50 3306 mysql-1.mysql.prod.svc.cluster.local.\n"
    );
    assert_eq!(
        dig(a, &["+short", "TXT", "dns-version.cluster.local"]).await,
        "\"1.1.0\"\n"
    );
    assert_eq!(
        dig(a, &["+short", "-x", "10.96.0.30"]).await,
        "web.prod.svc.cluster.local.\n"
    );
    let full = dig(a, &["nope.default.svc.cluster.local"]).await;
    assert!(full.contains("status: NXDOMAIN"), "{full}");
    assert!(full.contains("flags: qr aa rd ra"), "{full}");
    assert!(full.contains("cluster.local.\t\t5\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. 12345 7200 1800 86400 5"), "{full}");
    let ttl = dig(a, &["+noall", "+answer", "WEB.prod.svc.Cluster.Local"]).await;
    assert_eq!(ttl, "WEB.prod.svc.Cluster.Local. 5\tIN\tA\t10.96.0.30\n");
}

#[tokio::test]
async fn big_answers_truncate_on_udp_and_complete_over_tcp() {
    let s = start(&mut example_cluster_with_big_headless(), &[]).await;
    let a = s.dns_addr;
    // Without EDNS the limit is 512 bytes: TC set, no records.
    let udp = dig(a, &["+noedns", "+ignore", "big.default.svc.cluster.local"]).await;
    assert!(udp.contains("flags: qr aa tc rd ra"), "{udp}");
    assert!(udp.contains("ANSWER: 0"), "{udp}");
    // With a 4096-byte EDNS buffer the 100 records fit.
    let edns = dig(
        a,
        &["+bufsize=4096", "+ignore", "big.default.svc.cluster.local"],
    )
    .await;
    assert!(edns.contains("ANSWER: 100"), "{edns}");
    assert!(!edns.contains(" tc "), "{edns}");
    // dig's default retries over TCP on TC.
    let retried = dig(a, &["+noedns", "+short", "big.default.svc.cluster.local"]).await;
    assert_eq!(retried.lines().count(), 100, "{retried}");
}

/// An upstream: another server instance, authoritative for `example.org`.
async fn upstream_for_example_org() -> Running {
    let mut up = SnapshotBuilder::new("example.org", 60);
    up.apply_namespace("default");
    add_service(
        &mut up,
        json!({"metadata": {"name": "www", "namespace": "default"},
        "spec": {"clusterIP": "192.0.2.80"}}),
    );
    let endpoints: Vec<_> = (0..100)
        .map(|i| json!({"addresses": [format!("198.51.100.{i}")], "conditions": {"ready": true}}))
        .collect();
    add_service(
        &mut up,
        json!({"metadata": {"name": "many", "namespace": "default"},
        "spec": {"clusterIP": "None"}}),
    );
    add_slice(
        &mut up,
        json!({"metadata": {"name": "many-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "many"}},
        "addressType": "IPv4", "endpoints": endpoints}),
    );
    up.set_synced(true);
    start(&mut up, &[]).await
}

#[tokio::test]
async fn forwards_other_names_upstream_with_tcp_retry() {
    let up = upstream_for_example_org().await;
    let mut b = example_cluster();
    add_service(
        &mut b,
        json!({"metadata": {"name": "outside", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "www.default.svc.example.org"}}),
    );
    let s = start(&mut b, &[up.dns_addr]).await;
    let a = s.dns_addr;
    let fwd = dig(a, &["+noall", "+answer", "www.default.svc.example.org"]).await;
    assert_eq!(fwd, "www.default.svc.example.org. 60\tIN\tA\t192.0.2.80\n");
    // The upstream's answer does not fit in 512 bytes: we retry over TCP and relay the whole answer
    // (to our client over TCP here, since it does not fit its UDP limit either).
    let many = dig(a, &["+noedns", "+short", "many.default.svc.example.org"]).await;
    assert_eq!(many.lines().count(), 100, "{many}");
    // ExternalName outside the zone: CNAME plus the target resolved upstream.
    let ext = dig(
        a,
        &["+noall", "+answer", "outside.default.svc.cluster.local"],
    )
    .await;
    assert_eq!(
        ext,
        "outside.default.svc.cluster.local. 5 IN\tCNAME\twww.default.svc.example.org.\nwww.default.svc.example.org. 60\tIN\tA\t192.0.2.80\n"
    );
    // Upstream negative answers are relayed.
    let nx = dig(a, &["nope.default.svc.example.org"]).await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
}

#[tokio::test]
async fn forwarding_loop_is_detected_and_answered_servfail() {
    // Two servers that forward to each other: without loop detection every query would bounce until timeouts.
    let a_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a_addr = a_tcp.local_addr().unwrap();
    drop(a_tcp);
    let b = start(&mut example_cluster(), &[a_addr]).await;
    let mut oa = options(&[b.dns_addr]);
    oa.listen = a_addr;
    let a = serve_snapshot(example_cluster().snapshot(), &oa)
        .await
        .expect("a starts");
    // The start-up probes detect the loop.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = reqwest_metrics(a.metrics_addr).await + &reqwest_metrics(b.metrics_addr).await;
        if m.lines()
            .any(|l| l.starts_with("skiff_dns_forward_loops_total ") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no loop detected:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let out = dig(a.dns_addr, &["www.example.invalid"]).await;
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn own_listen_address_is_never_an_upstream() {
    use skiff_dns::forward::{is_self, parse_resolv_conf};
    let ups = parse_resolv_conf("# c\nsearch x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:5\n");
    assert_eq!(
        ups,
        vec![
            "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
    let wildcard: SocketAddr = "0.0.0.0:53".parse().unwrap();
    assert!(is_self(&"127.0.0.53:53".parse().unwrap(), &wildcard));
    assert!(!is_self(&"10.0.0.2:53".parse().unwrap(), &wildcard));
    assert!(is_self(
        &"10.96.0.10:53".parse().unwrap(),
        &"10.96.0.10:53".parse().unwrap()
    ));
    assert!(!is_self(
        &"127.0.0.1:53".parse().unwrap(),
        &"127.0.0.1:5353".parse().unwrap()
    ));
}

async fn reqwest_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics connect");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).await.unwrap();
    s
}

#[tokio::test]
async fn metrics_count_requests_and_rcodes() {
    let s = start(&mut example_cluster(), &[]).await;
    dig(s.dns_addr, &["+short", "web.default.svc.cluster.local"]).await;
    dig(s.dns_addr, &["+short", "nope.default.svc.cluster.local"]).await;
    dig(
        s.dns_addr,
        &["+short", "+tcp", "SRV", "web.default.svc.cluster.local"],
    )
    .await;
    let m = reqwest_metrics(s.metrics_addr).await;
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    let port = s.dns_addr.port();
    assert_ne!(port, 0);
    for line in [
        format!("coredns_dns_requests_total{{server=\"dns://:{}\",zone=\".\",view=\"\",proto=\"udp\",family=\"1\",type=\"A\"}} 2", port),
        format!("coredns_dns_requests_total{{server=\"dns://:{}\",zone=\".\",view=\"\",proto=\"tcp\",family=\"1\",type=\"SRV\"}} 1", port),
        format!("coredns_dns_responses_total{{server=\"dns://:{}\",zone=\".\",view=\"\",rcode=\"NXDOMAIN\",plugin=\"\"}} 1", port),
        format!("coredns_dns_responses_total{{server=\"dns://:{}\",zone=\".\",view=\"\",rcode=\"NOERROR\",plugin=\"\"}} 2", port),
        format!("coredns_dns_request_duration_seconds_count{{server=\"dns://:{}\",zone=\".\",view=\"\",type=\"A\"}} 2", port),
    ] {
        assert!(m.contains(&line), "missing {line} in\n{m}");
    }
}

#[tokio::test]
async fn a_new_snapshot_is_answered_immediately_despite_the_response_cache() {
    let mut b = example_cluster();
    let s = start(&mut b, &[]).await;
    for _ in 0..3 {
        assert_eq!(
            dig(s.dns_addr, &["+short", "web.default.svc.cluster.local"]).await,
            "10.96.0.20\n"
        );
    }
    add_service(
        &mut b,
        json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.21"}}),
    );
    s.server.store(b.snapshot());
    assert_eq!(
        dig(s.dns_addr, &["+short", "web.default.svc.cluster.local"]).await,
        "10.96.0.21\n"
    );
    b.delete_service("default", "web");
    s.server.store(b.snapshot());
    let gone = dig(s.dns_addr, &["web.default.svc.cluster.local"]).await;
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
}
