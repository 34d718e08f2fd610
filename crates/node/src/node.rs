//! Node registration, Node status and the Lease heartbeat.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use skiff_runtime::NodeIdentity;
use std::collections::BTreeMap;
use std::time::Duration;

pub const KUBELET_VERSION: &str = "v1.32.0";
pub const RUNTIME_VERSION: &str = "skiff://0.1";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const MAX_PODS: &str = "110";

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Memory capacity as kubelet reports it (MemTotal in Ki).
pub(crate) fn memory_capacity() -> String {
    let kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                })
        })
        .unwrap_or(0);
    format!("{kib}Ki")
}

pub fn labels(node: &NodeIdentity) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", node.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    since: &Time,
    now: &Time,
) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since.clone()),
    }
}

/// Upstream kubelet's Ready condition while the runtime has no network configuration yet.
pub const NETWORK_NOT_READY: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

/// The Node status this agent posts; Ready only once the CNI network configuration exists (`network_ready`),
/// as the kubelet reports NetworkPluginNotReady until then, so nothing is scheduled onto a node that cannot
/// give pods a network yet.
pub fn status(node: &NodeIdentity, since: &Time, network_ready: bool) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", cpus.to_string()),
        ("memory", memory_capacity()),
        ("pods", MAX_PODS.to_string()),
        ("ephemeral-storage", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let uts = nix::sys::utsname::uname().ok();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: node.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: node.name.clone(),
            },
        ]),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                since,
                &now,
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                since,
                &now,
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                since,
                &now,
            ),
            if network_ready {
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "kubelet is posting ready status",
                    since,
                    &now,
                )
            } else {
                condition(
                    "Ready",
                    "False",
                    "KubeletNotReady",
                    NETWORK_NOT_READY,
                    since,
                    &now,
                )
            },
        ]),
        node_info: Some(NodeSystemInfo {
            machine_id: read_trim("/etc/machine-id"),
            system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            kernel_version: uts
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: os_image(),
            container_runtime_version: RUNTIME_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: String::new(),
            operating_system: "linux".into(),
            architecture: arch().into(),
            swap: None,
        }),
        ..Default::default()
    }
}

/// Create the Node (or refresh its labels and annotations) and post its status. Returns the Node.
pub async fn register(
    client: &kube::Client,
    node: &NodeIdentity,
    since: &Time,
    network_ready: bool,
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let annotations: BTreeMap<String, String> = [(
        skiff_runtime::defaults::ANNOTATION_NODE_IP.to_string(),
        node.ip.to_string(),
    )]
    .into();
    let object = Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels(node)),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = serde_json::json!({"metadata": {"labels": labels(node), "annotations": annotations}});
            api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Err(e) => return Err(e),
    }
    post_status(client, node, since, network_ready).await
}

pub async fn post_status(
    client: &kube::Client,
    node: &NodeIdentity,
    since: &Time,
    network_ready: bool,
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({"status": status(node, since, network_ready)});
    // Strategic merge, as kubelet: conditions merge by type, so others' (NetworkUnavailable) stay.
    api.patch_status(
        &node.name,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
}

/// Wait until the node IPAM controller has given this node a pod CIDR.
pub async fn wait_pod_cidr(client: &kube::Client, node: &NodeIdentity) -> String {
    let api: Api<Node> = Api::all(client.clone());
    let mut logged = false;
    loop {
        match api.get(&node.name).await {
            Ok(n) => {
                if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                    return cidr;
                }
                if !logged {
                    tracing::info!(node = %node.name, "waiting for spec.podCIDR from the node IPAM controller");
                    logged = true;
                }
            }
            Err(err) => tracing::warn!(%err, "reading own Node"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Renew the node's Lease every 10 s (creating it when missing) and the Node status every minute.
pub async fn heartbeat(
    client: kube::Client,
    node: NodeIdentity,
    node_uid: Option<String>,
    since: Time,
    network_ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let mut ticks = 0u32;
    loop {
        let now = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                namespace: Some(LEASE_NAMESPACE.into()),
                owner_references: node_uid.clone().map(|uid| {
                    vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: node.name.clone(),
                        uid,
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.name.clone()),
                lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                renew_time: Some(now.clone()),
                ..Default::default()
            }),
        };
        let patch = serde_json::json!({"spec": {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now}});
        match leases
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if let Err(err) = leases.create(&PostParams::default(), &lease).await {
                    tracing::warn!(%err, "creating node lease");
                }
            }
            Err(err) => tracing::warn!(%err, "renewing node lease"),
        }
        if ticks % 6 == 5 {
            let ready = network_ready.load(std::sync::atomic::Ordering::Relaxed);
            if let Err(err) = post_status(&client, &node, &since, ready).await {
                tracing::warn!(%err, "posting node status");
            }
        }
        ticks = ticks.wrapping_add(1);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
