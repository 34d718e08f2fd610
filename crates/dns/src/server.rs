//! The I/O shell: UDP and TCP transports over the current [`Snapshot`] (swapped with arc-swap), forwarding,
//! metrics.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::answer::{answer, Answer, Forward};
use crate::forward::Forwarder;
use crate::metrics::{Metrics, Proto};
use crate::model::Snapshot;
use crate::udp::{Batch, BATCH};
use crate::wire::{encode, header_only_reply, parse_request, udp_limit, Parsed};

/// TCP connections idle longer than this are closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

pub struct DnsServer {
    snapshot: ArcSwap<Snapshot>,
    /// Bumped after every [`DnsServer::store`]; response caches remember the generation they were filled
    /// under and empty themselves when it moved, so a cached reply can never outlive its snapshot.
    generation: AtomicU64,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    /// The cache of the TCP path (and of [`DnsServer::handle`]), per transport; the UDP loop keeps its own,
    /// lock-free one.
    cache: parking_lot::Mutex<[ResponseCache; 2]>,
}

/// Encoded responses of locally answered requests, keyed by the request bytes after the id (flags, question
/// exactly as sent, so 0x20 mixed case gets its own entry echoing that case; EDNS). Valid for one snapshot
/// generation only: emptied when a new snapshot is published, so it can never serve stale data; TTLs are
/// not decremented because our answers are authoritative, not cached copies. (CoreDNS's default Corefile
/// runs its `cache` plugin for the same reason: the answer path is the cost.)
#[derive(Default)]
struct ResponseCache {
    generation: u64,
    entries: std::collections::HashSet<CachedReply>,
}

/// One cache entry: the request bytes after the id (the key) followed by the reply bytes after the id, in
/// one allocation (a hit touches one heap block, not two), with what the metrics need (a hit parses nothing).
/// Hashes and compares as its key, so the set is looked up with the request's `&[u8]`, allocation-free.
struct CachedReply {
    data: Box<[u8]>,
    key_len: usize,
    qtype: Option<RecordType>,
    rcode: ResponseCode,
}

impl CachedReply {
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len]
    }

    fn reply(&self) -> &[u8] {
        &self.data[self.key_len..]
    }
}

impl std::borrow::Borrow<[u8]> for CachedReply {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

// Hash and Eq agree with `[u8]`'s (the Borrow contract).
impl std::hash::Hash for CachedReply {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for CachedReply {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for CachedReply {}

/// Bound on cached responses; the cache is simply emptied when full (clients ask for a small working set).
const CACHE_ENTRIES: usize = 65_536;

impl ResponseCache {
    fn get(&self, generation: u64, request: &[u8]) -> Option<&CachedReply> {
        if self.generation != generation || request.len() < 12 {
            return None;
        }
        self.entries.get(&request[2..])
    }

    /// Remember `reply` to `request`, computed from a snapshot at least as new as `generation`.
    fn insert(&mut self, generation: u64, request: &[u8], reply: &[u8]) {
        if request.len() < 12 || reply.len() < 12 {
            return;
        }
        if self.generation != generation || self.entries.len() >= CACHE_ENTRIES {
            self.entries.clear();
            self.generation = generation;
        }
        let (qtype, rcode) = crate::metrics::reply_kind(reply);
        let mut data = Vec::with_capacity(request.len() + reply.len() - 4);
        data.extend_from_slice(&request[2..]);
        data.extend_from_slice(&reply[2..]);
        self.entries.replace(CachedReply {
            data: data.into_boxed_slice(),
            key_len: request.len() - 2,
            qtype,
            rcode,
        });
    }
}

/// Outcome of the synchronous part of handling a request.
enum Local {
    /// Answered from the snapshot: may be cached.
    Answered(Vec<u8>),
    /// Any other reply (FORMERR, loop SERVFAIL): never cached.
    Reply(Vec<u8>),
    Drop,
    Forward(Box<Message>, Box<Answer>),
}

impl DnsServer {
    pub fn new(initial: Snapshot, forwarder: Forwarder, metrics: Arc<Metrics>) -> Arc<DnsServer> {
        Arc::new(DnsServer {
            snapshot: ArcSwap::from_pointee(initial),
            generation: AtomicU64::new(1),
            forwarder,
            metrics,
            cache: parking_lot::Mutex::new(Default::default()),
        })
    }

    /// Publish a new snapshot; queries in flight keep the one they started with.
    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        // After the swap: a cache that still sees the old generation may at worst serve what a query that
        // loaded the old snapshot a moment earlier would have; once store() returns, no cache does.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The current generation; read it *before* computing an answer that will be cached under it.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Serve `request` from `cache` into `out` (id patched in, metrics counted) if it holds a reply valid
    /// for the current snapshot.
    fn reply_cached(
        &self,
        cache: &ResponseCache,
        request: &[u8],
        proto: Proto,
        start: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        // Loop detection must still see our own forwarded queries: those are never locally answered, so
        // never cached.
        let Some(hit) = cache.get(self.generation(), request) else {
            return false;
        };
        out.clear();
        out.extend_from_slice(&request[..2]);
        out.extend_from_slice(hit.reply());
        self.metrics
            .observe(proto, hit.qtype, hit.rcode, start.elapsed());
        true
    }

    /// The shared-cache path (TCP, [`DnsServer::handle`]).
    fn handle_local(&self, bytes: &[u8], proto: Proto, start: Instant) -> Local {
        let mut reply = Vec::new();
        if self.reply_cached(
            &self.cache.lock()[proto as usize],
            bytes,
            proto,
            start,
            &mut reply,
        ) {
            return Local::Reply(reply);
        }
        let generation = self.generation();
        let local = self.compute(bytes, proto, start);
        if let Local::Answered(reply) = &local {
            self.cache.lock()[proto as usize].insert(generation, bytes, reply);
        }
        local
    }

    /// Decode and answer `bytes` from the current snapshot (no cache).
    fn compute(&self, bytes: &[u8], proto: Proto, start: Instant) -> Local {
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
        Local::Answered(self.finish(&request, &ans.message, proto, start))
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
            Local::Answered(r) | Local::Reply(r) => Some(r),
            Local::Drop => None,
            Local::Forward(req, ans) => Some(self.complete_forward(&req, *ans, proto, start).await),
        }
    }
}

/// Serve UDP on `socket` until it fails (or this future is dropped).
///
/// The socket is taken out of the tokio reactor and served by a dedicated thread: datagrams are taken and
/// answered in batches (`recvmmsg` / `sendmmsg`, see [`crate::udp`]), cluster answers are computed inline
/// (no task per packet), repeated questions come from a response cache owned by that thread (no lock on the
/// hot path), and only forwarded queries become tasks on the runtime. Off the reactor, the kernel has no
/// epoll waiter to wake on the socket for every reply it frees, and no readiness bookkeeping is paid per
/// batch; when the socket is empty the thread waits inside `recvmmsg`, so a lone query is answered at once.
pub async fn serve_udp(server: Arc<DnsServer>, socket: UdpSocket) -> std::io::Result<()> {
    let socket = Arc::new(socket.into_std()?);
    // Blocking, so the thread waits inside recvmmsg itself (one syscall) when the socket is empty; the wait
    // is bounded so the stop flag is seen even if the shutdown wake-up were missed. Sends never block: they
    // pass MSG_DONTWAIT.
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_millis(UDP_WAIT_MS as u64)))?;
    let runtime = tokio::runtime::Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread_stop = stop.clone();
    let thread_socket = socket.clone();
    std::thread::Builder::new()
        .name("dns-udp".into())
        .spawn(move || {
            let r = udp_thread(&server, &thread_socket, &thread_stop, &runtime);
            let _ = done_tx.send(r);
        })?;
    // Dropping this future (server shut down) stops the thread and so closes the socket.
    let _stop = StopThread { stop, socket };
    match done_rx.await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("udp thread panicked")),
    }
}

/// Tells the UDP thread to finish: sets the flag, and shuts the socket's receive side, which wakes the
/// thread's `recvmmsg` at once.
struct StopThread {
    stop: Arc<AtomicBool>,
    socket: Arc<std::net::UdpSocket>,
}

impl Drop for StopThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // SAFETY: shutdown on a socket we own; on Linux it marks an unconnected UDP socket read-shut and
        // wakes its waiters (it reports ENOTCONN, which is expected and ignored).
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD);
        }
    }
}

/// Receive buffer asked for the UDP socket (the kernel default, ~208 KiB, holds only a few hundred queries):
/// a burst arriving while the serving thread is descheduled on a busy node is queued instead of dropped.
/// Memory is only used while datagrams wait. (nsd sets its query sockets' buffers the same way.)
const UDP_RCVBUF: usize = 1 << 20;

/// Longest the UDP thread sleeps without checking whether it should stop (the shutdown wakes it sooner).
const UDP_WAIT_MS: libc::c_int = 1000;

fn udp_thread(
    server: &Arc<DnsServer>,
    socket: &Arc<std::net::UdpSocket>,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<()> {
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    let mut cache = ResponseCache::default();
    let mut to_send = Vec::with_capacity(BATCH);
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let n = match batch.recv(fd) {
            Ok(n) => n,
            // The receive timeout: look at the stop flag and wait again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ICMP errors from earlier sends surface here on Linux; they are not fatal for the socket.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // Only a read-shut socket returns no datagram without blocking: we are being stopped.
            continue;
        }
        to_send.clear();
        // One clock read per batch: every request in it arrived by now, so a request's duration runs from
        // here to its reply (including the requests answered before it in the batch).
        let start = Instant::now();
        for i in 0..n {
            let (request, reply) = batch.slot(i);
            if server.reply_cached(&cache, request, Proto::Udp, start, reply) {
                to_send.push(i);
                continue;
            }
            let generation = server.generation();
            match server.compute(request, Proto::Udp, start) {
                Local::Answered(r) => {
                    cache.insert(generation, request, &r);
                    *reply = r;
                    to_send.push(i);
                }
                Local::Reply(r) => {
                    *reply = r;
                    to_send.push(i);
                }
                Local::Drop => {}
                Local::Forward(req, ans) => {
                    let peer = batch.peer(i);
                    let server = server.clone();
                    let socket = socket.clone();
                    runtime.spawn(async move {
                        let r = server.complete_forward(&req, *ans, Proto::Udp, start).await;
                        send_off_reactor(&socket, &r, &peer).await;
                    });
                }
            }
        }
        let mut sent = 0;
        while sent < to_send.len() {
            match batch.send(fd, &to_send[sent..]) {
                Ok(k) => sent += k.max(1),
                // Socket buffer full: wait until it drains, as the one-at-a-time send_to did.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_writable(fd, UDP_WAIT_MS)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // This one reply cannot be sent (sendmmsg reports the first failure only when nothing
                // before it went out): drop it, as send_to errors always were, and go on with the rest.
                Err(e) => {
                    tracing::trace!(error = %e, "udp reply not sent");
                    sent += 1;
                }
            }
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }
}

/// Wait (up to `timeout_ms`) until `fd` can take a datagram, or errors; the caller just retries.
fn wait_writable(fd: std::os::fd::RawFd, timeout_ms: libc::c_int) -> std::io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Send a forwarded query's reply on the UDP socket (blocking for receives, not reactor-registered) from a
/// task without blocking the runtime: MSG_DONTWAIT, and if the socket buffer is full, retry for a while.
async fn send_off_reactor(socket: &std::net::UdpSocket, reply: &[u8], peer: &crate::udp::Peer) {
    for _ in 0..100 {
        match peer.send(socket.as_raw_fd(), reply) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return,
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
    crate::udp::grow_receive_buffer(udp.as_raw_fd(), UDP_RCVBUF);
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
