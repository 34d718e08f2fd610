//! A real API server on loopback, the controllers against it, and a stand-in for the node agents:
//! tests mark pods Ready through the status subresource and finish graceful deletions, as a kubelet
//! would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use skiff_api::testing::TestServer;

pub struct Cluster {
    pub server: TestServer,
    pub client: Client,
    /// When set, the fake kubelet marks every bound pod Running + Ready with an IP.
    pub auto_ready: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

static NEXT_IP: AtomicU32 = AtomicU32::new(2);

pub fn next_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    format!("10.244.{}.{}", n / 250, n % 250 + 2)
}

pub async fn start(options: skiff_controllers::Options) -> Cluster {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let server = TestServer::start().await.expect("API server starts");
    let client = server.client().await.expect("client");
    let auto_ready = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = skiff_controllers::run(c, options).await {
            panic!("controllers stopped: {e}");
        }
    }));
    tasks.push(tokio::spawn(fake_kubelet(
        client.clone(),
        auto_ready.clone(),
    )));
    Cluster {
        server,
        client,
        auto_ready,
        tasks,
    }
}

/// What the node agents would do: finish graceful deletions, and (when asked) run pods.
async fn fake_kubelet(client: Client, auto_ready: Arc<AtomicBool>) {
    let pods: Api<Pod> = Api::all(client.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(list) = pods.list(&ListParams::default()).await else {
            continue;
        };
        for pod in list.items {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            let has_ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some();
            if bound && !has_ip && auto_ready.load(Ordering::Relaxed) {
                let _ = set_pod_status(&client, &ns, &name, Some(&next_ip()), true).await;
            }
        }
    }
}

pub async fn set_pod_status(
    client: &Client,
    ns: &str,
    name: &str,
    ip: Option<&str>,
    ready: bool,
) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut status = json!({
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": now},
        ],
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
}

/// Registers a Ready node (and its Lease) the way a node agent would.
pub async fn add_node(client: &Client, name: &str, labels: serde_json::Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    heartbeat(client, name).await;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
    }});
    // The node IPAM controller patches the node at the same time; the API server may report a
    // conflict for a patch (see the report), so retry.
    for attempt in 0.. {
        match nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status.clone()))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("node status: {e}"),
        }
    }
}

/// Renews the node's Lease.
pub async fn heartbeat(client: &Client, name: &str) {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    }))
    .unwrap();
    match leases.get_opt(name).await.expect("get lease") {
        None => {
            leases
                .create(&PostParams::default(), &lease)
                .await
                .expect("create lease");
        }
        Some(_) => {
            leases
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"renewTime": now}})),
                )
                .await
                .expect("renew lease");
        }
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes (then panics with `what` and the last value).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}: last state: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A patch as kubectl sends it. The API server can answer a patch without resourceVersion with
/// 409 Conflict when a controller writes the object at the same moment (see the report); kubectl
/// retries those, so do the same.
pub async fn patch_retrying<K>(api: &Api<K>, name: &str, patch: Patch<serde_json::Value>) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for attempt in 0.. {
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(o) => return o,
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("patch {name}: {e}"),
        }
    }
    unreachable!()
}
