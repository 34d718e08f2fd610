//! The store contract, run against both backends: embedded redb and a real etcd.
//! etcd's revision is shared by everything in that etcd, so revisions are compared, never hard-coded.

mod common;

use common::Backend;
use skiff_store::{Error, EventType, ListOptions, Store};
use std::sync::Arc;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                super::$name(super::common::redb()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(super::common::etcd().await).await
            }
        }
    )*};
}

on_both_backends!(
    create_update_delete_with_revisions,
    list_prefix_and_paging,
    watch_sees_later_events_in_order,
    concurrent_writers_get_distinct_revisions,
);

async fn create_update_delete_with_revisions(b: Backend) {
    let s = &b.store;
    let a = s.create("/a/1", b"one".to_vec()).await.expect("create");
    assert_eq!(a.create_revision, a.mod_revision);
    assert!(matches!(
        s.create("/a/1", b"x".to_vec()).await,
        Err(Error::AlreadyExists(_))
    ));
    let u = s
        .update("/a/1", b"two".to_vec(), a.mod_revision)
        .await
        .expect("update");
    assert!(u.mod_revision > a.mod_revision);
    assert_eq!(u.create_revision, a.create_revision);
    assert_eq!(&*u.value, b"two");
    match s.update("/a/1", b"three".to_vec(), a.mod_revision).await {
        Err(Error::Conflict {
            expected, current, ..
        }) => assert_eq!((expected, current), (a.mod_revision, Some(u.mod_revision))),
        other => panic!("stale update: {other:?}"),
    }
    assert!(matches!(
        s.update("/a/missing", vec![], 1).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        s.delete("/a/1", Some(a.mod_revision)).await,
        Err(Error::Conflict { .. })
    ));
    let got = s.get("/a/1").await.expect("get").expect("present");
    assert_eq!(
        (&*got.value, got.mod_revision),
        (&b"two"[..], u.mod_revision)
    );
    let d = s
        .delete("/a/1", Some(u.mod_revision))
        .await
        .expect("delete");
    assert_eq!(&*d.value, b"two");
    assert!(d.mod_revision > u.mod_revision);
    assert!(s.get("/a/1").await.expect("get").is_none());
    assert!(matches!(
        s.delete("/a/1", None).await,
        Err(Error::NotFound(_))
    ));
    // Unconditional delete of a present key.
    s.create("/a/2", b"x".to_vec()).await.expect("create");
    s.delete("/a/2", None).await.expect("delete");
    assert!(s.revision() >= d.mod_revision);
}

async fn list_prefix_and_paging(b: Backend) {
    let s = &b.store;
    let mut last = 0;
    for k in ["/x/a", "/x/b", "/x/c", "/xy/a", "/w/a"] {
        last = s
            .create(k, k.as_bytes().to_vec())
            .await
            .expect("create")
            .mod_revision;
    }
    let all = s.list("/x/", ListOptions::default()).await.expect("list");
    let keys: Vec<_> = all.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["/x/a", "/x/b", "/x/c"]);
    assert_eq!(&*all.items[1].value, b"/x/b");
    assert!(all.revision >= last);
    let p1 = s
        .list(
            "/x/",
            ListOptions {
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
                revision: Some(p1.revision),
            },
        )
        .await
        .expect("list");
    let keys: Vec<_> = p2.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["/x/c"]);
    assert_eq!(p2.remaining, 0);
    let none = s
        .list("/nothing/", ListOptions::default())
        .await
        .expect("list");
    assert!(none.items.is_empty());
}

async fn watch_sees_later_events_in_order(b: Backend) {
    let s = &b.store;
    let a = s.create("/p/a", b"1".to_vec()).await.expect("create");
    s.create("/q/a", b"1".to_vec()).await.expect("create");
    let u = s
        .update("/p/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    let mut w = s.watch("/p/", a.mod_revision - 1).await.expect("watch");
    let e1 = w.recv().await.expect("event").expect("ok");
    assert_eq!((e1.kind, e1.revision()), (EventType::Put, a.mod_revision));
    assert!(e1.prev.is_none());
    let e2 = w.recv().await.expect("event").expect("ok");
    assert_eq!(
        (e2.revision(), e2.prev.as_ref().map(|p| p.mod_revision)),
        (u.mod_revision, Some(a.mod_revision))
    );
    assert_eq!(&*e2.kv.value, b"2");
    let d = s.delete("/p/a", None).await.expect("delete");
    let e3 = w.recv().await.expect("event").expect("ok");
    assert_eq!(
        (e3.kind, e3.revision(), &*e3.kv.value, e3.kv.key.as_str()),
        (EventType::Delete, d.mod_revision, &b"2"[..], "/p/a")
    );
    // A watch from "now" sees only what comes next.
    let mut w2 = s.watch("/p/", d.mod_revision).await.expect("watch");
    let n = s.create("/p/b", b"3".to_vec()).await.expect("create");
    let e4 = w2.recv().await.expect("event").expect("ok");
    assert_eq!(
        (e4.kv.key.as_str(), e4.revision()),
        ("/p/b", n.mod_revision)
    );
}

async fn concurrent_writers_get_distinct_revisions(b: Backend) {
    let s: Arc<dyn Store> = b.store.clone();
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
    let l = s.list("/c/", ListOptions::default()).await.expect("list");
    assert_eq!(l.items.len(), 200);
    assert!(l.revision >= revs[199]);
}
