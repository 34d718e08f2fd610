//! Server-side Table printing (`as=Table`): upstream's columns per kind and each object's cells, after
//! `kubernetes/pkg/printers/internalversion/printers.go`. The API server always prints wide (upstream's
//! TableConvertor uses `Wide: true`), so `cells` returns one cell per column, wide ones included.

use crate::selector::format_label_selector;
use crate::GroupKind;
use serde_json::{json, Value};

mod core;
mod format;

use core::*;
pub use format::*;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn col(name: &str, type_: &str, priority: i32, description: &str) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: description.into(),
        priority,
    }
}

fn name_col() -> Column {
    col("Name", "string", 0, NAME_DESC)
}
fn age_col() -> Column {
    col("Age", "string", 0, AGE_DESC)
}

/// Column definitions (priority 1 = shown only with -o wide). Unknown kinds: Name + Age.
pub fn columns(gk: GroupKind<'_>) -> Vec<Column> {
    let containers = || {
        col(
            "Containers",
            "string",
            1,
            "Names of each container in the template.",
        )
    };
    let images = || {
        col(
            "Images",
            "string",
            1,
            "Images referenced by each container in the template.",
        )
    };
    let selector = |d: &str| col("Selector", "string", 1, d);
    match (gk.group, gk.kind) {
        ("", "Pod") => vec![
            name_col(),
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age_col(),
            col("IP", "string", 1, "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            col("Node", "string", 1, "NodeName indicates in which node this pod is scheduled."),
            col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods."),
            col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        ("", "Service") => vec![
            name_col(),
            col("Type", "string", 0, "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
            col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            age_col(),
            selector("Route service traffic to pods with label keys and values matching this selector."),
        ],
        ("", "Endpoints") => vec![
            name_col(),
            col("Endpoints", "string", 0, "The set of all endpoints is the union of all subsets."),
            age_col(),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            name_col(),
            col("AddressType", "string", 0, "addressType specifies the type of address carried by this EndpointSlice."),
            col("Ports", "string", 0, "ports specifies the list of network ports exposed by each endpoint in this slice."),
            col("Endpoints", "string", 0, "endpoints is a list of unique endpoints in this slice."),
            age_col(),
        ],
        ("apps", "Deployment") => vec![
            name_col(),
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Up-to-date", "integer", 0, "Total number of non-terminating pods targeted by this deployment that have the desired template spec."),
            col("Available", "integer", 0, "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment."),
            age_col(),
            containers(),
            images(),
            selector("Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ],
        ("apps", "ReplicaSet") => vec![
            name_col(),
            col("Desired", "integer", 0, "Replicas is the number of desired pods."),
            col("Current", "integer", 0, "Replicas is the most recently observed number of non-terminating pods."),
            col("Ready", "integer", 0, "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition."),
            age_col(),
            containers(),
            images(),
            selector("Selector is a label query over pods that should match the replica count."),
        ],
        ("apps", "StatefulSet") => vec![
            name_col(),
            col("Ready", "string", 0, "Number of the pod with ready state"),
            age_col(),
            containers(),
            images(),
        ],
        ("apps", "DaemonSet") => vec![
            name_col(),
            col("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
            col("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            col("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition."),
            col("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
            col("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
            col("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
            age_col(),
            containers(),
            images(),
            selector("A label query over pods that are managed by the daemon set."),
        ],
        ("", "Node") => vec![
            name_col(),
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age_col(),
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of addresses reachable to the node."),
            col("External-IP", "string", 1, "List of addresses reachable to the node."),
            col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            col("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        ("", "Namespace") => vec![name_col(), col("Status", "string", 0, "The status of the namespace"), age_col()],
        ("", "Event") | ("events.k8s.io", "Event") => vec![
            col("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
            col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
            col("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            col("Object", "string", 0, "The object that this event is about."),
            col("Subobject", "string", 1, "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]."),
            col("Source", "string", 1, "The component reporting this event. Should be a short machine understandable string."),
            col("Message", "string", 0, "A human-readable description of the status of this operation."),
            col("First Seen", "string", 1, "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
            col("Count", "string", 1, "The number of times this event has occurred."),
            Column { priority: 1, ..name_col() },
        ],
        ("", "ConfigMap") => vec![name_col(), col("Data", "string", 0, "Data contains the configuration data."), age_col()],
        ("", "Secret") => vec![
            name_col(),
            col("Type", "string", 0, "Used to facilitate programmatic handling of secret data."),
            col("Data", "string", 0, "Data contains the secret data."),
            age_col(),
        ],
        ("networking.k8s.io", "Ingress") => vec![
            name_col(),
            col("Class", "string", 0, "The name of the IngressClass resource that should be used for additional configuration"),
            col("Hosts", "string", 0, "Hosts that incoming requests are matched against before the ingress rule"),
            col("Address", "string", 0, "Address is a list containing ingress points for the load-balancer"),
            col("Ports", "string", 0, "Ports of TLS configurations that open"),
            age_col(),
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            name_col(),
            col("Controller", "string", 0, "Controller that is responsible for handling this class"),
            col("Parameters", "string", 0, "A reference to a resource with additional parameters"),
            age_col(),
        ],
        ("networking.k8s.io", "NetworkPolicy") => vec![
            name_col(),
            col("Pod-Selector", "string", 0, "podSelector selects the pods to which this NetworkPolicy object applies."),
            age_col(),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name_col(),
            col("Holder", "string", 0, "holderIdentity contains the identity of the holder of a current lease."),
            age_col(),
        ],
        _ => vec![name_col(), age_col()],
    }
}

/// One row's cells for `obj`, in `columns` order; `now` computes AGE.
pub fn cells(gk: GroupKind<'_>, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = json!(s(obj, &["metadata", "name"]));
    let age = json!(translate_timestamp_since(
        get(obj, &["metadata", "creationTimestamp"]),
        now
    ));
    let containers_images = |template_spec: &[&str]| {
        let mut p = template_spec.to_vec();
        p.push("containers");
        let cs = arr(obj, &p);
        let names: Vec<&str> = cs.iter().map(|c| s(c, &["name"])).collect();
        let images: Vec<&str> = cs.iter().map(|c| s(c, &["image"])).collect();
        (json!(names.join(",")), json!(images.join(",")))
    };
    let selector_string = || {
        // printers use `LabelSelectorAsSelector(...).String()` (empty for an empty selector, `<invalid>` on error)
        match get(obj, &["spec", "selector"]) {
            None => json!(""),
            Some(sel) => match crate::selector::LabelSelector::from_json(sel) {
                Ok(x) => json!(x.to_string()),
                Err(_) => json!("<invalid>"),
            },
        }
    };
    match (gk.group, gk.kind) {
        ("", "Pod") => pod_cells(obj, now),
        ("", "Service") => {
            let ty = s(obj, &["spec", "type"]);
            let cluster_ip = arr(obj, &["spec", "clusterIPs"])
                .first()
                .and_then(Value::as_str)
                .or_else(|| {
                    get(obj, &["spec", "clusterIP"])
                        .and_then(Value::as_str)
                        .filter(|x| !x.is_empty())
                })
                .unwrap_or("<none>");
            let ports: Vec<String> = arr(obj, &["spec", "ports"])
                .iter()
                .map(|p| {
                    let port = i(p, &["port"]);
                    let proto = s(p, &["protocol"]);
                    let np = i(p, &["nodePort"]);
                    if np > 0 {
                        format!("{port}:{np}/{proto}")
                    } else {
                        format!("{port}/{proto}")
                    }
                })
                .collect();
            let ports = if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            };
            vec![
                name,
                json!(ty),
                json!(cluster_ip),
                json!(service_external_ip(obj)),
                json!(ports),
                age,
                json!(format_labels(get(obj, &["spec", "selector"]))),
            ]
        }
        ("", "Endpoints") => vec![name, json!(format_endpoints(obj)), age],
        ("discovery.k8s.io", "EndpointSlice") => {
            let max = 3;
            let mut list = Vec::new();
            let mut more = false;
            let mut count = 0;
            for p in arr(obj, &["ports"]) {
                if list.len() < max {
                    let n = match (
                        p.get("port").and_then(Value::as_i64),
                        p.get("name").and_then(Value::as_str),
                    ) {
                        (Some(n), _) => n.to_string(),
                        (None, Some(name)) => name.to_string(),
                        _ => "*".to_string(),
                    };
                    list.push(n);
                } else if list.len() == max {
                    more = true;
                }
                count += 1;
            }
            let ports = list_with_more(&list, more, count, max);
            let (mut list, mut more, mut count) = (Vec::new(), false, 0);
            for e in arr(obj, &["endpoints"]) {
                for a in arr(e, &["addresses"]) {
                    if list.len() < max {
                        list.push(a.as_str().unwrap_or_default().to_string());
                    } else if list.len() == max {
                        more = true;
                    }
                    count += 1;
                }
            }
            let eps = list_with_more(&list, more, count, max);
            vec![
                name,
                json!(s(obj, &["addressType"])),
                json!(ports),
                json!(eps),
                age,
            ]
        }
        ("apps", "Deployment") => {
            let (c, im) = containers_images(&["spec", "template", "spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(obj, &["status", "readyReplicas"]),
                    i(obj, &["spec", "replicas"])
                )),
                json!(i(obj, &["status", "updatedReplicas"])),
                json!(i(obj, &["status", "availableReplicas"])),
                age,
                c,
                im,
                selector_string(),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (c, im) = containers_images(&["spec", "template", "spec"]);
            vec![
                name,
                json!(i(obj, &["spec", "replicas"])),
                json!(i(obj, &["status", "replicas"])),
                json!(i(obj, &["status", "readyReplicas"])),
                age,
                c,
                im,
                selector_string(),
            ]
        }
        ("apps", "StatefulSet") => {
            let (c, im) = containers_images(&["spec", "template", "spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(obj, &["status", "readyReplicas"]),
                    i(obj, &["spec", "replicas"])
                )),
                age,
                c,
                im,
            ]
        }
        ("apps", "DaemonSet") => {
            let (c, im) = containers_images(&["spec", "template", "spec"]);
            vec![
                name,
                json!(i(obj, &["status", "desiredNumberScheduled"])),
                json!(i(obj, &["status", "currentNumberScheduled"])),
                json!(i(obj, &["status", "numberReady"])),
                json!(i(obj, &["status", "updatedNumberScheduled"])),
                json!(i(obj, &["status", "numberAvailable"])),
                json!(format_labels(get(
                    obj,
                    &["spec", "template", "spec", "nodeSelector"]
                ))),
                age,
                c,
                im,
                selector_string(),
            ]
        }
        ("", "Node") => node_cells(obj, name, age),
        ("", "Namespace") => vec![name, json!(s(obj, &["status", "phase"])), age],
        ("", "Event") => event_cells(obj, now),
        ("events.k8s.io", "Event") => event_cells(&events_v1_to_core(obj), now),
        ("", "ConfigMap") => {
            let n = get(obj, &["data"])
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + get(obj, &["binaryData"])
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(n), age]
        }
        ("", "Secret") => {
            let n = get(obj, &["data"])
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(obj, &["type"])), json!(n), age]
        }
        ("networking.k8s.io", "Ingress") => {
            let class = get(obj, &["spec", "ingressClassName"])
                .and_then(Value::as_str)
                .unwrap_or("<none>");
            let rules = arr(obj, &["spec", "rules"]);
            let max = 3;
            let mut list: Vec<&str> = Vec::new();
            let mut more = false;
            for r in rules {
                if list.len() == max {
                    more = true;
                }
                let host = s(r, &["host"]);
                if !more && !host.is_empty() {
                    list.push(host);
                }
            }
            let hosts = if list.is_empty() {
                "*".to_string()
            } else if more {
                format!("{} + {} more...", list.join(","), rules.len() - max)
            } else {
                list.join(",")
            };
            let ports = if arr(obj, &["spec", "tls"]).is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                json!(class),
                json!(hosts),
                json!(load_balancer_ips(obj)),
                json!(ports),
                age,
            ]
        }
        ("networking.k8s.io", "IngressClass") => {
            let params = match get(obj, &["spec", "parameters"]) {
                Some(p) if p.is_object() => {
                    let mut x = s(p, &["kind"]).to_string();
                    if let Some(g) = p.get("apiGroup").and_then(Value::as_str) {
                        x = format!("{x}.{g}");
                    }
                    format!("{x}/{}", s(p, &["name"]))
                }
                _ => "<none>".to_string(),
            };
            vec![
                name,
                json!(s(obj, &["spec", "controller"])),
                json!(params),
                age,
            ]
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let sel = get(obj, &["spec", "podSelector"])
                .cloned()
                .unwrap_or(json!({}));
            vec![name, json!(format_label_selector(Some(&sel))), age]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(s(obj, &["spec", "holderIdentity"])), age]
        }
        _ => vec![name, age],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-22T04:00:00Z";
    fn now() -> jiff::Timestamp {
        NOW.parse().unwrap()
    }
    fn ago(secs: i64) -> String {
        let t = now() - jiff::SignedDuration::from_secs(secs);
        t.to_string()
    }
    fn gk<'a>(group: &'a str, kind: &'a str) -> GroupKind<'a> {
        GroupKind { group, kind }
    }
    fn names(gk: GroupKind<'_>) -> Vec<(String, i32)> {
        columns(gk)
            .into_iter()
            .map(|c| (c.name.to_uppercase(), c.priority))
            .collect()
    }

    #[test]
    fn human_durations_like_upstream() {
        let cases = [
            (11, "11s"),
            (119, "119s"),
            (153, "2m33s"),
            (180, "3m"),
            (527, "8m47s"),
            (6540, "109m"),
            (11160, "3h6m"),
            (17220, "4h47m"),
            (3600 * 8, "8h"),
            (3600 * 50, "2d2h"),
            (86400 * 10, "10d"),
            (86400 * 30, "30d"),
            (86400 * 365 * 3, "3y"),
            (86400 * (365 * 3 + 5), "3y5d"),
            (-1, "0s"),
            (-5, "<invalid>"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs as f64), want, "{secs}s");
        }
        assert_eq!(translate_timestamp_since(None, now()), "<unknown>");
    }

    #[test]
    fn column_sets() {
        for gk in [
            gk("", "Pod"),
            gk("", "Service"),
            gk("apps", "Deployment"),
            gk("", "Event"),
            gk("x", "Y"),
        ] {
            let cols = columns(gk);
            assert!(cols.iter().all(|c| !c.description.is_empty()));
            assert_eq!(cols.iter().filter(|c| c.format == "name").count(), 1);
        }
        let pod: Vec<String> = columns(gk("", "Pod"))
            .into_iter()
            .filter(|c| c.priority == 0)
            .map(|c| c.name.to_uppercase())
            .collect();
        assert_eq!(pod, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
        assert_eq!(
            names(gk("", "Service")),
            [
                ("NAME".into(), 0),
                ("TYPE".into(), 0),
                ("CLUSTER-IP".into(), 0),
                ("EXTERNAL-IP".into(), 0),
                ("PORT(S)".into(), 0),
                ("AGE".into(), 0),
                ("SELECTOR".into(), 1)
            ]
        );
        assert_eq!(names(gk("x", "Y")), [("NAME".into(), 0), ("AGE".into(), 0)]);
        assert_eq!(columns(gk("", "Pod"))[0].format, "name");
    }

    #[test]
    fn service_rows_match_seed_output() {
        let nodeport = json!({"metadata": {"name": "demoapp-nodeport-svc", "creationTimestamp": ago(11)},
            "spec": {"type": "NodePort", "clusterIP": "10.97.56.1", "clusterIPs": ["10.97.56.1"],
                     "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 31399}],
                     "selector": {"app": "demoapp", "release": "stable"}}});
        assert_eq!(
            cells(gk("", "Service"), &nodeport, now()),
            vec![
                json!("demoapp-nodeport-svc"),
                json!("NodePort"),
                json!("10.97.56.1"),
                json!("<none>"),
                json!("80:31399/TCP"),
                json!("11s"),
                json!("app=demoapp,release=stable")
            ]
        );
        let lb = json!({"metadata": {"name": "lb", "creationTimestamp": ago(11160)},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.110.155.70"],
                     "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31619}]}, "status": {"loadBalancer": {}}});
        let c = cells(gk("", "Service"), &lb, now());
        assert_eq!(c[3], json!("<pending>"));
        assert_eq!(c[5], json!("3h6m"));
        assert_eq!(c[6], json!("<none>"));
        let ext = json!({"metadata": {"name": "e"}, "spec": {"type": "ClusterIP", "clusterIPs": ["10.110.30.133"],
            "externalIPs": ["192.168.100.100", "192.168.100.101"], "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let c = cells(gk("", "Service"), &ext, now());
        assert_eq!(c[3], json!("192.168.100.100,192.168.100.101"));
        assert_eq!(c[4], json!("80/TCP,53/UDP"));
        assert_eq!(c[5], json!("<unknown>"));
        let headless = json!({"metadata": {"name": "h"}, "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]}});
        let c = cells(gk("", "Service"), &headless, now());
        assert_eq!(
            (c[2].clone(), c[4].clone()),
            (json!("None"), json!("<none>"))
        );
        let lb_with_ip = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "externalIPs": ["1.1.1.1"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.0.200"}]}}});
        assert_eq!(
            cells(gk("", "Service"), &lb_with_ip, now())[3],
            json!("172.18.0.200,1.1.1.1")
        );
    }

    #[test]
    fn endpoints_show_three_then_more() {
        let ep = json!({"metadata": {"name": "demoapp-svc", "creationTimestamp": ago(63 * 60)},
            "subsets": [{"addresses": [{"ip": "10.244.1.101"}, {"ip": "10.244.1.98"}, {"ip": "10.244.2.97"}, {"ip": "10.244.2.98"}],
                         "ports": [{"port": 80, "protocol": "TCP"}]}]});
        assert_eq!(
            cells(gk("", "Endpoints"), &ep, now()),
            vec![
                json!("demoapp-svc"),
                json!("10.244.1.101:80,10.244.1.98:80,10.244.2.97:80 + 1 more..."),
                json!("63m")
            ]
        );
        let empty = json!({"metadata": {"name": "myapp"}});
        assert_eq!(
            cells(gk("", "Endpoints"), &empty, now())[1],
            json!("<none>")
        );
        let slice = json!({"metadata": {"name": "s"}, "addressType": "IPv4", "ports": [{"port": 80, "name": "http"}],
            "endpoints": [{"addresses": ["10.244.1.98"]}, {"addresses": ["10.244.2.97"]}]});
        assert_eq!(
            cells(gk("discovery.k8s.io", "EndpointSlice"), &slice, now()),
            vec![
                json!("s"),
                json!("IPv4"),
                json!("80"),
                json!("10.244.1.98,10.244.2.97"),
                json!("<unknown>")
            ]
        );
        let empty_slice = json!({"metadata": {"name": "s"}, "addressType": "IPv4"});
        assert_eq!(
            cells(gk("discovery.k8s.io", "EndpointSlice"), &empty_slice, now())[3],
            json!("<unset>")
        );
    }

    #[test]
    fn pod_rows() {
        let pod = json!({"metadata": {"name": "demoapp-66db74fcfc-9wkgj", "creationTimestamp": ago(39 * 60)},
            "spec": {"nodeName": "k8s-node2", "containers": [{"name": "demoapp", "image": "ikubernetes/demoapp:v1.0"}]},
            "status": {"phase": "Running", "podIP": "10.244.2.97", "podIPs": [{"ip": "10.244.2.97"}],
                "containerStatuses": [{"name": "demoapp", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": ago(100)}}}]}});
        assert_eq!(
            cells(gk("", "Pod"), &pod, now()),
            vec![
                json!("demoapp-66db74fcfc-9wkgj"),
                json!("1/1"),
                json!("Running"),
                json!("0"),
                json!("39m"),
                json!("10.244.2.97"),
                json!("k8s-node2"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        let restarted = json!({"metadata": {"name": "liveness"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 3,
                "lastTerminationState": {"terminated": {"exitCode": 137, "finishedAt": ago(125)}},
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let c = cells(gk("", "Pod"), &restarted, now());
        assert_eq!(
            c[1..4].to_vec(),
            vec![
                json!("0/1"),
                json!("CrashLoopBackOff"),
                json!("3 (2m5s ago)")
            ]
        );
        assert_eq!(c[5], json!("<none>"));
        let pending = json!({"metadata": {"name": "p", "deletionTimestamp": NOW},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Pending"}});
        assert_eq!(
            cells(gk("", "Pod"), &pending, now())[1..3].to_vec(),
            vec![json!("0/2"), json!("Terminating")]
        );
        let init = json!({"metadata": {"name": "p"}, "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]}});
        assert_eq!(cells(gk("", "Pod"), &init, now())[2], json!("Init:0/1"));
        let done = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}});
        assert_eq!(cells(gk("", "Pod"), &done, now())[2], json!("Completed"));
    }

    #[test]
    fn workload_rows() {
        let d = json!({"metadata": {"name": "demoapp", "creationTimestamp": ago(30)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "demoapp", "release": "stable"}},
                     "template": {"spec": {"containers": [{"name": "demoapp", "image": "ikubernetes/demoapp:v1.0"}, {"name": "side", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(
            cells(gk("apps", "Deployment"), &d, now()),
            vec![
                json!("demoapp"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("30s"),
                json!("demoapp,side"),
                json!("ikubernetes/demoapp:v1.0,busybox"),
                json!("app=demoapp,release=stable")
            ]
        );
        let rs = json!({"metadata": {"name": "rs"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}, "status": {"replicas": 2}});
        assert_eq!(
            cells(gk("apps", "ReplicaSet"), &rs, now()),
            vec![
                json!("rs"),
                json!(2),
                json!(2),
                json!(0),
                json!("<unknown>"),
                json!("c"),
                json!("i"),
                json!("a=b")
            ]
        );
        let ds = json!({"metadata": {"name": "ds"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "c", "image": "i"}]}}},
            "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1}});
        assert_eq!(
            cells(gk("apps", "DaemonSet"), &ds, now()),
            vec![
                json!("ds"),
                json!(2),
                json!(2),
                json!(1),
                json!(2),
                json!(1),
                json!("kubernetes.io/os=linux"),
                json!("<unknown>"),
                json!("c"),
                json!("i"),
                json!("a=b")
            ]
        );
        let sts = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}, "status": {"readyReplicas": 1}});
        assert_eq!(
            cells(gk("apps", "StatefulSet"), &sts, now())[1],
            json!("1/2")
        );
        assert_eq!(
            columns(gk("apps", "StatefulSet")).len(),
            cells(gk("apps", "StatefulSet"), &sts, now()).len()
        );
    }

    #[test]
    fn node_namespace_event_misc_rows() {
        let node = json!({"metadata": {"name": "k8s-node1", "creationTimestamp": ago(86400 * 30),
                "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname": "k8s-node1"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}, {"type": "Hostname", "address": "k8s-node1"}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Skiff", "kernelVersion": "6.1.0", "containerRuntimeVersion": ""}}});
        assert_eq!(
            cells(gk("", "Node"), &node, now()),
            vec![
                json!("k8s-node1"),
                json!("Ready,SchedulingDisabled"),
                json!("control-plane"),
                json!("30d"),
                json!("v1.32.0"),
                json!("172.18.0.2"),
                json!("<none>"),
                json!("Skiff"),
                json!("6.1.0"),
                json!("<unknown>")
            ]
        );
        let ns = json!({"metadata": {"name": "default", "creationTimestamp": ago(86400 * 10)}, "status": {"phase": "Active"}});
        assert_eq!(
            cells(gk("", "Namespace"), &ns, now()),
            vec![json!("default"), json!("Active"), json!("10d")]
        );
        let ev = json!({"metadata": {"name": "my-svc.1"}, "involvedObject": {"kind": "Service", "name": "my-svc"},
            "reason": "Created", "type": "Normal", "message": "made it \n", "firstTimestamp": ago(120), "lastTimestamp": ago(60),
            "count": 2, "source": {"component": "service-controller"}});
        assert_eq!(
            cells(gk("", "Event"), &ev, now()),
            vec![
                json!("60s"),
                json!("Normal"),
                json!("Created"),
                json!("service/my-svc"),
                json!(""),
                json!("service-controller"),
                json!("made it"),
                json!("2m"),
                json!(2),
                json!("my-svc.1")
            ]
        );
        let ev1 = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"}, "note": "hi",
            "reason": "Pulled", "type": "Normal", "eventTime": ago(5), "reportingController": "kubelet", "reportingInstance": "n1"});
        let c = cells(gk("events.k8s.io", "Event"), &ev1, now());
        assert_eq!(c[0], json!("5s"));
        assert_eq!(c[3], json!("pod/p"));
        assert_eq!(c[5], json!("kubelet, n1"));
        assert_eq!(c[8], json!(1));
        let cm = json!({"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}});
        assert_eq!(
            cells(gk("", "ConfigMap"), &cm, now()),
            vec![json!("cm"), json!(2), json!("<unknown>")]
        );
        let sec = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "MQ=="}});
        assert_eq!(
            cells(gk("", "Secret"), &sec, now()),
            vec![json!("s"), json!("Opaque"), json!(1), json!("<unknown>")]
        );
        let ing = json!({"metadata": {"name": "i"}, "spec": {"ingressClassName": "nginx",
            "rules": [{"host": "a.com"}, {"host": "b.com"}, {"host": "c.com"}, {"host": "d.com"}], "tls": [{"hosts": ["a.com"]}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.0.200"}]}}});
        assert_eq!(
            cells(gk("networking.k8s.io", "Ingress"), &ing, now()),
            vec![
                json!("i"),
                json!("nginx"),
                json!("a.com,b.com,c.com + 1 more..."),
                json!("172.18.0.200"),
                json!("80, 443"),
                json!("<unknown>")
            ]
        );
        let ing2 = json!({"metadata": {"name": "i"}, "spec": {"rules": [{"http": {}}]}});
        assert_eq!(
            cells(gk("networking.k8s.io", "Ingress"), &ing2, now())[1..5].to_vec(),
            vec![json!("<none>"), json!("*"), json!(""), json!("80")]
        );
        let np = json!({"metadata": {"name": "np"}, "spec": {"podSelector": {}}});
        assert_eq!(
            cells(gk("networking.k8s.io", "NetworkPolicy"), &np, now())[1],
            json!("<none>")
        );
        let ic = json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx",
            "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}}});
        assert_eq!(
            cells(gk("networking.k8s.io", "IngressClass"), &ic, now())[1..3].to_vec(),
            vec![
                json!("k8s.io/ingress-nginx"),
                json!("IngressParameters.k8s.example.com/external-lb")
            ]
        );
        let lease = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "node1"}});
        assert_eq!(
            cells(gk("coordination.k8s.io", "Lease"), &lease, now())[1],
            json!("node1")
        );
        // every kind returns one cell per column
        for (g, k, o) in [
            ("", "Node", &node),
            ("", "Event", &ev),
            ("", "Secret", &sec),
            ("networking.k8s.io", "Ingress", &ing),
        ] {
            assert_eq!(
                columns(gk(g, k)).len(),
                cells(gk(g, k), o, now()).len(),
                "{k}"
            );
        }
    }
}
