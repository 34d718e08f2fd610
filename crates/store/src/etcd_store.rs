//! The etcd backend: every operation is one etcd request, so several API servers can share one etcd cluster.
//!
//! Mapping (as kube-apiserver's etcd3 storage does it): the store revision is etcd's revision; create is a
//! transaction on `create_revision == 0`, update and conditional delete on `mod_revision == expected`, the
//! failure branch reads the key so the caller learns why; lists are ranges read at one revision (later pages
//! pinned to the first page's revision); watches start at `after + 1` with previous values, resume on another
//! member after a connection loss from the last delivered revision, and report compaction as
//! [`Error::TooOld`].

use crate::{BoxFuture, Error, Event, EventType, KeyValue, ListOptions, ListResult, Store, Watch};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Keys per range request of a list: bounds the gRPC message size (etcd's default limit is 1.5 MiB per
/// request and tonic's 4 MiB per response) whatever the object size.
const LIST_PAGE: i64 = 500;

/// Client TLS for etcd (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the etcd members (`http://host:2379` or `https://...`).
    pub endpoints: Vec<String>,
    /// Prepended to every key (tests share one etcd with a prefix each; empty in production: the API's keys
    /// already start with `/registry`, as upstream's `--etcd-prefix`).
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// Deadline of one unary request (a dead member must not hang a write forever).
    pub request_timeout: Duration,
    /// Events buffered per watcher before a slow watcher is cut off.
    pub watcher_buffer: usize,
    /// Compact etcd's history to the revision seen one interval earlier, every interval (kube-apiserver's
    /// `--etcd-compaction-interval`, 5 minutes); None: never (someone else compacts).
    pub compaction_interval: Option<Duration>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: String::new(),
            tls: None,
            request_timeout: Duration::from_secs(10),
            watcher_buffer: 20_000,
            compaction_interval: Some(Duration::from_secs(300)),
        }
    }
}

/// The etcd-backed [`Store`].
pub struct EtcdStore {
    client: Client,
    prefix: String,
    opts: EtcdOptions,
    /// Highest etcd revision seen in any response (what `revision()` reports).
    revision: Arc<AtomicU64>,
    compactor: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(c) = self.compactor.take() {
            c.abort();
        }
    }
}

/// Every `every`: compact to the revision current one period before. Several API servers doing so at once
/// is harmless (compacting to an already compacted revision fails and is ignored).
async fn compact_loop(mut kv: KvClient, every: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        let current = match kv.get("/", Some(GetOptions::new().with_count_only())).await {
            Ok(r) => r.header().map(|h| h.revision()),
            Err(e) => {
                tracing::debug!(error = %e, "etcd compaction: reading the revision failed");
                None
            }
        };
        if let Some(rev) = previous {
            match kv.compact(rev, None).await {
                Ok(_) => tracing::debug!(revision = rev, "etcd history compacted"),
                Err(e) if is_compacted(&e) => {}
                Err(e) => tracing::warn!(error = %e, "etcd compaction failed"),
            }
        }
        previous = current;
    }
}

fn backend<E: std::fmt::Display>(e: E) -> Error {
    Error::Backend(e.to_string())
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

fn read_file(p: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(p).map_err(|e| Error::Backend(format!("reading {}: {e}", p.display())))
}

/// The end of the range of keys starting with `prefix` (etcd's prefix end: last byte below 0xff + 1).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

impl EtcdStore {
    /// Connect to the members; fails when none answers within the request timeout.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, Error> {
        if opts.endpoints.is_empty() {
            return Err(Error::Backend("no etcd endpoints given".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member without a leader cancels its watches (they resume on another member) instead of
            // silently delivering nothing.
            .with_require_leader(true);
        if let Some(tls) = &opts.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                t = t.ca_certificate(Certificate::from_pem(read_file(ca)?));
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(c), Some(k)) => {
                    t = t.identity(Identity::from_pem(read_file(c)?, read_file(k)?));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::Backend(
                        "--etcd-certfile and --etcd-keyfile go together".into(),
                    ))
                }
            }
            co = co.with_tls(t);
        }
        // The URL scheme decides TLS (https with the options above), as the upstream flags.
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        let client =
            tokio::time::timeout(opts.request_timeout, Client::connect(endpoints, Some(co)))
                .await
                .map_err(|_| Error::Backend("connecting to etcd: timed out".into()))?
                .map_err(|e| Error::Backend(format!("connecting to etcd: {e}")))?;
        let mut s = Self {
            compactor: None,
            prefix: opts.prefix.clone(),
            opts,
            revision: Arc::new(AtomicU64::new(0)),
            client,
        };
        // One read proves a member answers and learns the current revision.
        s.get("/").await.map_err(|e| {
            Error::Backend(format!(
                "etcd at {}: {}",
                s.opts.endpoints.join(","),
                match e {
                    Error::Backend(m) => m,
                    e => e.to_string(),
                }
            ))
        })?;
        if let Some(every) = s.opts.compaction_interval {
            s.compactor = Some(tokio::spawn(compact_loop(s.kv(), every)));
        }
        Ok(s)
    }

    /// Compact etcd's history up to the current revision (older revisions become `TooOld` for lists and
    /// watches). Returns that revision.
    pub async fn compact(&self) -> Result<u64, Error> {
        let r = self
            .timed(
                self.kv()
                    .get("/", Some(GetOptions::new().with_count_only())),
            )
            .await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        self.timed(self.kv().compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        ))
        .await?;
        Ok(rev.max(0) as u64)
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client()
    }

    fn full(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn seen(&self, rev: i64) -> u64 {
        let r = rev.max(0) as u64;
        self.revision.fetch_max(r, Ordering::Relaxed);
        r
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.opts.request_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_compacted(&e) => Err(Error::TooOld {
                requested: 0,
                oldest: 0,
            }),
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => Err(Error::Backend("etcd request timed out".into())),
        }
    }

    async fn get_inner(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let r = self.timed(self.kv().get(self.full(key), None)).await?;
        if let Some(h) = r.header() {
            self.seen(h.revision());
        }
        Ok(r.kvs().first().map(|kv| convert(&self.prefix, kv)))
    }

    async fn list_inner(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, Error> {
        let full_prefix = self.full(prefix);
        let end = prefix_end(&full_prefix);
        let mut start = match &opts.start_after {
            // Strictly after: the key followed by a NUL byte is the next possible key.
            Some(k) if k.as_str() >= prefix => {
                let mut s = self.full(k);
                s.push(0);
                s
            }
            _ => full_prefix.clone(),
        };
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut pinned = opts.revision.map(|r| r as i64).unwrap_or(0);
        let mut items = Vec::new();
        let mut remaining = 0usize;
        loop {
            let want = (limit - items.len()).min(LIST_PAGE as usize) as i64;
            let mut go = GetOptions::new()
                .with_range(end.clone())
                .with_limit(want.max(1));
            if pinned > 0 {
                go = go.with_revision(pinned);
            }
            let r = match self.timed(self.kv().get(start.clone(), Some(go))).await {
                Err(Error::TooOld { .. }) => {
                    return Err(Error::TooOld {
                        requested: pinned.max(0) as u64,
                        oldest: 0,
                    })
                }
                r => r?,
            };
            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
            if pinned == 0 {
                // Every later page reads the same revision: one consistent list.
                pinned = rev;
            }
            self.seen(rev);
            let kvs = r.kvs();
            let full_page = items.len() + kvs.len() >= limit;
            for kv in kvs {
                if items.len() < limit {
                    items.push(convert(&self.prefix, kv));
                }
            }
            if !r.more() || kvs.is_empty() {
                break;
            }
            if full_page {
                // `count` is the number of keys in [start, end) at that revision.
                remaining = (r.count() as usize).saturating_sub(kvs.len());
                break;
            }
            if let Some(last) = kvs.last() {
                start = last.key().to_vec();
                start.push(0);
            }
        }
        Ok(ListResult {
            items,
            revision: pinned.max(0) as u64,
            remaining,
        })
    }

    async fn create_inner(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, Error> {
        let k = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), value.clone(), None)])
            .or_else([TxnOp::get(k, None)]);
        let r = self.timed(self.kv().txn(txn)).await?;
        let rev = self.seen(r.header().map(|h| h.revision()).unwrap_or(0));
        if !r.succeeded() {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        Ok(KeyValue {
            key: key.to_string(),
            value: Arc::from(value),
            create_revision: rev,
            mod_revision: rev,
        })
    }

    /// The current mod revision of `key` from a failed transaction's read branch.
    fn current_of(&self, r: &etcd_client::TxnResponse) -> Option<KeyValue> {
        r.op_responses().iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| convert(&self.prefix, kv)),
            _ => None,
        })
    }

    async fn update_inner(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: u64,
    ) -> Result<KeyValue, Error> {
        let k = self.full(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                expected as i64,
            )])
            .and_then([TxnOp::put(
                k.clone(),
                value.clone(),
                Some(etcd_client::PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(k, None)]);
        let r = self.timed(self.kv().txn(txn)).await?;
        let rev = self.seen(r.header().map(|h| h.revision()).unwrap_or(0));
        if !r.succeeded() {
            return Err(match self.current_of(&r) {
                Some(cur) => Error::Conflict {
                    key: key.to_string(),
                    expected,
                    current: Some(cur.mod_revision),
                },
                None => Error::NotFound(key.to_string()),
            });
        }
        let create_revision = r
            .op_responses()
            .iter()
            .find_map(|op| match op {
                TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.create_revision().max(0) as u64),
                _ => None,
            })
            .unwrap_or(rev);
        Ok(KeyValue {
            key: key.to_string(),
            value: Arc::from(value),
            create_revision,
            mod_revision: rev,
        })
    }

    async fn delete_inner(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, Error> {
        let k = self.full(key);
        let del = TxnOp::delete(
            k.clone(),
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        );
        // Without an expected revision the compare is "the key exists".
        let cmp = match expected {
            Some(e) => Compare::mod_revision(k.clone(), CompareOp::Equal, e as i64),
            None => Compare::create_revision(k.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([del])
            .or_else([TxnOp::get(k, None)]);
        let r = self.timed(self.kv().txn(txn)).await?;
        let rev = self.seen(r.header().map(|h| h.revision()).unwrap_or(0));
        if !r.succeeded() {
            return Err(match self.current_of(&r) {
                Some(cur) => Error::Conflict {
                    key: key.to_string(),
                    expected: expected.unwrap_or(0),
                    current: Some(cur.mod_revision),
                },
                None => Error::NotFound(key.to_string()),
            });
        }
        let prev = r.op_responses().iter().find_map(|op| match op {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().map(|kv| convert(&self.prefix, kv)),
            _ => None,
        });
        let mut kv = prev.ok_or_else(|| Error::NotFound(key.to_string()))?;
        kv.mod_revision = rev;
        Ok(kv)
    }

    /// Is revision `after` still in etcd's history? A range read at a compacted revision fails; a future one
    /// is fine for a watch (it waits).
    async fn check_history(&self, after: u64) -> Result<(), Error> {
        if after == 0 {
            return Ok(());
        }
        let go = GetOptions::new()
            .with_revision(after as i64)
            .with_keys_only()
            .with_limit(1);
        match tokio::time::timeout(
            self.opts.request_timeout,
            self.kv().get(self.full("/"), Some(go)),
        )
        .await
        {
            Ok(Err(e)) if is_compacted(&e) => Err(Error::TooOld {
                requested: after,
                oldest: self.compact_revision(after).await,
            }),
            _ => Ok(()),
        }
    }

    /// etcd's compacted revision, learnt from the cancel a watch at `after + 1` gets (0 when unknown).
    async fn compact_revision(&self, after: u64) -> u64 {
        let mut wc = self.client.watch_client();
        let opts = WatchOptions::new().with_start_revision(after as i64 + 1);
        let f = async {
            let mut s = wc.watch(self.full("/"), Some(opts)).await.ok()?;
            while let Ok(Some(r)) = s.message().await {
                if r.compact_revision() > 0 {
                    return Some(r.compact_revision() as u64);
                }
                if r.canceled() {
                    return None;
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(2), f)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

fn convert(prefix: &str, kv: &etcd_client::KeyValue) -> KeyValue {
    let raw = kv.key();
    let key = raw.strip_prefix(prefix.as_bytes()).unwrap_or(raw);
    KeyValue {
        key: String::from_utf8_lossy(key).into_owned(),
        value: Arc::from(kv.value()),
        create_revision: kv.create_revision().max(0) as u64,
        mod_revision: kv.mod_revision().max(0) as u64,
    }
}

fn convert_event(prefix: &str, ev: &etcd_client::Event) -> Option<Event> {
    let kv = ev.kv()?;
    let prev = ev.prev_kv().map(|p| convert(prefix, p));
    match ev.event_type() {
        etcd_client::EventType::Put => Some(Event {
            kind: EventType::Put,
            kv: convert(prefix, kv),
            // etcd sends no previous value on create.
            prev: if kv.version() == 1 { None } else { prev },
        }),
        etcd_client::EventType::Delete => {
            // The delete's kv carries only the key and the delete revision; the value is the previous one.
            let mut k = prev.clone().unwrap_or_else(|| convert(prefix, kv));
            k.mod_revision = kv.mod_revision().max(0) as u64;
            Some(Event {
                kind: EventType::Delete,
                kv: k,
                prev,
            })
        }
    }
}

/// Feed `tx` with the events under `key..end` after `after`, reconnecting (to any member) from the last
/// delivered revision when the stream breaks, until the receiver goes away or history is compacted.
async fn pump(
    client: Client,
    prefix: String,
    key: Vec<u8>,
    end: Vec<u8>,
    mut after: u64,
    tx: mpsc::Sender<Result<Event, Error>>,
    revision: Arc<AtomicU64>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut wc = client.watch_client();
        let opts = WatchOptions::new()
            .with_range(end.clone())
            .with_start_revision(after as i64 + 1)
            .with_prev_key();
        let stream = tokio::select! {
            r = wc.watch(key.clone(), Some(opts)) => r,
            _ = tx.closed() => return,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch: connect failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tx.closed() => return,
            };
            match msg {
                Ok(Some(r)) => {
                    backoff = Duration::from_millis(50);
                    if r.compact_revision() > 0 {
                        let _ = tx
                            .send(Err(Error::TooOld {
                                requested: after,
                                oldest: r.compact_revision() as u64,
                            }))
                            .await;
                        return;
                    }
                    if r.canceled() {
                        // Cancelled for another reason (e.g. the member lost its leader): resume.
                        break;
                    }
                    for ev in r.events() {
                        let Some(e) = convert_event(&prefix, ev) else {
                            continue;
                        };
                        let rev = e.revision();
                        if rev <= after {
                            continue;
                        }
                        // A watcher that cannot keep up is cut off; its client re-lists.
                        if tx.try_send(Ok(e)).is_err() {
                            return;
                        }
                        after = rev;
                        revision.fetch_max(rev, Ordering::Relaxed);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, after, "etcd watch broke, resuming");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, Error>> {
        Box::pin(self.get_inner(key))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
    ) -> BoxFuture<'a, Result<ListResult, Error>> {
        Box::pin(self.list_inner(prefix, opts))
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.create_inner(key, value))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.update_inner(key, value, expected))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.delete_inner(key, expected))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: u64) -> BoxFuture<'a, Result<Watch, Error>> {
        Box::pin(async move {
            self.check_history(after).await?;
            let key = self.full(prefix);
            let end = prefix_end(&key);
            let (tx, rx) = mpsc::channel(self.opts.watcher_buffer.max(1));
            tokio::spawn(pump(
                self.client.clone(),
                self.prefix.clone(),
                key,
                end,
                after,
                tx,
                self.revision.clone(),
            ));
            Ok(Watch::from_receiver(rx))
        })
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
