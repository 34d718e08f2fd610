//! The batched UDP path (recvmmsg/sendmmsg on its own thread, with its own response cache), checked on
//! loopback against the pure answer path: many clients with many queries in flight, 0x20 mixed case, EDNS and
//! truncation, metrics of cached replies, SERVFAIL until synced, and the thread ending with its runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_dns::answer::query_message;
use skiff_dns::testing::example_cluster_with_big_headless;
use skiff_dns::wire::{encode, parse_request, udp_limit, Parsed};
use skiff_dns::{answer, serve_snapshot, Options, Running, Snapshot};

fn options() -> Options {
    let mut o = Options::with_listen(
        "127.0.0.1:0".parse().expect("literal"),
        "127.0.0.1:0".parse().expect("literal"),
    );
    // A closed loopback port: nothing leaves the host.
    o.upstream = vec!["127.0.0.1:9".into()];
    o
}

/// What the server must send for `request`: the pure path (decode, answer, encode within the UDP limit).
fn reference(snap: &Snapshot, request: &[u8]) -> Vec<u8> {
    let Parsed::Query(m) = parse_request(request) else {
        panic!("test query does not decode")
    };
    encode(&answer(snap, &m).message, udp_limit(&m))
}

/// `name` with each letter's case chosen by `pattern` (bit i of the pattern for letter i, cycling).
fn with_case(name: &str, pattern: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if pattern >> (i % 32) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

const QUESTIONS: [(&str, RecordType); 10] = [
    ("web.default.svc.cluster.local.", RecordType::A),
    ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
    ("web.prod.svc.cluster.local.", RecordType::AAAA),
    ("db.default.svc.cluster.local.", RecordType::A),
    ("nope.default.svc.cluster.local.", RecordType::A),
    ("mysql-0.mysql.prod.svc.cluster.local.", RecordType::A),
    ("alias.default.svc.cluster.local.", RecordType::A),
    ("dns-version.cluster.local.", RecordType::TXT),
    ("30.0.96.10.in-addr.arpa.", RecordType::PTR),
    ("big.default.svc.cluster.local.", RecordType::A),
];

/// Request `k` of a client: a question from [`QUESTIONS`] in one of 4 case patterns (so identical request
/// bytes repeat and are served from the cache, with different ids), half of them with EDNS (4096 bytes).
fn request(rng: &mut StdRng, id: u16) -> Vec<u8> {
    let (name, qtype) = QUESTIONS[rng.random_range(0..QUESTIONS.len())];
    let pattern = [0, u32::MAX, 0x5555_5555, 0x0f0f_0f0f][rng.random_range(0..4)];
    let mut m = query_message(
        id,
        Name::from_ascii(with_case(name, pattern)).expect("valid name"),
        qtype,
    );
    if rng.random_bool(0.5) {
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        m.edns = Some(edns);
    }
    m.to_vec().expect("encodes")
}

/// One client: send `n` requests back to back (all in flight at once), collect the replies by id; resend
/// what is unanswered after a second, as a DNS client does. Returns (request, reply) pairs.
async fn client(addr: SocketAddr, seed: u64, n: u16) -> Vec<(Vec<u8>, Vec<u8>)> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind client");
    let mut rng = StdRng::seed_from_u64(seed);
    // Ids spread over the 16-bit space so that patching only the low byte would show.
    let requests: HashMap<u16, Vec<u8>> = (0..n)
        .map(|k| {
            let id = k.wrapping_mul(257).wrapping_add(seed as u16);
            (id, request(&mut rng, id))
        })
        .collect();
    let mut replies: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; 65535];
    for _round in 0..3 {
        for (id, r) in &requests {
            if !replies.contains_key(id) {
                sock.send_to(r, addr).await.expect("send");
            }
        }
        while replies.len() < requests.len() {
            match tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await {
                Ok(Ok((len, _))) => {
                    let reply = buf[..len].to_vec();
                    let id = u16::from_be_bytes([reply[0], reply[1]]);
                    assert!(
                        requests.contains_key(&id),
                        "reply with an id never sent: {id}"
                    );
                    if let Some(earlier) = replies.insert(id, reply.clone()) {
                        // A resent request may be answered twice; both answers must agree.
                        assert_eq!(earlier, reply, "two different replies to id {id}");
                    }
                }
                Ok(Err(e)) => panic!("recv: {e}"),
                Err(_) => break,
            }
        }
    }
    assert_eq!(replies.len(), requests.len(), "unanswered queries");
    requests
        .into_iter()
        .map(|(id, r)| (r, replies.remove(&id).expect("answered")))
        .collect()
}

fn question_len(request: &[u8]) -> usize {
    // The name's labels up to the zero byte, then type and class.
    let mut i = 12;
    while request[i] != 0 {
        i += usize::from(request[i]) + 1;
    }
    i + 1 + 4 - 12
}

#[tokio::test]
async fn concurrent_clients_get_byte_exact_answers_with_their_ids_and_case() {
    let s = serve_snapshot(example_cluster_with_big_headless().snapshot(), &options())
        .await
        .expect("server starts");
    let snap = s.server.snapshot();
    let clients: Vec<_> = (0..16u64)
        .map(|c| tokio::spawn(client(s.dns_addr, c + 1, 64)))
        .collect();
    let mut checked = 0;
    let mut truncated = 0;
    let mut mixed_case = 0;
    for c in clients {
        for (request, reply) in c.await.expect("client task") {
            // The id is the request's, the question exactly as sent (0x20 case included) ...
            assert_eq!(reply[..2], request[..2], "id");
            let q = question_len(&request);
            assert_eq!(reply[12..12 + q], request[12..12 + q], "question echoed");
            // ... and the whole reply is what the uncached pure path produces for this request.
            assert_eq!(
                reply,
                reference(&snap, &request),
                "reply differs from the pure path for {:?}",
                Message::from_vec(&request).map(|m| m.queries)
            );
            if reply[2] & 0x02 != 0 {
                truncated += 1;
            }
            if request[12..12 + q].iter().any(u8::is_ascii_uppercase) {
                mixed_case += 1;
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 16 * 64);
    // The mix exercised truncation (big without EDNS) and mixed case.
    assert!(truncated > 0 && mixed_case > 0, "{truncated} {mixed_case}");
    // Every answer carries the case the client asked with, e.g. the A record's owner.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    for (id, name) in [
        (1u16, "WEB.Default.svc.cluster.LOCAL."),
        (2, "web.default.svc.cluster.local."),
    ] {
        let q = query_message(id, Name::from_ascii(name).expect("valid"), RecordType::A);
        sock.send_to(&q.to_vec().expect("encodes"), s.dns_addr)
            .await
            .expect("send");
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("answered")
            .expect("recv");
        let m = Message::from_vec(&buf[..n]).expect("decodes");
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].name.to_string(), name);
        assert_eq!(
            m.answers[0].data,
            RData::A("10.96.0.20".parse().expect("literal"))
        );
    }
}

async fn ask(sock: &tokio::net::UdpSocket, addr: SocketAddr, id: u16, name: &str) -> Message {
    let q = query_message(id, Name::from_ascii(name).expect("valid"), RecordType::A);
    sock.send_to(&q.to_vec().expect("encodes"), addr)
        .await
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .expect("answered")
        .expect("recv");
    Message::from_vec(&buf[..n]).expect("decodes")
}

#[tokio::test]
async fn cached_udp_replies_are_counted_in_the_metrics() {
    let s = serve_snapshot(example_cluster_with_big_headless().snapshot(), &options())
        .await
        .expect("server starts");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // The same request bytes (but the id) ten times: one computed answer, nine from the cache.
    for id in 0..10 {
        let m = ask(&sock, s.dns_addr, id, "web.default.svc.cluster.local.").await;
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.answers.len(), 1);
    }
    for id in 10..13 {
        let m = ask(&sock, s.dns_addr, id, "nope.default.svc.cluster.local.").await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    let text = s.server.metrics().render();
    let server = format!("dns://:{}", s.dns_addr.port());
    for line in [
        format!("coredns_dns_requests_total{{server=\"{server}\",zone=\".\",view=\"\",proto=\"udp\",family=\"1\",type=\"A\"}} 13"),
        format!("coredns_dns_responses_total{{server=\"{server}\",zone=\".\",view=\"\",rcode=\"NOERROR\",plugin=\"\"}} 10"),
        format!("coredns_dns_responses_total{{server=\"{server}\",zone=\".\",view=\"\",rcode=\"NXDOMAIN\",plugin=\"\"}} 3"),
        format!("coredns_dns_request_duration_seconds_count{{server=\"{server}\",zone=\".\",view=\"\",type=\"A\"}} 13"),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn servfail_until_synced_then_answers_despite_the_udp_cache() {
    let s = serve_snapshot(Snapshot::unsynced("cluster.local", 5), &options())
        .await
        .expect("server starts");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    for id in 0..3 {
        let m = ask(&sock, s.dns_addr, id, "web.default.svc.cluster.local.").await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }
    s.server
        .store(example_cluster_with_big_headless().snapshot());
    let m = ask(&sock, s.dns_addr, 3, "web.default.svc.cluster.local.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        m.answers.first().map(|r| r.data.clone()),
        Some(RData::A("10.96.0.20".parse().expect("literal")))
    );
}

#[test]
fn the_udp_thread_ends_and_frees_its_port_when_the_runtime_stops() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, running): (SocketAddr, Arc<Running>) = rt.block_on(async {
        let s = serve_snapshot(example_cluster_with_big_headless().snapshot(), &options())
            .await
            .expect("server starts");
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let m = ask(&sock, s.dns_addr, 7, "web.default.svc.cluster.local.").await;
        assert_eq!(m.answers.len(), 1);
        (s.dns_addr, Arc::new(s))
    });
    drop(rt);
    drop(running);
    // The socket closes once the thread has returned; it is woken at once, so this takes milliseconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("UDP port {addr} still bound after the runtime stopped: {e}"),
        }
    }
}

#[tokio::test]
async fn the_udp_socket_has_room_for_a_burst_of_queries() {
    let s = serve_snapshot(example_cluster_with_big_headless().snapshot(), &options())
        .await
        .expect("server starts");
    // `ss -m` shows the socket's memory limits: rb is the receive buffer (the kernel doubles what was asked
    // for, for its bookkeeping). The default (~208 KiB) holds only a few hundred queries.
    let out = tokio::process::Command::new("ss")
        .args([
            "-u",
            "-a",
            "-n",
            "-m",
            "sport",
            "=",
            &format!(":{}", s.dns_addr.port()),
        ])
        .output()
        .await
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let rb: u64 = text
        .split("rb")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no rb in ss output:\n{text}"));
    assert!(rb >= 1 << 20, "receive buffer {rb} bytes:\n{text}");
}
