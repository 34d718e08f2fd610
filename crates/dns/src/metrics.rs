//! Prometheus metrics named as CoreDNS's, kept in atomics (the hot path only increments counters), and a
//! tiny HTTP endpoint serving `/metrics`, `/health` and `/ready`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Record types CoreDNS reports by name; everything else is "other".
const TYPES: [&str; 10] = [
    "A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "other",
];
const RCODES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE",
];
/// CoreDNS's buckets: exponential from 0.25 ms, factor 2, 16 buckets.
const BUCKETS: usize = 16;

pub fn type_index(t: RecordType) -> usize {
    match t {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::CNAME => 2,
        RecordType::MX => 3,
        RecordType::NS => 4,
        RecordType::PTR => 5,
        RecordType::SOA => 6,
        RecordType::SRV => 7,
        RecordType::TXT => 8,
        _ => 9,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp = 0,
    Tcp = 1,
}

#[derive(Debug)]
pub struct Metrics {
    server: parking_lot::Mutex<String>,
    requests: [[AtomicU64; TYPES.len()]; 2],
    responses: [AtomicU64; RCODES.len() + 1],
    buckets: [[AtomicU64; BUCKETS]; TYPES.len()],
    sum_nanos: [AtomicU64; TYPES.len()],
    count: [AtomicU64; TYPES.len()],
    forward_requests: AtomicU64,
    forward_failures: AtomicU64,
    loops: AtomicU64,
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Metrics {
    /// `server` is CoreDNS's `server` label, e.g. `dns://:53`.
    pub fn new(server: String) -> Metrics {
        Metrics {
            server: parking_lot::Mutex::new(server),
            requests: [zeros(), zeros()],
            responses: zeros(),
            buckets: std::array::from_fn(|_| zeros()),
            sum_nanos: zeros(),
            count: zeros(),
            forward_requests: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            loops: AtomicU64::new(0),
        }
    }

    pub fn observe(
        &self,
        proto: Proto,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        elapsed: Duration,
    ) {
        let t = qtype.map(type_index).unwrap_or(TYPES.len() - 1);
        self.requests[proto as usize][t].fetch_add(1, Ordering::Relaxed);
        let r = usize::from(u16::from(rcode)).min(RCODES.len());
        self.responses[r].fetch_add(1, Ordering::Relaxed);
        let nanos = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.sum_nanos[t].fetch_add(nanos, Ordering::Relaxed);
        self.count[t].fetch_add(1, Ordering::Relaxed);
        // Bucket i has upper bound 0.25ms * 2^i; store non-cumulative, accumulate when rendering.
        let mut bound = 250_000u64;
        for b in &self.buckets[t] {
            if nanos <= bound {
                b.fetch_add(1, Ordering::Relaxed);
                return;
            }
            bound *= 2;
        }
    }

    pub fn forwarded(&self, ok: bool) {
        self.forward_requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.forward_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn loop_detected(&self) {
        self.loops.fetch_add(1, Ordering::Relaxed);
    }

    /// Set the `server` label (once the listen port is known).
    pub fn set_server(&self, server: String) {
        *self.server.lock() = server;
    }

    pub fn requests_total(&self) -> u64 {
        self.requests
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let s = self.server.lock().clone();
        let mut out = String::new();
        out.push_str("# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.\n");
        out.push_str("# TYPE coredns_dns_requests_total counter\n");
        for (p, proto) in ["udp", "tcp"].iter().enumerate() {
            for (t, ty) in TYPES.iter().enumerate() {
                let v = self.requests[p][t].load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "coredns_dns_requests_total{{server=\"{s}\",zone=\".\",view=\"\",proto=\"{proto}\",family=\"1\",type=\"{ty}\"}} {v}"
                    );
                }
            }
        }
        out.push_str("# HELP coredns_dns_responses_total Counter of response status codes.\n");
        out.push_str("# TYPE coredns_dns_responses_total counter\n");
        for (r, c) in self.responses.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                let name = RCODES.get(r).copied().unwrap_or("other");
                let _ = writeln!(
                    out,
                    "coredns_dns_responses_total{{server=\"{s}\",zone=\".\",view=\"\",rcode=\"{name}\",plugin=\"\"}} {v}"
                );
            }
        }
        out.push_str("# HELP coredns_dns_request_duration_seconds Histogram of the time (in seconds) each request took per zone.\n");
        out.push_str("# TYPE coredns_dns_request_duration_seconds histogram\n");
        for (t, ty) in TYPES.iter().enumerate() {
            let count = self.count[t].load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let labels = format!("server=\"{s}\",zone=\".\",view=\"\",type=\"{ty}\"");
            let mut cumulative = 0;
            let mut bound = 0.00025f64;
            for b in &self.buckets[t] {
                cumulative += b.load(Ordering::Relaxed);
                let _ = writeln!(out, "coredns_dns_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
                bound *= 2.0;
            }
            let _ = writeln!(
                out,
                "coredns_dns_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let sum = self.sum_nanos[t].load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "coredns_dns_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "coredns_dns_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        out.push_str(
            "# HELP coredns_forward_requests_total Counter of requests made per upstream.\n",
        );
        out.push_str("# TYPE coredns_forward_requests_total counter\n");
        let _ = writeln!(
            out,
            "coredns_forward_requests_total {}",
            self.forward_requests.load(Ordering::Relaxed)
        );
        out.push_str("# HELP coredns_forward_responses_failed_total Forwarded requests that got no usable answer.\n");
        out.push_str("# TYPE coredns_forward_responses_failed_total counter\n");
        let _ = writeln!(
            out,
            "coredns_forward_responses_failed_total {}",
            self.forward_failures.load(Ordering::Relaxed)
        );
        out.push_str("# HELP skiff_dns_forward_loops_total Forwarded queries that came back to this server.\n");
        out.push_str("# TYPE skiff_dns_forward_loops_total counter\n");
        let _ = writeln!(
            out,
            "skiff_dns_forward_loops_total {}",
            self.loops.load(Ordering::Relaxed)
        );
        out
    }
}

/// The question type and the rcode of an encoded reply, as the request metrics label it.
pub fn reply_kind(reply: &[u8]) -> (Option<RecordType>, ResponseCode) {
    let rcode = ResponseCode::from(0, reply.get(3).copied().unwrap_or(0) & 0x0f);
    // The question's type follows its name (labels up to the zero byte), right after the header.
    let qtype = reply.get(12..).and_then(|q| {
        let mut i = 0;
        while i < q.len() && q[i] != 0 {
            i += usize::from(q[i]) + 1;
        }
        let t = q.get(i + 1..i + 3)?;
        Some(RecordType::from(u16::from_be_bytes([t[0], t[1]])))
    });
    (qtype, rcode)
}

/// Serve `/metrics` (Prometheus), `/health` (always OK) and `/ready` (OK once `ready()` is true).
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
) -> std::io::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/health" => ("200 OK", "OK".to_string()),
                "/ready" if ready() => ("200 OK", "OK".to_string()),
                "/ready" => ("503 Service Unavailable", "not synced".to_string()),
                _ => ("404 Not Found", "not found".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}
