//! Hostile input: random bytes and mutations of valid queries, through the pure path (many iterations) and
//! through a live server over UDP and TCP, which must keep answering.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_dns::answer::{answer, query_message};
use skiff_dns::testing::example_cluster;
use skiff_dns::wire::{encode, parse_request, udp_limit, Parsed};
use skiff_dns::{serve_snapshot, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn seeds() -> Vec<Vec<u8>> {
    let names = [
        ("web.default.svc.cluster.local.", RecordType::A),
        ("_mysql._tcp.mysql.prod.svc.cluster.local.", RecordType::SRV),
        ("alias.default.svc.cluster.local.", RecordType::A),
        ("20.0.96.10.in-addr.arpa.", RecordType::PTR),
        ("10-244-1-5.default.pod.cluster.local.", RecordType::A),
        ("dns-version.cluster.local.", RecordType::TXT),
    ];
    let mut out = Vec::new();
    for (i, (n, t)) in names.iter().enumerate() {
        let mut q = query_message(i as u16, Name::from_ascii(n).unwrap(), *t);
        if i % 2 == 0 {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            q.set_edns(e);
        }
        out.push(q.to_vec().unwrap());
    }
    out
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..5) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b.truncate(i);
            }
            2 => {
                let extra: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                let i = rng.random_range(0..=b.len());
                b.splice(i..i, extra);
            }
            3 if b.len() > 12 => {
                // Counts in the header: claim many records / compression pointers loops.
                let i = rng.random_range(4..12);
                b[i] = 0xff;
            }
            _ => {
                // A compression pointer to itself or somewhere random.
                if b.len() > 14 {
                    let i = rng.random_range(12..b.len() - 1);
                    b[i] = 0xc0;
                    b[i + 1] = rng.random();
                }
            }
        }
    }
    b
}

#[test]
fn pure_path_never_panics_on_random_and_mutated_packets() {
    let snap = example_cluster().snapshot();
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut queries, mut formerr, mut dropped) = (0, 0, 0);
    for i in 0..200_000 {
        let packet = if i % 4 == 0 {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        } else {
            mutate(&mut rng, &seeds[i % seeds.len()])
        };
        match parse_request(&packet) {
            Parsed::Query(m) => {
                let ans = answer(&snap, &m);
                let bytes = encode(&ans.message, udp_limit(&m));
                assert!(bytes.len() <= udp_limit(&m).max(12));
                // What we send must itself decode.
                assert!(
                    Message::from_vec(&bytes).is_ok(),
                    "undecodable reply to {packet:?}"
                );
                queries += 1;
            }
            Parsed::Reply(r) => {
                assert_eq!(r.len(), 12);
                assert_eq!(r[3] & 0x0f, 1, "FORMERR");
                formerr += 1;
            }
            Parsed::Drop => dropped += 1,
        }
    }
    // The generator exercises every path.
    assert!(
        queries > 1000 && formerr > 1000 && dropped > 1000,
        "{queries} {formerr} {dropped}"
    );
}

async fn check_alive(addr: SocketAddr) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let q = query_message(
        42,
        Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    let mut buf = [0u8; 512];
    // Retried as a DNS client does (dig: 3 tries): the UDP server runs on its own thread, so the flood just
    // sent may still fill its socket buffer for a moment, and the kernel drops what does not fit.
    let mut n = None;
    for _ in 0..3 {
        sock.send_to(&q.to_vec().unwrap(), addr).await.unwrap();
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
        {
            n = Some(r.unwrap().0);
            break;
        }
    }
    let n = n.expect("server still answers");
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 42);
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn live_server_survives_hostile_packets_over_udp_and_tcp() {
    let mut o = Options::with_listen(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    o.upstream = vec!["127.0.0.1:9".into()];
    let s = serve_snapshot(example_cluster().snapshot(), &o)
        .await
        .unwrap();
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(7);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..20_000 {
        let packet = if i % 3 == 0 {
            (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect()
        } else {
            mutate(&mut rng, &seeds[i % seeds.len()])
        };
        let _ = sock.send_to(&packet, s.dns_addr).await;
        if i % 500 == 0 {
            // Drain replies so our socket buffer does not fill.
            let mut buf = [0u8; 4096];
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(1), sock.recv_from(&mut buf)).await
            {
            }
        }
    }
    check_alive(s.dns_addr).await;
    // TCP: garbage frames, a frame longer than what follows, then an abrupt close.
    for i in 0..200 {
        let mut c = tokio::net::TcpStream::connect(s.dns_addr).await.unwrap();
        let body = mutate(&mut rng, &seeds[i % seeds.len()]);
        let declared = if i % 5 == 0 {
            body.len() + 100
        } else {
            body.len()
        };
        let mut framed = (declared as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        let _ = c.write_all(&framed).await;
        if i % 5 != 0 {
            let mut len = [0u8; 2];
            let _ = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut len)).await;
        }
    }
    check_alive(s.dns_addr).await;
}
