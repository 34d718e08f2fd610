//! Store backends for the shared behaviour tests: a fresh redb file, or a fresh key prefix on a real etcd
//! started by the test process (Debian's etcd on loopback, killed with the process).
#![allow(dead_code)]

use skiff_store::etcd_testing::EtcdCluster;
use skiff_store::{EtcdOptions, EtcdStore, RedbOptions, RedbStore, Store};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

pub fn redb() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("db.redb"), RedbOptions::default()).expect("open");
    Backend {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

/// A unique key prefix on the process's shared etcd member.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "/t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn etcd_on(endpoints: Vec<String>, prefix: &str) -> EtcdStore {
    EtcdStore::connect(EtcdOptions {
        endpoints,
        prefix: prefix.to_string(),
        ..Default::default()
    })
    .await
    .expect("connect to etcd")
}

pub async fn etcd() -> Backend {
    let cluster = tokio::task::spawn_blocking(EtcdCluster::shared)
        .await
        .expect("join")
        .expect("start etcd");
    let store = etcd_on(cluster.endpoints(), &unique_prefix()).await;
    Backend {
        store: Arc::new(store),
        _dir: None,
    }
}
