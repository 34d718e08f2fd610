//! The many-machines drill: a 3-member etcd and 3 `skiff server` processes on it (loopback), 16 clients writing
//! 2,000 ConfigMaps through them while one etcd member and then one API server are killed with SIGKILL and
//! restarted, and then the controller leader is killed while a Deployment is scaled. Afterwards every
//! acknowledged write is readable through every server, each server's watch (resumed after its server died
//! from the last resourceVersion, on another server) saw every create exactly once in revision order, and the
//! Deployment converged under the standby leader.

mod common;

use common::{free_port, SKIFF};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::Client;
use serde_json::json;
use skiff_store::etcd_testing::EtcdCluster;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 16;
const OBJECTS: usize = 2_000;
const NS: &str = "drill";
const TOKEN: &str = "drill-token-0123456789";

struct Server {
    dir: PathBuf,
    port: u16,
    identity: String,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self, etcd: &[String]) {
        std::fs::create_dir_all(&self.dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log");
        let child = Command::new(SKIFF)
            .args(["server", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--etcd-servers", &etcd.join(",")])
            .args(["--token", TOKEN])
            .args(["--leader-elect", "--leader-elect-identity", &self.identity])
            // Shorter than upstream's 15 s / 10 s / 2 s to keep the drill quick.
            .args([
                "--leader-elect-lease-duration=4s",
                "--leader-elect-renew-deadline=3s",
                "--leader-elect-retry-period=500ms",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff server");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of one server; all servers share the CA (copied into their data dirs before the first start).
async fn client_for(kubeconfig: &Path, url: &str) -> Client {
    let mut kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    for c in &mut kc.clusters {
        if let Some(cl) = c.cluster.as_mut() {
            cl.server = Some(url.to_string());
        }
    }
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

async fn wait_ready(client: &Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client.apiserver_version().await.is_ok() {
            let ns: Api<Namespace> = Api::all(client.clone());
            if ns.get_opt("default").await.ok().flatten().is_some() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create `name`, moving to the next server when one does not answer. Returns how many attempts failed.
async fn write(clients: &[Client], start: usize, name: &str) -> usize {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_string());
    cm.data = Some([("v".to_string(), name.to_string())].into());
    let mut failures = 0;
    for attempt in 0.. {
        let api: Api<ConfigMap> =
            Api::namespaced(clients[(start + attempt) % clients.len()].clone(), NS);
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => return failures,
            // An earlier attempt was applied but its answer lost with the server: the object is ours.
            Err(kube::Error::Api(e)) if e.code == 409 && failures > 0 => {
                let got = api.get(name).await.expect("read back");
                assert_eq!(got.data, cm.data);
                return failures;
            }
            Err(e) => {
                assert!(attempt < 200, "{name}: still failing: {e}");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    failures
}

/// Watch ConfigMaps from `rv`, preferring server `me`, resuming from the last seen resourceVersion on the next
/// server whenever the stream ends; returns (name, resourceVersion) of every ADDED event until `n` were seen.
async fn watch_all(
    clients: Vec<Client>,
    me: usize,
    mut rv: String,
    n: usize,
) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    let mut server = me;
    while seen.len() < n {
        let api: Api<ConfigMap> = Api::namespaced(clients[server % clients.len()].clone(), NS);
        let stream = match api.watch(&WatchParams::default().timeout(60), &rv).await {
            Ok(s) => s,
            Err(_) => {
                server += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = stream.boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(cm)) => {
                    let r = cm.metadata.resource_version.clone().unwrap_or_default();
                    seen.push((
                        cm.metadata.name.clone().unwrap_or_default(),
                        r.parse().unwrap_or(0),
                    ));
                    rv = r;
                }
                Ok(WatchEvent::Error(e)) => panic!("watch error: {e:?}"),
                Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // The stream ended (timeout or server gone): resume, elsewhere if this server is gone.
        if clients[server % clients.len()]
            .apiserver_version()
            .await
            .is_err()
        {
            server += 1;
        }
    }
    seen
}

async fn leader(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .get_opt("kube-controller-manager")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn live_pods(client: &Client) -> usize {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels("app=web"))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
        })
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_one_etcd_survive_kill_9() {
    let mut etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .expect("join")
        .expect("etcd");
    let endpoints = etcd.endpoints();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut servers: Vec<Server> = (0..3)
        .map(|i| Server {
            dir: tmp.path().join(format!("server-{i}")),
            port: free_port(),
            identity: format!("server-{i}"),
            child: None,
        })
        .collect();
    // The first server makes the CA; the others serve with the same one (as machines sharing pki/).
    servers[0].start(&endpoints);
    let kubeconfig = servers[0].dir.join("kubeconfig");
    let first = {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "server 0 wrote no kubeconfig");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client_for(&kubeconfig, &servers[0].url()).await
    };
    wait_ready(&first, "server 0").await;
    for s in servers.iter_mut().skip(1) {
        std::fs::create_dir_all(s.dir.join("pki")).expect("pki dir");
        for f in ["ca.crt", "ca.key"] {
            std::fs::copy(
                tmp.path().join("server-0/pki").join(f),
                s.dir.join("pki").join(f),
            )
            .expect("copy CA");
        }
        s.start(&endpoints);
    }
    let mut clients = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let c = client_for(&kubeconfig, &s.url()).await;
        wait_ready(&c, &format!("server {i}")).await;
        clients.push(c);
    }
    let nss: Api<Namespace> = Api::all(clients[0].clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let deploys: Api<Deployment> = Api::namespaced(clients[1].clone(), "default");
    deploys
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "web", "image": "ikubernetes/demoapp:v1.0"}]}}},
            }))
            .expect("deployment"),
        )
        .await
        .expect("deployment");

    let cms: Api<ConfigMap> = Api::namespaced(clients[0].clone(), NS);
    let start_rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let watchers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(watch_all(clients.clone(), i, start_rv.clone(), OBJECTS)))
        .collect();

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(Mutex::new(0usize));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (clients, done, failures, next) = (
            clients.clone(),
            done.clone(),
            failures.clone(),
            next.clone(),
        );
        writers.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().expect("lock");
                    if *n == OBJECTS {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                let f = write(&clients, w, &format!("cm-{i:05}")).await;
                failures.fetch_add(f, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_done = |n: usize| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while done.load(Ordering::Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "writes stalled at {}",
                    done.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // 1. An etcd member dies and comes back.
    wait_done(OBJECTS / 4).await;
    etcd.kill(0);
    wait_done(OBJECTS * 3 / 8).await;
    tokio::task::block_in_place(|| etcd.restart(0)).expect("etcd member restarts");
    // 2. An API server dies and comes back (same data dir and port).
    wait_done(OBJECTS / 2).await;
    servers[2].kill();
    wait_done(OBJECTS * 5 / 8).await;
    servers[2].start(&endpoints);
    for w in writers {
        w.await.expect("writer");
    }
    wait_ready(&clients[2], "restarted server 2").await;

    // Every acknowledged write is readable through every server.
    for (i, c) in clients.iter().enumerate() {
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
        let l = api.list(&ListParams::default()).await.expect("list");
        assert_eq!(l.items.len(), OBJECTS, "server {i} lists every object");
    }
    // Every watch saw every create exactly once, in revision order.
    let want: HashSet<String> = (0..OBJECTS).map(|i| format!("cm-{i:05}")).collect();
    for (i, w) in watchers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("watch caught up")
            .expect("watcher");
        let names: HashSet<String> = seen.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(seen.len(), OBJECTS, "watch {i}: one event per object");
        assert_eq!(names, want, "watch {i}: every object");
        assert!(
            seen.windows(2).all(|p| p[0].1 < p[1].1),
            "watch {i}: revision order"
        );
    }
    eprintln!(
        "drill: {} failed attempts (all retried on another server)",
        failures.load(Ordering::Relaxed)
    );

    // 3. The controller leader dies; the Deployment is scaled meanwhile and converges under the standby.
    let holder = leader(&clients[0]).await.expect("a leader");
    let li = servers
        .iter()
        .position(|s| s.identity == holder)
        .expect("leader is one of the servers");
    let other = (li + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    while live_pods(&clients[other]).await != 2 {
        assert!(Instant::now() < deadline, "2 pods before the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    servers[li].kill();
    let d: Api<Deployment> = Api::namespaced(clients[other].clone(), "default");
    d.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .expect("scale");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let h = leader(&clients[other]).await;
        let n = live_pods(&clients[other]).await;
        if n == 4 && h.as_deref().is_some_and(|h| h != holder) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failover: leader {h:?}, {n} pods"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(live_pods(&clients[other]).await, 4, "no duplicate pods");
}
