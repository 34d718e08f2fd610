//! etcd-only behaviour: lists pinned to a revision, compaction as `TooOld`, several stores (API servers)
//! on one etcd, and watches that survive `kill -9` of etcd members.

mod common;

use common::{etcd_on, unique_prefix};
use skiff_store::etcd_testing::EtcdCluster;
use skiff_store::{Error, EventType, ListOptions, Store};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

async fn cluster(n: usize) -> EtcdCluster {
    tokio::task::spawn_blocking(move || EtcdCluster::start(n))
        .await
        .expect("join")
        .expect("start etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_pages_read_the_first_pages_revision_until_compacted() {
    let c = cluster(1).await;
    let s = etcd_on(c.endpoints(), "").await;
    for k in ["a", "b", "c", "d"] {
        s.create(&format!("/x/{k}"), k.as_bytes().to_vec())
            .await
            .expect("create");
    }
    let p1 = s
        .list(
            "/x/",
            ListOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("page 1");
    assert_eq!(p1.remaining, 2);
    // Changes after the first page do not show in the second.
    s.delete("/x/c", None).await.expect("delete");
    s.create("/x/e", b"e".to_vec()).await.expect("create");
    let page2 = |rev| {
        s.list(
            "/x/",
            ListOptions {
                start_after: Some("/x/b".into()),
                limit: Some(10),
                revision: rev,
            },
        )
    };
    let p2 = page2(Some(p1.revision)).await.expect("page 2");
    let keys: Vec<_> = p2.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["/x/c", "/x/d"]);
    assert_eq!(p2.revision, p1.revision);
    let now = page2(None).await.expect("current");
    let keys: Vec<_> = now.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["/x/d", "/x/e"]);
    // Compact etcd's history past the first page: the pinned page and a watch from it are too old.
    let mut raw = etcd_client::Client::connect(c.endpoints(), None)
        .await
        .expect("client");
    raw.compact(now.revision as i64, None)
        .await
        .expect("compact");
    assert!(matches!(
        page2(Some(p1.revision)).await,
        Err(Error::TooOld { .. })
    ));
    match s.watch("/x/", p1.revision).await {
        Err(Error::TooOld { requested, oldest }) => {
            assert_eq!(requested, p1.revision);
            assert_eq!(oldest, now.revision);
        }
        Err(e) => panic!("watch from a compacted revision: {e}"),
        Ok(_) => panic!("watch from a compacted revision succeeded"),
    }
    // From the compaction point on, watching works.
    let mut w = s.watch("/x/", now.revision).await.expect("watch");
    let f = s.create("/x/f", b"f".to_vec()).await.expect("create");
    let ev = w.recv().await.expect("event").expect("ok");
    assert_eq!(ev.revision(), f.mod_revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_etcd_see_each_others_writes() {
    let c = EtcdCluster::shared().expect("etcd");
    let prefix = unique_prefix();
    let a = etcd_on(c.endpoints(), &prefix).await;
    let b = etcd_on(c.endpoints(), &prefix).await;
    let other = etcd_on(c.endpoints(), &unique_prefix()).await;
    let mut wb = b.watch("/k/", b.revision()).await.expect("watch");
    let k = a.create("/k/1", b"a".to_vec()).await.expect("create");
    let ev = wb.recv().await.expect("event").expect("ok");
    assert_eq!((ev.kind, ev.kv.key.as_str()), (EventType::Put, "/k/1"));
    assert_eq!(ev.revision(), k.mod_revision);
    // CAS across stores: b updates, a's update from the old revision conflicts.
    let got = b.get("/k/1").await.expect("get").expect("present");
    assert_eq!(got.mod_revision, k.mod_revision);
    b.update("/k/1", b"b".to_vec(), k.mod_revision)
        .await
        .expect("update");
    assert!(matches!(
        a.update("/k/1", b"a2".to_vec(), k.mod_revision).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        b.create("/k/1", vec![]).await,
        Err(Error::AlreadyExists(_))
    ));
    // Prefixes keep users of one etcd apart.
    assert!(other.get("/k/1").await.expect("get").is_none());
    assert!(other
        .list("/", ListOptions::default())
        .await
        .expect("list")
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let r = skiff_store::EtcdStore::connect(skiff_store::EtcdOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    match r {
        Err(Error::Backend(m)) => assert!(m.contains("etcd"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// Writes continue (with retries) and a watch sees every acknowledged write exactly once, in revision order,
/// while members of a 3-member cluster are killed with SIGKILL and restarted one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_member_kills() {
    let mut c = cluster(3).await;
    let writer: Arc<dyn Store> = Arc::new(etcd_on(c.endpoints(), "").await);
    let watcher = etcd_on(c.endpoints(), "").await;
    let mut w = watcher
        .watch("/d/", watcher.revision())
        .await
        .expect("watch");
    const N: usize = 300;
    let wr = writer.clone();
    let writes = tokio::spawn(async move {
        for i in 0..N {
            let key = format!("/d/{i:04}");
            // A write whose answer was lost may have been applied: the retry then finds it.
            loop {
                match wr.create(&key, vec![b'x'; 100]).await {
                    Ok(_) | Err(Error::AlreadyExists(_)) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    });
    for m in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cc = &mut c;
        cc.kill(m);
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| cc.restart(m)).expect("restart member");
    }
    tokio::time::timeout(Duration::from_secs(120), writes)
        .await
        .expect("writes finish")
        .expect("join");
    let mut seen = HashSet::new();
    let mut last = 0;
    while seen.len() < N {
        let ev = tokio::time::timeout(Duration::from_secs(60), w.recv())
            .await
            .expect("every event arrives")
            .expect("watch open")
            .expect("event");
        assert!(ev.revision() > last, "revision order");
        last = ev.revision();
        assert_eq!(ev.kind, EventType::Put);
        assert!(seen.insert(ev.kv.key.clone()), "{} twice", ev.kv.key);
    }
    let l = writer
        .list("/d/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(l.items.len(), N);
}
