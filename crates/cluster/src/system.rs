//! The objects `skiff up` creates in the cluster: the cluster DNS (Deployment `skiff-dns` + Service
//! `kube-dns`, as kubeadm names CoreDNS's) and, with `--demo`, the seed-004 demo manifests.

use serde_json::{json, Value};

use crate::Error;

/// The demo manifests shipped under examples/ (the same file users can `kubectl apply -f`).
pub const DEMO_MANIFESTS: &str = include_str!("../../../examples/demoapp.yaml");

/// ClusterIP of the demo's `demoapp-svc` (pinned in the manifest, as in the seed).
pub const DEMO_CLUSTER_IP: &str = "10.97.72.1";

/// External IP of the demo's `demoapp-externalip-svc` (routed from the host to node-1 by `--demo`).
pub const DEMO_EXTERNAL_IP: &str = "172.30.0.100";

/// The cluster DNS Deployment. The node agent's image catalog resolves `skiff/dns` to `skiff dns
/// --kubeconfig <the agent's --internal-kubeconfig>`; the container's args only name the upstreams, if any.
pub fn dns_deployment(replicas: i32, upstreams: &[String]) -> Value {
    let args: Vec<&str> = upstreams
        .iter()
        .flat_map(|u| ["--upstream", u.as_str()])
        .collect();
    let mut deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "skiff-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns"}
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "kube-dns"}},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "dnsPolicy": "Default",
                    "containers": [{
                        "name": "dns",
                        "image": "skiff/dns",
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}
                        ],
                        // As CoreDNS's kubeadm Deployment: the metrics port answers /ready with 503 until the
                        // first sync from the API (so the pod joins kube-dns only once it can answer), and
                        // /health while the process serves.
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": 9153, "scheme": "HTTP"},
                            "periodSeconds": 1,
                            "timeoutSeconds": 1,
                            "successThreshold": 1,
                            "failureThreshold": 3
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/health", "port": 9153, "scheme": "HTTP"},
                            "initialDelaySeconds": 60,
                            "periodSeconds": 10,
                            "timeoutSeconds": 5,
                            "successThreshold": 1,
                            "failureThreshold": 5
                        }
                    }]
                }
            }
        }
    });
    if !args.is_empty() {
        deployment["spec"]["template"]["spec"]["containers"][0]["args"] = json!(args);
    }
    deployment
}

/// The `kube-dns` Service at the well-known cluster DNS address.
pub fn dns_service(cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
        },
        "spec": {
            "selector": {"k8s-app": "kube-dns"},
            "clusterIP": cluster_ip,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}
            ]
        }
    })
}

/// Splits a multi-document YAML stream into JSON objects (empty documents skipped).
pub fn parse_manifests(text: &str) -> Result<Vec<Value>, Error> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value =
            Value::deserialize(doc).map_err(|e| Error::Other(format!("parsing manifests: {e}")))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_manifests_are_the_seed_objects() {
        let objs = parse_manifests(DEMO_MANIFESTS).unwrap();
        let summary: Vec<String> = objs
            .iter()
            .map(|o| {
                format!(
                    "{} {} {} {}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap(),
                    o["spec"]["type"].as_str().unwrap_or("-"),
                    o["spec"]["clusterIP"].as_str().unwrap_or("-"),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "Deployment demoapp - -",
                "Service demoapp-svc - 10.97.72.1",
                "Service demoapp-nodeport-svc NodePort 10.97.56.1",
                "Service demoapp-loadbalancer-svc LoadBalancer -",
                "Service demoapp-externalip-svc ClusterIP -",
            ]
        );
        assert_eq!(objs[2]["spec"]["ports"][0]["nodePort"], 31399);
        assert_eq!(objs[4]["spec"]["externalIPs"][0], DEMO_EXTERNAL_IP);
        assert_eq!(objs[1]["spec"]["clusterIP"], DEMO_CLUSTER_IP);
        assert_eq!(
            objs[0]["spec"]["template"]["spec"]["containers"][0]["image"],
            "ikubernetes/demoapp:v1.0"
        );
    }

    #[test]
    fn dns_objects_deserialize_into_typed_objects() {
        let d: k8s_openapi::api::apps::v1::Deployment =
            serde_json::from_value(dns_deployment(2, &[])).unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("skiff/dns"));
        // The image catalog adds `--kubeconfig`; the Deployment must not repeat it.
        assert_eq!(c.args, None);
        let with_upstream: k8s_openapi::api::apps::v1::Deployment =
            serde_json::from_value(dns_deployment(1, &["none".to_string()])).unwrap();
        let args = with_upstream
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .args
            .clone();
        assert_eq!(
            args,
            Some(vec!["--upstream".to_string(), "none".to_string()])
        );
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/ready"));
        assert_eq!(
            ready.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9153)
        );
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/health"));
        assert_eq!(
            live.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9153)
        );
        let s: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(dns_service("10.96.0.10")).unwrap();
        let ports: Vec<String> = s
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}/{}/{}",
                    p.name.as_deref().unwrap(),
                    p.port,
                    p.protocol.as_deref().unwrap()
                )
            })
            .collect();
        assert_eq!(ports, ["dns/53/UDP", "dns-tcp/53/TCP", "metrics/9153/TCP"]);
    }
}
