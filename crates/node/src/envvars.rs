//! Container environment: the service environment variables kubelet injects (Docker-links style), the
//! container's own `env` with the downward API fields, and `$(VAR)` expansion. Pure.

use crate::resources::{self, ResourceError};
use crate::sources::{Kind, PodSources, SourceError};
use k8s_openapi::api::core::v1::{Container, EnvVarSource, Service};
use std::collections::BTreeMap;

/// What the downward API can read about the pod at container start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node_name: String,
    pub pod_ip: String,
    pub host_ip: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The node's allocatable resources (`resourceFieldRef` limits default to them).
    pub allocatable: BTreeMap<String, String>,
}

/// Why a container's environment cannot be built: kubelet then reports `CreateContainerConfigError` with
/// this message (upstream's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("unsupported fieldRef {0:?} in env var {1:?}")]
    UnsupportedField(String, String),
    #[error("env var {0:?} has an empty valueFrom")]
    EmptySource(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        kind: &'static str,
        key: String,
        namespace: String,
        name: String,
    },
    #[error(transparent)]
    Resource(#[from] ResourceError),
}

fn env_name(service_name: &str) -> String {
    service_name.replace('-', "_").to_uppercase()
}

fn has_cluster_ip(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The variables for one service, in kubelet's order (`envvars.FromServices`).
pub fn service_env(service: &Service) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(spec) = &service.spec else {
        return out;
    };
    let Some(ip) = spec.cluster_ip.as_deref() else {
        return out;
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    if !has_cluster_ip(service) || ports.is_empty() {
        return out;
    }
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let prefix = env_name(name);
    out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
    out.push((format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()));
    for port in ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)),
                port.port.to_string(),
            ));
        }
    }
    // Docker links: IPv6 addresses are bracketed as Go's net.JoinHostPort does.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    for (i, port) in ports.iter().enumerate() {
        let protocol = port
            .protocol
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("TCP");
        let lower = protocol.to_lowercase();
        let url = format!("{lower}://{host}:{}", port.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
        out.push((port_prefix.clone(), url));
        out.push((format!("{port_prefix}_PROTO"), lower));
        out.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        out.push((format!("{port_prefix}_ADDR"), ip.to_string()));
    }
    out
}

/// The services whose variables a pod in `namespace` gets, as kubelet selects them: the pod's namespace's
/// services when `enable_service_links`, and always the master service `kubernetes` from `default` (a service of
/// the same name in the pod's namespace wins). Headless and ExternalName services have no ClusterIP and
/// are skipped. Sorted by name so the result is deterministic.
pub fn services_env<'a>(
    namespace: &str,
    enable_service_links: bool,
    services: impl IntoIterator<Item = &'a Service>,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for service in services {
        if !has_cluster_ip(service) {
            continue;
        }
        let name = service.metadata.name.clone().unwrap_or_default();
        let ns = service.metadata.namespace.as_deref().unwrap_or("default");
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(service);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, service);
        }
    }
    chosen.values().flat_map(|s| service_env(s)).collect()
}

/// Expand `$(VAR)` references as kubelet does: known names are replaced, `$$` escapes a `$`, anything
/// else stays as written.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(close) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + close];
                        if let Some(value) = vars(name) {
                            out.push_str(&value);
                            i += close + 3;
                            continue;
                        }
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

pub fn field_value(facts: &PodFacts, path: &str) -> Option<String> {
    Some(match path {
        "metadata.name" => facts.name.clone(),
        "metadata.namespace" => facts.namespace.clone(),
        "metadata.uid" => facts.uid.clone(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => facts.service_account.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            let key = |prefix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix("['"))
                    .and_then(|rest| rest.strip_suffix("']"))
                    .map(str::to_string)
            };
            if let Some(k) = key("metadata.labels") {
                facts.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = key("metadata.annotations") {
                facts.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// An environment variable name kubelet accepts from `envFrom` (relaxed validation: any printable
/// characters but `=`).
fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && name.chars().all(|c| (' '..='~').contains(&c))
}

fn source_value(
    container: &Container,
    var_name: &str,
    source: &EnvVarSource,
    facts: &PodFacts,
    sources: &PodSources,
) -> Result<Option<String>, EnvError> {
    if let Some(field) = &source.field_ref {
        return field_value(facts, &field.field_path)
            .map(Some)
            .ok_or_else(|| EnvError::UnsupportedField(field.field_path.clone(), var_name.into()));
    }
    if let Some(r) = &source.resource_field_ref {
        let value = resources::container_resource(
            container,
            &r.resource,
            r.divisor.as_ref().map(|d| d.0.as_str()),
            &facts.allocatable,
        )?;
        return Ok(Some(value));
    }
    let (kind, name, key, optional) = if let Some(r) = &source.config_map_key_ref {
        (
            Kind::ConfigMap,
            &r.name,
            &r.key,
            r.optional.unwrap_or(false),
        )
    } else if let Some(r) = &source.secret_key_ref {
        (Kind::Secret, &r.name, &r.key, r.optional.unwrap_or(false))
    } else {
        return Err(EnvError::EmptySource(var_name.into()));
    };
    let Some(data) = sources.lookup(kind, &facts.namespace, name, optional)? else {
        return Ok(None);
    };
    // A ConfigMap's env values come from `data` only (binaryData is for volumes), a Secret's from `data`.
    let value = match kind {
        Kind::ConfigMap => data.strings.get(key).cloned(),
        Kind::Secret => data
            .bytes
            .get(key)
            .map(|b| String::from_utf8_lossy(b).into_owned()),
    };
    match value {
        Some(v) => Ok(Some(v)),
        None if optional => Ok(None),
        None => Err(EnvError::MissingKey {
            kind: match kind {
                Kind::ConfigMap => "ConfigMap",
                Kind::Secret => "Secret",
            },
            key: key.clone(),
            namespace: facts.namespace.clone(),
            name: name.clone(),
        }),
    }
}

/// The container's final environment in order: service variables first, then `envFrom` (each source in
/// order, keys sorted, with its prefix), then the container's `env` (later entries override earlier ones of
/// the same name, each value expanded against what came before), as kubelet's `makeEnvironmentVariables`.
pub fn container_env(
    container: &Container,
    facts: &PodFacts,
    service_vars: &[(String, String)],
    sources: &PodSources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env: Vec<(String, String)> = service_vars.to_vec();
    let mut index: BTreeMap<String, usize> = env
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    let mut set = |env: &mut Vec<(String, String)>, name: &str, value: String| match index.get(name)
    {
        Some(&i) => env[i].1 = value,
        None => {
            index.insert(name.to_string(), env.len());
            env.push((name.to_string(), value));
        }
    };
    for from in container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            (Kind::ConfigMap, &r.name, r.optional.unwrap_or(false))
        } else if let Some(r) = &from.secret_ref {
            (Kind::Secret, &r.name, r.optional.unwrap_or(false))
        } else {
            continue;
        };
        let Some(data) = sources.lookup(kind, &facts.namespace, name, optional)? else {
            continue;
        };
        let pairs: Vec<(String, String)> = match kind {
            Kind::ConfigMap => data
                .strings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Kind::Secret => data
                .bytes
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        };
        for (k, v) in pairs {
            let var = format!("{prefix}{k}");
            if valid_env_name(&var) {
                set(&mut env, &var, v);
            }
        }
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let value = if let Some(source) = &var.value_from {
            match source_value(container, &var.name, source, facts, sources)? {
                Some(v) => v,
                // An optional reference to something missing: the variable is left out.
                None => continue,
            }
        } else {
            let lookup = |name: &str| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            expand(var.value.as_deref().unwrap_or_default(), &lookup)
        };
        set(&mut env, &var.name, value);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EnvVar, EnvVarSource, ObjectFieldSelector, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn service(ns: &str, name: &str, ip: &str, ports: &[(Option<&str>, i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: n.map(str::to_string),
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn render(vars: &[(String, String)]) -> String {
        vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    #[test]
    fn redis_master_example_from_the_seed() {
        let svc = service(
            "default",
            "redis-master",
            "10.0.0.11",
            &[(None, 6379, "TCP")],
        );
        assert_eq!(
            render(&service_env(&svc)),
            "REDIS_MASTER_SERVICE_HOST=10.0.0.11\n\
             REDIS_MASTER_SERVICE_PORT=6379\n\
             REDIS_MASTER_PORT=tcp://10.0.0.11:6379\n\
             REDIS_MASTER_PORT_6379_TCP=tcp://10.0.0.11:6379\n\
             REDIS_MASTER_PORT_6379_TCP_PROTO=tcp\n\
             REDIS_MASTER_PORT_6379_TCP_PORT=6379\n\
             REDIS_MASTER_PORT_6379_TCP_ADDR=10.0.0.11\n"
        );
    }

    #[test]
    fn named_ports_and_udp() {
        let svc = service(
            "kube-system",
            "kube-dns",
            "10.96.0.10",
            &[(Some("dns"), 53, "UDP"), (Some("dns-tcp"), 53, "TCP")],
        );
        assert_eq!(
            render(&service_env(&svc)),
            "KUBE_DNS_SERVICE_HOST=10.96.0.10\n\
             KUBE_DNS_SERVICE_PORT=53\n\
             KUBE_DNS_SERVICE_PORT_DNS=53\n\
             KUBE_DNS_SERVICE_PORT_DNS_TCP=53\n\
             KUBE_DNS_PORT=udp://10.96.0.10:53\n\
             KUBE_DNS_PORT_53_UDP=udp://10.96.0.10:53\n\
             KUBE_DNS_PORT_53_UDP_PROTO=udp\n\
             KUBE_DNS_PORT_53_UDP_PORT=53\n\
             KUBE_DNS_PORT_53_UDP_ADDR=10.96.0.10\n\
             KUBE_DNS_PORT_53_TCP=tcp://10.96.0.10:53\n\
             KUBE_DNS_PORT_53_TCP_PROTO=tcp\n\
             KUBE_DNS_PORT_53_TCP_PORT=53\n\
             KUBE_DNS_PORT_53_TCP_ADDR=10.96.0.10\n"
        );
    }

    #[test]
    fn selection_follows_kubelet() {
        let services = vec![
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                &[(Some("https"), 443, "TCP")],
            ),
            service("default", "other", "10.96.0.20", &[(None, 80, "TCP")]),
            service(
                "web",
                "demoapp-svc",
                "10.97.72.1",
                &[(Some("http"), 80, "TCP")],
            ),
            service("web", "headless", "None", &[(None, 80, "TCP")]),
            service("web", "external", "", &[(None, 80, "TCP")]),
        ];
        let names = |vars: Vec<(String, String)>| -> Vec<String> {
            vars.into_iter()
                .filter(|(k, _)| k.ends_with("_SERVICE_HOST"))
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            names(services_env("web", true, &services)),
            vec!["DEMOAPP_SVC_SERVICE_HOST", "KUBERNETES_SERVICE_HOST"]
        );
        // enableServiceLinks: false still gets the master service.
        assert_eq!(
            names(services_env("web", false, &services)),
            vec!["KUBERNETES_SERVICE_HOST"]
        );
        assert_eq!(
            names(services_env("default", true, &services)),
            vec!["KUBERNETES_SERVICE_HOST", "OTHER_SERVICE_HOST"]
        );
    }

    #[test]
    fn ipv6_cluster_ip_is_bracketed_in_urls() {
        let svc = service("default", "v6", "fd00::10", &[(None, 80, "TCP")]);
        let vars = service_env(&svc);
        assert_eq!(
            vars[2],
            ("V6_PORT".to_string(), "tcp://[fd00::10]:80".to_string())
        );
        assert_eq!(
            vars[6],
            ("V6_PORT_80_TCP_ADDR".to_string(), "fd00::10".to_string())
        );
    }

    #[test]
    fn expansion_rules() {
        let vars = |name: &str| (name == "A").then(|| "x".to_string());
        assert_eq!(
            expand("$(A)-$(B)-$$(A)-$A-$(A", &vars),
            "x-$(B)-$(A)-$A-$(A"
        );
        assert_eq!(expand("ünï$(A)", &vars), "ünïx");
    }

    #[test]
    fn container_env_with_downward_api() {
        let field = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = |name: &str, v: &str| EnvVar {
            name: name.into(),
            value: Some(v.into()),
            ..Default::default()
        };
        let container = Container {
            name: "c".into(),
            env: Some(vec![
                field("MY_POD_NAME", "metadata.name"),
                field("MY_POD_NAMESPACE", "metadata.namespace"),
                field("MY_POD_IP", "status.podIP"),
                field("MY_NODE_NAME", "spec.nodeName"),
                field("MY_HOST_IP", "status.hostIP"),
                field("APP", "metadata.labels['app']"),
                value("URL", "http://$(MY_POD_IP):$(WEB_SERVICE_PORT)/"),
                value("WEB_SERVICE_PORT", "override"),
            ]),
            ..Default::default()
        };
        let facts = PodFacts {
            name: "demo".into(),
            namespace: "web".into(),
            node_name: "node-1".into(),
            pod_ip: "10.244.1.5".into(),
            host_ip: "172.30.0.2".into(),
            labels: [("app".to_string(), "demoapp".to_string())].into(),
            ..Default::default()
        };
        let svc = vec![("WEB_SERVICE_PORT".to_string(), "80".to_string())];
        assert_eq!(
            render(&container_env(&container, &facts, &svc, &PodSources::default()).unwrap()),
            "WEB_SERVICE_PORT=override\n\
             MY_POD_NAME=demo\n\
             MY_POD_NAMESPACE=web\n\
             MY_POD_IP=10.244.1.5\n\
             MY_NODE_NAME=node-1\n\
             MY_HOST_IP=172.30.0.2\n\
             APP=demoapp\n\
             URL=http://10.244.1.5:80/\n"
        );
        let bad = Container {
            name: "c".into(),
            env: Some(vec![field("X", "status.phase")]),
            ..Default::default()
        };
        assert_eq!(
            container_env(&bad, &facts, &[], &PodSources::default()).unwrap_err(),
            EnvError::UnsupportedField("status.phase".into(), "X".into())
        );
    }

    #[test]
    fn config_map_and_secret_references() {
        use crate::sources::{Data, Fetched};
        use k8s_openapi::api::core::v1::{
            ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, SecretEnvSource,
            SecretKeySelector,
        };
        let mut sources = PodSources::default();
        sources.objects.insert(
            (Kind::ConfigMap, "app".into()),
            Fetched::Found(Data {
                strings: [("LOG_LEVEL", "debug"), ("bad=name", "x"), ("mode", "fast")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                bytes: Default::default(),
            }),
        );
        sources.objects.insert(
            (Kind::Secret, "db".into()),
            Fetched::Found(Data {
                strings: Default::default(),
                bytes: [("password".to_string(), b"s3cr3t".to_vec())].into(),
            }),
        );
        let cm_key = |name: &str, cm: &str, key: &str, optional: Option<bool>| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: cm.into(),
                    key: key.into(),
                    optional,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = Container {
            name: "c".into(),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "app".into(),
                        optional: None,
                    }),
                    prefix: Some("APP_".into()),
                    ..Default::default()
                },
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "missing".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ]),
            env: Some(vec![
                cm_key("LEVEL", "app", "LOG_LEVEL", None),
                cm_key("NOPE", "app", "absent", Some(true)),
                EnvVar {
                    name: "DB_PASSWORD".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "db".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let facts = PodFacts {
            namespace: "web".into(),
            ..Default::default()
        };
        assert_eq!(
            render(&container_env(&container, &facts, &[], &sources).unwrap()),
            "APP_LOG_LEVEL=debug\nAPP_mode=fast\nLEVEL=debug\nDB_PASSWORD=s3cr3t\n"
        );
        let missing_key = Container {
            name: "c".into(),
            env: Some(vec![cm_key("X", "app", "absent", None)]),
            ..Default::default()
        };
        assert_eq!(
            container_env(&missing_key, &facts, &[], &sources)
                .unwrap_err()
                .to_string(),
            "couldn't find key absent in ConfigMap web/app"
        );
        let missing_cm = Container {
            name: "c".into(),
            env: Some(vec![cm_key("X", "other", "k", None)]),
            ..Default::default()
        };
        assert_eq!(
            container_env(&missing_cm, &facts, &[], &sources)
                .unwrap_err()
                .to_string(),
            "configmap \"other\" not found"
        );
    }
}
