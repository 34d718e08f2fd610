//! `kill -9` at an arbitrary moment loses no acknowledged write and leaves a store that opens.
//!
//! The test re-executes its own binary as a child (selected by an environment variable) that writes keys from
//! several concurrent writers and prints each key once its write is acknowledged; the parent SIGKILLs it
//! mid-stream, reopens the store and checks every acknowledged key.

use skiff_store::{ListOptions, RedbOptions, RedbStore, Store};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SKIFF_STORE_CRASH_CHILD_DIR";

#[test]
fn crash_child_writer() {
    // Only does something when run as the child of `kill_9_loses_no_acknowledged_write`.
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(
            RedbStore::open(
                &std::path::Path::new(&dir).join("db.redb"),
                RedbOptions::default(),
            )
            .expect("open"),
        );
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let key = format!("/k/{w}/{i:08}");
                    store.create(&key, vec![b'x'; 200]).await.expect("create");
                    if i.is_multiple_of(3) {
                        // Updates and deletes too: the final state must match what was acknowledged.
                        let kv = store.get(&key).await.expect("get").expect("present");
                        store
                            .update(&key, b"updated".to_vec(), kv.mod_revision)
                            .await
                            .expect("update");
                    }
                    let mut o = out.lock().expect("stdout");
                    let _ = writeln!(o, "{key}");
                    let _ = o.flush();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("/k/") {
                acked.push(line);
            }
        }
        acked
    });
    // Let it write for a while, then kill it without warning.
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let acked = reader.join().expect("reader");
    assert!(
        acked.len() > 50,
        "child wrote too little in {:?}: {}",
        start.elapsed(),
        acked.len()
    );

    let store = RedbStore::open(&dir.path().join("db.redb"), RedbOptions::default())
        .expect("store opens after kill -9");
    let all = store
        .list("/k/", ListOptions::default())
        .await
        .expect("list");
    let present: std::collections::HashMap<&str, &[u8]> = all
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), &*kv.value))
        .collect();
    for key in &acked {
        let i: usize = key
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("index");
        let v = present
            .get(key.as_str())
            .unwrap_or_else(|| panic!("acknowledged {key} lost ({} acked)", acked.len()));
        if i.is_multiple_of(3) {
            assert_eq!(*v, b"updated", "{key}");
        }
    }
    // Revisions keep increasing after recovery.
    let before = store.revision();
    let kv = store
        .create("/after", vec![])
        .await
        .expect("write after recovery");
    assert_eq!(kv.mod_revision, before + 1);
}
