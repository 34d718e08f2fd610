//! The store: a trait over a revisioned key-value store with watch history, and its backends: embedded redb
//! (one process) and etcd (several API servers sharing one etcd cluster).
//!
//! The model is etcd's: one monotonic revision for the whole store; every key carries the revision that created
//! it and the revision of its last modification; writes are conditional on a key's mod revision (CAS); watches
//! start from a revision and see every later event, or fail with [`Error::TooOld`] when that revision has left
//! the in-memory history window (the API server maps that to 410 Gone).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod etcd_store;
pub mod etcd_testing;
mod redb_store;

pub use etcd_store::{EtcdOptions, EtcdStore, EtcdTls};
pub use redb_store::{RedbOptions, RedbStore};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// The key's mod revision is not the expected one (or the key vanished).
    #[error("key {key}: expected revision {expected}, current {current:?}")]
    Conflict {
        key: String,
        expected: u64,
        current: Option<u64>,
    },
    /// The requested watch revision is older than the kept history.
    #[error("required revision {requested} has been compacted (oldest available {oldest})")]
    TooOld { requested: u64, oldest: u64 },
    #[error("store backend: {0}")]
    Backend(String),
    #[error("store is closed")]
    Closed,
}

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Put,
    Delete,
}

/// A change at one revision. For `Put`, `kv` is the new value and `prev` the value before (None on create);
/// for `Delete`, `kv` is the deleted value with `mod_revision` = the revision of the delete.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventType,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only keys strictly greater than this one (paging).
    pub start_after: Option<String>,
    /// At most this many items (0 / None = all).
    pub limit: Option<usize>,
    /// Read at this revision (later pages of a paged list). etcd serves it from its history (`TooOld` once
    /// compacted); the embedded store keeps no old versions and serves the current state.
    pub revision: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The store revision the list is consistent with.
    pub revision: u64,
    /// Items remaining after the last returned one (paging).
    pub remaining: usize,
}

/// A stream of events from a watch. Dropping it cancels the watch. `recv` yields `None` when the store closes
/// or the watcher fell too far behind (the client then re-lists, as with an etcd watch cancellation).
pub struct Watch {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Event, Error>>,
}

impl Watch {
    pub async fn recv(&mut self) -> Option<Result<Event, Error>> {
        self.rx.recv().await
    }
    /// Build a watch over a channel; for other backends.
    pub fn from_receiver(rx: tokio::sync::mpsc::Receiver<Result<Event, Error>>) -> Self {
        Self { rx }
    }
}

/// A revisioned key-value store. Object safe so the API server can hold `Arc<dyn Store>` and later take an etcd
/// backend. Every successful write returns the new [`KeyValue`] (with its revision) only once durable.
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, Error>>;
    /// Keys starting with `prefix`, in key order, consistent with one revision.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
    ) -> BoxFuture<'a, Result<ListResult, Error>>;
    /// Create `key` only if absent.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>)
        -> BoxFuture<'a, Result<KeyValue, Error>>;
    /// Replace `key` only if its mod revision is `expected`.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'a, Result<KeyValue, Error>>;
    /// Delete `key` (only at mod revision `expected` when given). Returns the deleted value, with the delete's
    /// revision as `mod_revision`.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>>;
    /// Events for keys under `prefix` with revision > `after`. `Err(TooOld)` when history no longer covers it.
    fn watch<'a>(&'a self, prefix: &'a str, after: u64) -> BoxFuture<'a, Result<Watch, Error>>;
    /// The current revision.
    fn revision(&self) -> u64;
}
