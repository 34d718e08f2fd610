//! The embedded backend: redb for durability, an in-memory copy of the data for reads, one writer thread that
//! group-commits concurrent writes into a single durable redb transaction.
//!
//! Why an in-memory copy: lists must be consistent with one revision and fast (10,000 objects well under
//! 100 ms); reading them from memory under a read lock gives both. The writer thread is the only mutator, so
//! conditional writes are checked against memory plus the not-yet-committed effects of its current batch.

use crate::{BoxFuture, Error, Event, EventType, KeyValue, ListOptions, ListResult, Store, Watch};
use parking_lot::RwLock;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Most operations folded into one redb transaction.
const MAX_BATCH: usize = 512;

#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// Events kept in memory for watch resume; older revisions get `TooOld`.
    pub history_window: usize,
    /// Events buffered per watcher before a slow watcher is cut off.
    pub watcher_buffer: usize,
    /// redb page cache size in bytes.
    pub cache_size: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            history_window: 20_000,
            watcher_buffer: 20_000,
            cache_size: 8 << 20,
        }
    }
}

#[derive(Clone)]
struct Entry {
    value: Arc<[u8]>,
    create_revision: u64,
    mod_revision: u64,
}

impl Entry {
    fn kv(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Result<Event, Error>>,
}

struct State {
    data: BTreeMap<String, Entry>,
    revision: u64,
    history: VecDeque<Event>,
    /// Events with revision <= compacted are no longer in `history`.
    compacted: u64,
    watchers: Vec<Watcher>,
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: u64,
    },
    Delete {
        key: String,
        expected: Option<u64>,
    },
}

type Reply = oneshot::Sender<Result<KeyValue, Error>>;

struct Request {
    op: Op,
    reply: Reply,
}

struct Shared {
    state: RwLock<State>,
    opts: RedbOptions,
}

/// The redb-backed [`Store`].
pub struct RedbStore {
    shared: Arc<Shared>,
    writer: std::sync::mpsc::Sender<Request>,
}

fn backend<E: std::fmt::Display>(e: E) -> Error {
    Error::Backend(e.to_string())
}

fn encode(create: u64, modr: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&create.to_le_bytes());
    v.extend_from_slice(&modr.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn decode(raw: &[u8]) -> Result<Entry, Error> {
    if raw.len() < 16 {
        return Err(Error::Backend("corrupt record (short header)".into()));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&raw[0..8]);
    let create_revision = u64::from_le_bytes(a);
    a.copy_from_slice(&raw[8..16]);
    let mod_revision = u64::from_le_bytes(a);
    Ok(Entry {
        value: Arc::from(&raw[16..]),
        create_revision,
        mod_revision,
    })
}

impl RedbStore {
    /// Open (or create) the store file at `path` and start its writer thread.
    pub fn open(path: &Path, opts: RedbOptions) -> Result<Self, Error> {
        let db = redb::Database::builder()
            .set_cache_size(opts.cache_size)
            .create(path)
            .map_err(backend)?;
        // Make sure the tables exist so read transactions can open them.
        {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.commit().map_err(backend)?;
        }
        let mut data = BTreeMap::new();
        let revision;
        {
            let txn = db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            for item in kv.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                data.insert(k.value().to_string(), decode(v.value())?);
            }
            let meta = txn.open_table(META).map_err(backend)?;
            revision = meta
                .get(REVISION_KEY)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0);
        }
        tracing::debug!(keys = data.len(), revision, "store opened");
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                data,
                revision,
                history: VecDeque::new(),
                compacted: revision,
                watchers: Vec::new(),
            }),
            opts,
        });
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("skiff-store-writer".into())
            .spawn(move || writer_loop(db, sh, rx))
            .map_err(backend)?;
        Ok(Self { shared, writer: tx })
    }

    async fn submit(&self, op: Op) -> Result<KeyValue, Error> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Request { op, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

fn writer_loop(db: redb::Database, shared: Arc<Shared>, rx: std::sync::mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        process_batch(&db, &shared, batch);
    }
    tracing::debug!("store writer stopped");
}

fn process_batch(db: &redb::Database, shared: &Shared, batch: Vec<Request>) {
    // Phase 1: decide every operation against memory + this batch's earlier effects.
    let mut overlay: HashMap<String, Option<Entry>> = HashMap::new();
    let mut rev = shared.state.read().revision;
    let mut outcomes: Vec<(Reply, Result<Event, Error>)> = Vec::new();
    {
        let state = shared.state.read();
        for Request { op, reply } in batch {
            let key = match &op {
                Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => {
                    key.clone()
                }
            };
            let current: Option<Entry> = match overlay.get(&key) {
                Some(e) => e.clone(),
                None => state.data.get(&key).cloned(),
            };
            let result = match op {
                Op::Create { value, .. } => {
                    if current.is_some() {
                        Err(Error::AlreadyExists(key.clone()))
                    } else {
                        rev += 1;
                        let e = Entry {
                            value: Arc::from(value),
                            create_revision: rev,
                            mod_revision: rev,
                        };
                        let ev = Event {
                            kind: EventType::Put,
                            kv: e.kv(&key),
                            prev: None,
                        };
                        overlay.insert(key.clone(), Some(e));
                        Ok(ev)
                    }
                }
                Op::Update {
                    value, expected, ..
                } => match current {
                    Some(cur) if cur.mod_revision == expected => {
                        rev += 1;
                        let e = Entry {
                            value: Arc::from(value),
                            create_revision: cur.create_revision,
                            mod_revision: rev,
                        };
                        let ev = Event {
                            kind: EventType::Put,
                            kv: e.kv(&key),
                            prev: Some(cur.kv(&key)),
                        };
                        overlay.insert(key.clone(), Some(e));
                        Ok(ev)
                    }
                    Some(cur) => Err(Error::Conflict {
                        key: key.clone(),
                        expected,
                        current: Some(cur.mod_revision),
                    }),
                    None => Err(Error::NotFound(key.clone())),
                },
                Op::Delete { expected, .. } => match current {
                    Some(cur) if expected.is_none_or(|x| x == cur.mod_revision) => {
                        rev += 1;
                        let mut kv = cur.kv(&key);
                        kv.mod_revision = rev;
                        let ev = Event {
                            kind: EventType::Delete,
                            kv,
                            prev: Some(cur.kv(&key)),
                        };
                        overlay.insert(key.clone(), None);
                        Ok(ev)
                    }
                    Some(cur) => Err(Error::Conflict {
                        key: key.clone(),
                        expected: expected.unwrap_or(0),
                        current: Some(cur.mod_revision),
                    }),
                    None => Err(Error::NotFound(key.clone())),
                },
            };
            outcomes.push((reply, result));
        }
    }
    let events: Vec<&Event> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    if events.is_empty() {
        for (reply, r) in outcomes {
            let _ = reply.send(r.map(|e| e.kv));
        }
        return;
    }
    // Phase 2: one durable transaction for the whole batch.
    let commit = (|| -> Result<(), Error> {
        let txn = db.begin_write().map_err(backend)?;
        {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            for ev in &events {
                match ev.kind {
                    EventType::Put => {
                        let raw = encode(ev.kv.create_revision, ev.kv.mod_revision, &ev.kv.value);
                        kv.insert(ev.kv.key.as_str(), raw.as_slice())
                            .map_err(backend)?;
                    }
                    EventType::Delete => {
                        kv.remove(ev.kv.key.as_str()).map_err(backend)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(REVISION_KEY, rev).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    })();
    if let Err(e) = commit {
        tracing::error!(error = %e, "store commit failed");
        for (reply, r) in outcomes {
            let _ = reply.send(match r {
                Ok(_) => Err(Error::Backend(e.to_string())),
                Err(x) => Err(x),
            });
        }
        return;
    }
    // Phase 3: publish to memory, history and watchers, then acknowledge.
    {
        let mut state = shared.state.write();
        let state = &mut *state;
        for (k, v) in overlay {
            match v {
                Some(e) => {
                    state.data.insert(k, e);
                }
                None => {
                    state.data.remove(&k);
                }
            }
        }
        state.revision = rev;
        for (_, r) in &outcomes {
            let Ok(ev) = r else { continue };
            state.watchers.retain(|w| {
                if !ev.kv.key.starts_with(&w.prefix) {
                    return !w.tx.is_closed();
                }
                // A watcher that cannot keep up is cut off; its client re-lists.
                w.tx.try_send(Ok(ev.clone())).is_ok()
            });
            state.history.push_back(ev.clone());
        }
        while state.history.len() > shared.opts.history_window {
            if let Some(old) = state.history.pop_front() {
                state.compacted = old.revision();
            }
        }
    }
    for (reply, r) in outcomes {
        let _ = reply.send(r.map(|e| e.kv));
    }
}

impl Store for RedbStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, Error>> {
        let r = self.shared.state.read().data.get(key).map(|e| e.kv(key));
        Box::pin(async move { Ok(r) })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
    ) -> BoxFuture<'a, Result<ListResult, Error>> {
        let state = self.shared.state.read();
        let start = match &opts.start_after {
            Some(k) if k.as_str() >= prefix => Bound::Excluded(k.clone()),
            _ => Bound::Included(prefix.to_string()),
        };
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut remaining = 0;
        for (k, e) in state.data.range::<String, _>((start, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if items.len() < limit {
                items.push(e.kv(k));
            } else {
                remaining += 1;
            }
        }
        let r = ListResult {
            items,
            revision: state.revision,
            remaining,
        };
        drop(state);
        Box::pin(async move { Ok(r) })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.submit(Op::Create {
            key: key.to_string(),
            value,
        }))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.submit(Op::Update {
            key: key.to_string(),
            value,
            expected,
        }))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.submit(Op::Delete {
            key: key.to_string(),
            expected,
        }))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: u64) -> BoxFuture<'a, Result<Watch, Error>> {
        let r = (|| {
            let mut state = self.shared.state.write();
            if after < state.compacted {
                return Err(Error::TooOld {
                    requested: after,
                    oldest: state.compacted + 1,
                });
            }
            let backlog: Vec<Event> = state
                .history
                .iter()
                .filter(|e| e.revision() > after && e.kv.key.starts_with(prefix))
                .cloned()
                .collect();
            let (tx, rx) = mpsc::channel(self.shared.opts.watcher_buffer.max(backlog.len() + 1));
            for ev in backlog {
                // Capacity covers the backlog, so this cannot fail.
                let _ = tx.try_send(Ok(ev));
            }
            state.watchers.push(Watcher {
                prefix: prefix.to_string(),
                tx,
            });
            Ok(Watch { rx })
        })();
        Box::pin(async move { r })
    }

    fn revision(&self) -> u64 {
        self.shared.state.read().revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> RedbStore {
        RedbStore::open(
            &dir.join("db.redb"),
            RedbOptions {
                history_window: 5,
                ..Default::default()
            },
        )
        .expect("open store")
    }

    #[tokio::test]
    async fn create_update_delete_with_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let a = s.create("/a/1", b"one".to_vec()).await.expect("create");
        assert_eq!((a.create_revision, a.mod_revision), (1, 1));
        assert!(matches!(
            s.create("/a/1", b"x".to_vec()).await,
            Err(Error::AlreadyExists(_))
        ));
        let b = s.update("/a/1", b"two".to_vec(), 1).await.expect("update");
        assert_eq!((b.create_revision, b.mod_revision), (1, 2));
        assert!(matches!(
            s.update("/a/1", b"three".to_vec(), 1).await,
            Err(Error::Conflict {
                expected: 1,
                current: Some(2),
                ..
            })
        ));
        assert!(matches!(
            s.delete("/a/1", Some(1)).await,
            Err(Error::Conflict { .. })
        ));
        let d = s.delete("/a/1", Some(2)).await.expect("delete");
        assert_eq!(&*d.value, b"two");
        assert_eq!(d.mod_revision, 3);
        assert!(s.get("/a/1").await.expect("get").is_none());
        assert!(matches!(
            s.delete("/a/1", None).await,
            Err(Error::NotFound(_))
        ));
        assert_eq!(s.revision(), 3);
    }

    #[tokio::test]
    async fn list_prefix_and_paging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        for k in ["/x/a", "/x/b", "/x/c", "/xy/a", "/w/a"] {
            s.create(k, k.as_bytes().to_vec()).await.expect("create");
        }
        let all = s.list("/x/", ListOptions::default()).await.expect("list");
        let keys: Vec<_> = all.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["/x/a", "/x/b", "/x/c"]);
        assert_eq!(all.revision, 5);
        let p1 = s
            .list(
                "/x/",
                ListOptions {
                    start_after: None,
                    limit: Some(2),
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, 1);
        let p2 = s
            .list(
                "/x/",
                ListOptions {
                    start_after: Some("/x/b".into()),
                    limit: Some(2),
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        let keys: Vec<_> = p2.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["/x/c"]);
        assert_eq!(p2.remaining, 0);
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            s.create("/k", b"v".to_vec()).await.expect("create");
            s.create("/gone", b"v".to_vec()).await.expect("create");
            s.delete("/gone", None).await.expect("delete");
        }
        // The writer thread exits once the store is dropped; give it a moment to release the file.
        let mut s = None;
        for _ in 0..50 {
            match RedbStore::open(&dir.path().join("db.redb"), RedbOptions::default()) {
                Ok(x) => {
                    s = Some(x);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        let s = s.expect("reopen");
        assert_eq!(s.revision(), 3);
        let k = s.get("/k").await.expect("get").expect("present");
        assert_eq!((&*k.value, k.mod_revision), (&b"v"[..], 1));
        // A watch from before the restart is too old: the history is in memory only.
        assert!(matches!(s.watch("/", 1).await, Err(Error::TooOld { .. })));
        let n = s.create("/n", b"n".to_vec()).await.expect("create");
        assert_eq!(n.mod_revision, 4);
    }

    #[tokio::test]
    async fn watch_resume_live_and_too_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        s.create("/p/a", b"1".to_vec()).await.expect("create");
        s.create("/q/a", b"1".to_vec()).await.expect("create");
        s.update("/p/a", b"2".to_vec(), 1).await.expect("update");
        let mut w = s.watch("/p/", 0).await.expect("watch");
        let e1 = w.recv().await.expect("ev").expect("ok");
        assert_eq!((e1.kind, e1.revision()), (EventType::Put, 1));
        let e2 = w.recv().await.expect("ev").expect("ok");
        assert_eq!(
            (e2.revision(), e2.prev.as_ref().map(|p| p.mod_revision)),
            (3, Some(1))
        );
        s.delete("/p/a", None).await.expect("delete");
        let e3 = w.recv().await.expect("ev").expect("ok");
        assert_eq!(
            (e3.kind, e3.revision(), &*e3.kv.value),
            (EventType::Delete, 4, &b"2"[..])
        );
        // Window of 5: after 3 more writes revision 1 and 2 are gone.
        for i in 0..3 {
            s.create(&format!("/r/{i}"), vec![]).await.expect("create");
        }
        assert!(matches!(
            s.watch("/p/", 1).await,
            Err(Error::TooOld { requested: 1, .. })
        ));
        assert!(s.watch("/p/", 2).await.is_ok());
    }

    #[tokio::test]
    async fn concurrent_writers_get_distinct_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(open(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.create(&format!("/c/{i:03}"), vec![1]).await
            }));
        }
        let mut revs = Vec::new();
        for t in tasks {
            revs.push(t.await.expect("join").expect("create").mod_revision);
        }
        revs.sort();
        revs.dedup();
        assert_eq!(revs.len(), 200);
        assert_eq!(s.revision(), 200);
        assert_eq!(
            s.list("/c/", ListOptions::default())
                .await
                .expect("list")
                .items
                .len(),
            200
        );
    }
}
