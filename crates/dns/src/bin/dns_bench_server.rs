//! Benchmark server: serves a synthetic cluster (N services, M endpoints each; see
//! `skiff_dns::testing::synthetic`) without an API server, prints its memory use and the cost of an
//! incremental snapshot update, and writes the same records as an RFC 1035 zone file (for nsd) and a dnsperf
//! query file when asked.
//!
//! Usage:
//!   dns_bench_server serve <listen> <services> <endpoints-per-service>
//!   dns_bench_server files <services> <endpoints-per-service> <zonefile> <queryfile>
//!   dns_bench_server pure <services> <endpoints-per-service> <queryfile>   (answer path without sockets)

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::json;
use skiff_dns::model::{ServiceKind, SnapshotBuilder};
use skiff_dns::testing::{add_service, synthetic};
use skiff_dns::{serve_snapshot, Options};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn build(n: usize, m: usize) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new("cluster.local", 5);
    synthetic(&mut b, n, m);
    b.set_synced(true);
    b
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        "files" => {
            let (n, m) = (arg(2).parse()?, arg(3).parse()?);
            let snap = build(n, m).snapshot();
            std::fs::write(arg(4), zone_file(&snap))?;
            std::fs::write(arg(5), query_file(n))?;
            Ok(())
        }
        "pure" => pure(arg(2).parse()?, arg(3).parse()?, arg(4)),
        "serve" => serve(arg(2).parse()?, arg(3).parse()?, arg(4).parse()?),
        _ => Err("usage: dns_bench_server serve|files|pure ...".into()),
    }
}

/// Time the pure path (decode, answer, encode) over the query file.
fn pure(n: usize, m: usize, queryfile: &str) -> Result<(), Box<dyn std::error::Error>> {
    use hickory_proto::rr::{Name, RecordType};
    let snap = build(n, m).snapshot();
    let mut packets = Vec::new();
    for line in std::fs::read_to_string(queryfile)?.lines() {
        let mut w = line.split_whitespace();
        let (Some(name), Some(t)) = (w.next(), w.next()) else {
            continue;
        };
        let qtype: RecordType = t.parse()?;
        let q = skiff_dns::answer::query_message(1, Name::from_ascii(format!("{name}."))?, qtype);
        packets.push(q.to_vec()?);
    }
    let rounds = 20;
    let t = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..rounds {
        for p in &packets {
            if let skiff_dns::wire::Parsed::Query(q) = skiff_dns::wire::parse_request(p) {
                let a = skiff_dns::answer(&snap, &q);
                bytes += skiff_dns::wire::encode(&a.message, skiff_dns::wire::udp_limit(&q)).len();
            }
        }
    }
    let per = t.elapsed() / (rounds * packets.len()) as u32;
    println!(
        "pure path: {per:?} per query ({} queries x {rounds}, {bytes} bytes out)",
        packets.len()
    );
    Ok(())
}

fn serve(
    listen: std::net::SocketAddr,
    n: usize,
    m: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let rss0 = rss_kib();
    let t = Instant::now();
    let mut b = build(n, m);
    let snap = b.snapshot();
    let built = t.elapsed();
    println!(
        "built {} services x {m} endpoints in {built:?}; RSS {} KiB (baseline {rss0} KiB)",
        snap.service_count(),
        rss_kib()
    );
    drop(snap);
    // Incremental update cost at this scale: one service changes, publish a new snapshot (the previous one
    // stays alive while it is built, as it does in the server).
    let mut times = Vec::new();
    let mut current = b.snapshot();
    for i in 0..200 {
        let t = Instant::now();
        add_service(
            &mut b,
            json!({"metadata": {"name": format!("svc-{}", i * 7 % n), "namespace": format!("ns-{}", (i * 7 % n) % 10)},
            "spec": {"clusterIP": format!("10.111.{}.{}", i / 250, i % 250), "ports": [{"name": "http", "port": 80}]}}),
        );
        let s = b.snapshot();
        times.push(t.elapsed());
        current = s;
    }
    times.sort();
    println!(
        "incremental publish (1 service changed): p50 {:?} p99 {:?} max {:?}",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1]
    );
    let snap = current;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut o = Options::with_listen(listen, "127.0.0.1:0".parse()?);
        o.upstream = vec!["127.0.0.1:9".into()];
        let running = serve_snapshot(snap, &o).await?;
        println!("serving on {} (RSS {} KiB)", running.dns_addr, rss_kib());
        let server = running.server.clone();
        let mut last = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let total = server.metrics().requests_total();
            println!(
                "requests {total} (+{}), RSS {} KiB",
                total - last,
                rss_kib()
            );
            last = total;
        }
        #[allow(unreachable_code)]
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// The same records as an nsd zone (A for ClusterIP services and for each headless endpoint, SRV per port).
fn zone_file(snap: &skiff_dns::Snapshot) -> String {
    let mut z = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ IN NS ns.dns\nns.dns IN A 10.96.0.10\ndns-version IN TXT \"1.1.0\"\n",
    );
    for i in 0..snap.service_count() {
        let ns = format!("ns-{}", i % 10);
        let name = format!("svc-{i}");
        let Some(svc) = snap.service(&ns, &name) else {
            continue;
        };
        let owner = format!("{name}.{ns}.svc");
        match &svc.kind {
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    let _ = writeln!(z, "{owner} IN A {ip}");
                }
                for p in &svc.ports {
                    let _ = writeln!(
                        z,
                        "_{}._{}.{owner} IN SRV 0 100 {} {owner}",
                        p.name,
                        p.protocol.label(),
                        p.port
                    );
                }
            }
            ServiceKind::Headless => {
                for ep in &svc.endpoints {
                    let _ = writeln!(z, "{owner} IN A {}", ep.ip);
                    let _ = writeln!(z, "{}.{owner} IN A {}", ep.label(), ep.ip);
                }
            }
            ServiceKind::ExternalName(t) => {
                let _ = writeln!(z, "{owner} IN CNAME {t}.");
            }
        }
    }
    z
}

/// A query mix a cluster sees: ClusterIP A lookups, AAAA (NODATA), SRV, headless, and search-path misses
/// (NXDOMAIN).
fn query_file(n: usize) -> String {
    let mut q = String::new();
    for k in 0..20_000usize {
        let i = (k * 7919) % n;
        let ns = i % 10;
        match k % 10 {
            0..=4 => {
                let _ = writeln!(q, "svc-{i}.ns-{ns}.svc.cluster.local A");
            }
            5 => {
                let _ = writeln!(q, "svc-{i}.ns-{ns}.svc.cluster.local AAAA");
            }
            6 => {
                let _ = writeln!(q, "_http._tcp.svc-{i}.ns-{ns}.svc.cluster.local SRV");
            }
            7 => {
                let h = (i / 10) * 10 + 9;
                if h < n {
                    let _ = writeln!(q, "svc-{h}.ns-{}.svc.cluster.local A", h % 10);
                }
            }
            _ => {
                let _ = writeln!(q, "svc-{i}.ns-{ns}.ns-{ns}.svc.cluster.local A");
            }
        }
    }
    q
}
