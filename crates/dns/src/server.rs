//! The I/O shell: UDP and TCP transports over the current [`Snapshot`] (swapped with arc-swap), forwarding,
//! metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::answer::{answer, Answer, Forward};
use crate::forward::Forwarder;
use crate::metrics::{Metrics, Proto};
use crate::model::Snapshot;
use crate::wire::{encode, header_only_reply, parse_request, udp_limit, Parsed};

/// TCP connections idle longer than this are closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

pub struct DnsServer {
    snapshot: ArcSwap<Snapshot>,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    cache: parking_lot::Mutex<ResponseCache>,
}

/// Encoded responses of locally answered requests, keyed by the request bytes after the id (flags, question,
/// EDNS) and transport. Valid for one snapshot only: emptied when a new snapshot is published, so it can
/// never serve stale data; TTLs are not decremented because our answers are authoritative, not cached copies.
/// (CoreDNS's default Corefile runs its `cache` plugin for the same reason: the answer path is the cost.)
struct ResponseCache {
    /// The snapshot the entries were computed from (held, so its address cannot be reused by a newer one).
    snapshot: Option<Arc<Snapshot>>,
    entries: CacheMap,
}

/// (transport, request bytes after the id) → response bytes after the id.
type CacheMap = std::collections::HashMap<(Proto, Box<[u8]>), Box<[u8]>>;

impl ResponseCache {
    fn is_for(&self, snap: &Arc<Snapshot>) -> bool {
        self.snapshot.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap))
    }
}

/// Bound on cached responses; the cache is simply emptied when full (clients ask for a small working set).
const CACHE_ENTRIES: usize = 65_536;

/// Outcome of the synchronous part of handling a request.
enum Local {
    Reply(Vec<u8>),
    Drop,
    Forward(Box<Message>, Box<Answer>),
}

impl DnsServer {
    pub fn new(initial: Snapshot, forwarder: Forwarder, metrics: Arc<Metrics>) -> Arc<DnsServer> {
        Arc::new(DnsServer {
            snapshot: ArcSwap::from_pointee(initial),
            forwarder,
            metrics,
            cache: parking_lot::Mutex::new(ResponseCache {
                snapshot: None,
                entries: std::collections::HashMap::new(),
            }),
        })
    }

    /// Publish a new snapshot; queries in flight keep the one they started with.
    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn handle_local(&self, bytes: &[u8], proto: Proto, start: Instant) -> Local {
        if let Some(reply) = self.cached(bytes, proto, start) {
            return Local::Reply(reply);
        }
        let request = match parse_request(bytes) {
            Parsed::Query(m) => m,
            Parsed::Reply(r) => {
                self.metrics
                    .observe(proto, None, ResponseCode::FormErr, start.elapsed());
                return Local::Reply(r);
            }
            Parsed::Drop => return Local::Drop,
        };
        if self.forwarder.is_own_query(&request) {
            self.metrics.loop_detected();
            self.metrics
                .observe(proto, None, ResponseCode::ServFail, start.elapsed());
            return Local::Reply(header_only_reply(bytes, ResponseCode::ServFail));
        }
        let snap = self.snapshot.load();
        let ans = answer(&snap, &request);
        if ans.forward != Forward::None {
            return Local::Forward(request, Box::new(ans));
        }
        let reply = self.finish(&request, &ans.message, proto, start);
        if reply.len() >= 12 && bytes.len() >= 12 {
            let mut cache = self.cache.lock();
            if !cache.is_for(&snap) || cache.entries.len() >= CACHE_ENTRIES {
                cache.entries.clear();
                cache.snapshot = Some(Arc::clone(&snap));
            }
            cache
                .entries
                .insert((proto, bytes[2..].into()), reply[2..].into());
        }
        Local::Reply(reply)
    }

    /// A cached reply for exactly these request bytes (id patched), if the snapshot has not changed since.
    fn cached(&self, bytes: &[u8], proto: Proto, start: Instant) -> Option<Vec<u8>> {
        if bytes.len() < 12 {
            return None;
        }
        let snap = self.snapshot.load();
        let cache = self.cache.lock();
        if !cache.is_for(&snap) {
            return None;
        }
        // Loop detection must still see our own forwarded queries: those are never locally answered, so
        // never cached.
        let hit = cache
            .entries
            .get(&(proto, Box::<[u8]>::from(&bytes[2..])))?;
        let mut reply = Vec::with_capacity(hit.len() + 2);
        reply.extend_from_slice(&bytes[..2]);
        reply.extend_from_slice(hit);
        drop(cache);
        self.metrics.observe_cached(proto, &reply, start.elapsed());
        Some(reply)
    }

    fn finish(
        &self,
        request: &Message,
        response: &Message,
        proto: Proto,
        start: Instant,
    ) -> Vec<u8> {
        let limit = match proto {
            Proto::Udp => udp_limit(request),
            Proto::Tcp => usize::from(u16::MAX),
        };
        let bytes = encode(response, limit);
        let qtype = request.queries.first().map(|q| q.query_type());
        self.metrics.observe(
            proto,
            qtype,
            response.metadata.response_code,
            start.elapsed(),
        );
        bytes
    }

    async fn complete_forward(
        &self,
        request: &Message,
        ans: Answer,
        proto: Proto,
        start: Instant,
    ) -> Vec<u8> {
        let mut response = ans.message;
        match ans.forward {
            Forward::None => {}
            Forward::Query => match self.forwarder.forward(request).await {
                Ok(mut reply) => {
                    self.metrics.forwarded(true);
                    // Relay as is, but with the client's header bits restored where they belong.
                    reply.metadata.id = request.metadata.id;
                    response = reply;
                }
                Err(e) => {
                    self.metrics.forwarded(false);
                    tracing::debug!(error = %e, "forwarding failed");
                    response.metadata.response_code = ResponseCode::ServFail;
                }
            },
            Forward::Target(target) => {
                let qtype = request.queries.first().map(|q| q.query_type());
                if let Some(qtype) = qtype {
                    let q = crate::answer::query_message(request.metadata.id, target, qtype);
                    match self.forwarder.forward(&q).await {
                        Ok(reply) => {
                            self.metrics.forwarded(true);
                            response.add_answers(reply.answers);
                            response.metadata.response_code = reply.metadata.response_code;
                        }
                        Err(e) => {
                            self.metrics.forwarded(false);
                            tracing::debug!(error = %e, "resolving ExternalName target upstream failed");
                        }
                    }
                }
            }
        }
        self.finish(request, &response, proto, start)
    }

    /// Handle one request fully (forwarding included); `None` means send nothing.
    pub async fn handle(&self, bytes: &[u8], proto: Proto) -> Option<Vec<u8>> {
        let start = Instant::now();
        match self.handle_local(bytes, proto, start) {
            Local::Reply(r) => Some(r),
            Local::Drop => None,
            Local::Forward(req, ans) => Some(self.complete_forward(&req, *ans, proto, start).await),
        }
    }
}

/// Serve UDP on `socket` until it fails. Cluster answers are computed inline on the receive loop (no task per
/// packet); only forwarded queries get a task.
pub async fn serve_udp(server: Arc<DnsServer>, socket: Arc<UdpSocket>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier sends surface here on Linux; they are not fatal for the socket.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        match server.handle_local(&buf[..n], Proto::Udp, start) {
            Local::Reply(r) => {
                let _ = socket.send_to(&r, peer).await;
            }
            Local::Drop => {}
            Local::Forward(req, ans) => {
                let server = server.clone();
                let socket = socket.clone();
                tokio::spawn(async move {
                    let r = server.complete_forward(&req, *ans, Proto::Udp, start).await;
                    let _ = socket.send_to(&r, peer).await;
                });
            }
        }
    }
}

/// Serve DNS over TCP (RFC 7766 framing; several queries per connection, answered in order).
pub async fn serve_tcp(server: Arc<DnsServer>, listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(server, stream).await {
                tracing::trace!(%peer, error = %e, "tcp connection ended");
            }
        });
    }
}

async fn tcp_connection(server: Arc<DnsServer>, mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    loop {
        let mut lenbuf = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut lenbuf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let len = usize::from(u16::from_be_bytes(lenbuf));
        let mut body = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut body)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Ok(()),
        }
        let Some(reply) = server.handle(&body, Proto::Tcp).await else {
            // Undecodable garbage on a stream: close it, as there is no way to resync framing meaningfully.
            return Ok(());
        };
        let Ok(rlen) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&rlen.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

/// Bind UDP and TCP on `addr` (port 0: an ephemeral port, the same for both) and serve `server` on them.
/// Returns the bound address.
pub async fn bind_and_serve(
    server: Arc<DnsServer>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    // Pick the port with TCP first, then bind UDP on the same port (retry a few times on a race).
    let mut attempt = 0;
    let (tcp, udp) = loop {
        let tcp = TcpListener::bind(addr).await?;
        let bound = tcp.local_addr()?;
        match UdpSocket::bind(bound).await {
            Ok(udp) => break (tcp, udp),
            Err(e) if addr.port() == 0 && attempt < 10 => {
                attempt += 1;
                tracing::debug!(error = %e, "udp port taken, retrying");
            }
            Err(e) => return Err(e),
        }
    };
    let bound = tcp.local_addr()?;
    let udp = Arc::new(udp);
    let handle = tokio::spawn(async move {
        let u = tokio::spawn(serve_udp(server.clone(), udp));
        let t = tokio::spawn(serve_tcp(server, tcp));
        let (u, t) = tokio::join!(u, t);
        if let Ok(Err(e)) = u {
            tracing::error!(error = %e, "udp server failed");
        }
        if let Ok(Err(e)) = t {
            tracing::error!(error = %e, "tcp server failed");
        }
    });
    Ok((bound, handle))
}

impl DnsServer {
    /// The upstream resolvers in use (after excluding ourselves).
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.forwarder.upstreams()
    }

    /// Run the forwarding loop probe (see [`Forwarder::probe_loops`]).
    pub async fn probe_loops(&self) -> usize {
        self.forwarder.probe_loops().await
    }
}
