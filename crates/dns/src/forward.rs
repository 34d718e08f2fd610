//! Forwarding of names outside the cluster zone to upstream resolvers (UDP, TCP on truncation), with loop
//! detection: upstreams that are our own listening address are refused up front, and a query we forwarded
//! that arrives back at our own listener marks that upstream as looping (it is then skipped).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RecordType};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Nameservers listed in a resolv.conf text, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let addr = words.next()?;
            // Strip an IPv6 zone ("fe80::1%eth0"): std cannot parse it and it is link-local anyway.
            let addr = addr.split('%').next()?;
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Whether sending to `upstream` would reach our own listener at `listen` (same port and the same address, or
/// we listen on the wildcard and the upstream is a loopback address of this host).
pub fn is_self(upstream: &SocketAddr, listen: &SocketAddr) -> bool {
    if upstream.port() != listen.port() {
        return false;
    }
    let l = listen.ip();
    let u = upstream.ip();
    u == l || (l.is_unspecified() && (u.is_loopback() || u.is_unspecified()))
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    looping: AtomicBool,
}

type InflightKey = (u16, Name, RecordType);

#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<Upstream>,
    /// Queries we have sent upstream and await: (our id, lower-cased name, type) → upstream index.
    inflight: Mutex<HashMap<InflightKey, usize>>,
    /// Loop probes (as CoreDNS's `loop` plugin): unique names sent to each upstream at start; seeing one arrive
    /// at our own listener means that upstream forwards back to us.
    probes: Mutex<HashMap<Name, usize>>,
    /// Entries in `inflight` + `probes`: lets the hot path skip both locks when nothing is being forwarded.
    pending: AtomicUsize,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no usable upstream resolver")]
    NoUpstream,
    #[error("upstream {0} timed out")]
    Timeout(SocketAddr),
    #[error("upstream {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {0} sent an undecodable or mismatched reply")]
    BadReply(SocketAddr),
}

impl Forwarder {
    /// `upstreams` minus those that are ourselves at one of `listen`.
    pub fn new(upstreams: Vec<SocketAddr>, listen: &[SocketAddr], timeout: Duration) -> Forwarder {
        let upstreams = upstreams
            .into_iter()
            .filter(|u| {
                let own = listen.iter().any(|l| is_self(u, l));
                if own {
                    tracing::warn!(upstream = %u, "not forwarding to an upstream that is this server (loop)");
                }
                !own
            })
            .map(|addr| Upstream {
                addr,
                looping: AtomicBool::new(false),
            })
            .collect();
        Forwarder {
            upstreams,
            inflight: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            timeout,
        }
    }

    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.iter().map(|u| u.addr).collect()
    }

    /// Called for every query our listener receives: true when it is one we forwarded ourselves (a loop).
    /// The upstream it went to is disabled.
    pub fn is_own_query(&self, request: &Message) -> bool {
        let Some(q) = request.queries.first() else {
            return false;
        };
        let lower = q.name().to_lowercase();
        let probe = self.probes.lock().get(&lower).copied();
        let key = (request.metadata.id, lower, q.query_type());
        let hit = probe.or_else(|| self.inflight.lock().get(&key).copied());
        if let Some(i) = hit {
            if let Some(u) = self.upstreams.get(i) {
                if !u.looping.swap(true, Ordering::Relaxed) {
                    tracing::error!(upstream = %u.addr, "forwarding loop detected: upstream sends our queries back to us; disabling it");
                }
            }
            return true;
        }
        false
    }

    /// Send a loop probe (`<random>.<random>.skiff-loop-probe.` HINFO) through every upstream. Upstreams that
    /// bring it back to us are disabled by [`Forwarder::is_own_query`]. Returns how many upstreams are looping.
    pub async fn probe_loops(&self) -> usize {
        let mut probes = Vec::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            let name = format!(
                "{:016x}.{:016x}.skiff-loop-probe.",
                rand::random::<u64>(),
                rand::random::<u64>()
            );
            let Ok(name) = Name::from_ascii(&name) else {
                continue;
            };
            self.pending.fetch_add(1, Ordering::AcqRel);
            self.probes.lock().insert(name.clone(), i);
            let q = crate::answer::query_message(rand::random(), name, RecordType::HINFO);
            probes.push((i, up.addr, q));
        }
        let results = futures::future::join_all(
            probes
                .iter()
                .map(|(i, addr, q)| self.exchange(*i, *addr, q)),
        )
        .await;
        drop(results);
        let mut table = self.probes.lock();
        for (_, _, q) in &probes {
            if let Some(q) = q.queries.first() {
                if table.remove(q.name()).is_some() {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        drop(table);
        self.upstreams
            .iter()
            .filter(|u| u.looping.load(Ordering::Relaxed))
            .count()
    }

    /// Forward `request` (its id is replaced on the wire and restored in the reply).
    pub async fn forward(&self, request: &Message) -> Result<Message, ForwardError> {
        let mut last = ForwardError::NoUpstream;
        for (i, up) in self.upstreams.iter().enumerate() {
            if up.looping.load(Ordering::Relaxed) {
                continue;
            }
            match self.exchange(i, up.addr, request).await {
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    tracing::debug!(error = %e, "upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn exchange(
        &self,
        index: usize,
        addr: SocketAddr,
        request: &Message,
    ) -> Result<Message, ForwardError> {
        let mut out = request.clone();
        let id: u16 = rand::random();
        out.metadata.id = id;
        let key = request
            .queries
            .first()
            .map(|q| (id, q.name().to_lowercase(), q.query_type()));
        if let Some(k) = &key {
            self.pending.fetch_add(1, Ordering::AcqRel);
            if self.inflight.lock().insert(k.clone(), index).is_some() {
                // Same id/name/type already in flight (a 1-in-65536 collision): one entry, one count.
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let result = tokio::time::timeout(self.timeout, self.exchange_inner(addr, &out)).await;
        if let Some(k) = &key {
            if self.inflight.lock().remove(k).is_some() {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let mut reply = match result {
            Ok(r) => r?,
            Err(_) => return Err(ForwardError::Timeout(addr)),
        };
        reply.metadata.id = request.metadata.id;
        Ok(reply)
    }

    async fn exchange_inner(
        &self,
        addr: SocketAddr,
        out: &Message,
    ) -> Result<Message, ForwardError> {
        let io = |source| ForwardError::Io { addr, source };
        let bytes = out.to_vec().map_err(|_| ForwardError::BadReply(addr))?;
        let bind: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind).await.map_err(io)?;
        sock.connect(addr).await.map_err(io)?;
        sock.send(&bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 65535];
        let reply = loop {
            let n = sock.recv(&mut buf).await.map_err(io)?;
            // Ignore stray datagrams that do not answer our query (spoofing / late replies).
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if matches_request(out, &m) {
                    break m;
                }
            }
        };
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        // Truncated: retry over TCP.
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::BadReply(addr))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await.map_err(io)?;
        let mut lenbuf = [0u8; 2];
        stream.read_exact(&mut lenbuf).await.map_err(io)?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(lenbuf))];
        stream.read_exact(&mut body).await.map_err(io)?;
        let m = Message::from_vec(&body).map_err(|_| ForwardError::BadReply(addr))?;
        if !matches_request(out, &m) {
            return Err(ForwardError::BadReply(addr));
        }
        Ok(m)
    }
}

fn matches_request(req: &Message, reply: &Message) -> bool {
    if reply.metadata.id != req.metadata.id {
        return false;
    }
    match (req.queries.first(), reply.queries.first()) {
        (Some(a), Some(b)) => {
            a.query_type() == b.query_type() && a.name().to_lowercase() == b.name().to_lowercase()
        }
        (None, _) => true,
        (Some(_), None) => false,
    }
}
