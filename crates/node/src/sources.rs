//! The ConfigMaps and Secrets a pod refers to (env `valueFrom`, `envFrom`, configMap / secret / projected
//! volumes): which ones (pure), and a snapshot of their data fetched through the API for the pod worker.
//! Kubelet reads them through its configMap / secret managers; a missing object is reported with the same
//! message its manager gives (`configmap "NAME" not found`).

use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Secret, Volume, VolumeProjection};
use std::collections::{BTreeMap, BTreeSet};

/// The data of one ConfigMap or Secret: ConfigMap `data` as `strings`, ConfigMap `binaryData` and Secret
/// `data` as `bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Data {
    pub strings: BTreeMap<String, String>,
    pub bytes: BTreeMap<String, Vec<u8>>,
}

impl Data {
    /// Every key with its content (what a volume shows).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = self.bytes.clone();
        for (k, v) in &self.strings {
            out.insert(k.clone(), v.as_bytes().to_vec());
        }
        out
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.strings
            .get(key)
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| self.bytes.get(key).cloned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Found(Data),
    NotFound,
    /// The API could not be asked (the message says why); nothing is known about the object.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// The resource name kubelet's managers use in their errors.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// What the pod worker knows about the objects its pod refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSources {
    pub objects: BTreeMap<(Kind, String), Fetched>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{} {name:?} not found", kind.noun())]
    NotFound { kind: Kind, name: String },
    #[error("couldn't get {} {namespace}/{name}: {message}", kind.noun())]
    Failed {
        kind: Kind,
        namespace: String,
        name: String,
        message: String,
    },
}

impl PodSources {
    /// The object's data; Ok(None) when it does not exist and the reference is optional.
    pub fn lookup(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<&Data>, SourceError> {
        match self.objects.get(&(kind, name.to_string())) {
            Some(Fetched::Found(d)) => Ok(Some(d)),
            Some(Fetched::NotFound) | None if optional => Ok(None),
            Some(Fetched::NotFound) | None => Err(SourceError::NotFound {
                kind,
                name: name.to_string(),
            }),
            Some(Fetched::Failed(message)) => Err(SourceError::Failed {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
                message: message.clone(),
            }),
        }
    }
}

fn projection_refs(p: &VolumeProjection, out: &mut BTreeSet<(Kind, String)>) {
    if let Some(cm) = &p.config_map {
        out.insert((Kind::ConfigMap, cm.name.clone()));
    }
    if let Some(s) = &p.secret {
        out.insert((Kind::Secret, s.name.clone()));
    }
}

fn volume_refs(v: &Volume, out: &mut BTreeSet<(Kind, String)>) {
    if let Some(cm) = &v.config_map {
        out.insert((Kind::ConfigMap, cm.name.clone()));
    }
    if let Some(s) = &v.secret {
        if let Some(name) = &s.secret_name {
            out.insert((Kind::Secret, name.clone()));
        }
    }
    if let Some(p) = &v.projected {
        for source in p.sources.as_deref().unwrap_or_default() {
            projection_refs(source, out);
        }
    }
}

/// Every ConfigMap and Secret the pod's containers (init and app) and volumes refer to.
pub fn referenced(spec: &PodSpec) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        for var in c.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(r) = &from.config_map_key_ref {
                out.insert((Kind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                out.insert((Kind::Secret, r.name.clone()));
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                out.insert((Kind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &from.secret_ref {
                out.insert((Kind::Secret, r.name.clone()));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        volume_refs(v, &mut out);
    }
    out
}

pub fn config_map_data(cm: &ConfigMap) -> Data {
    Data {
        strings: cm.data.clone().unwrap_or_default(),
        bytes: cm
            .binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    }
}

pub fn secret_data(s: &Secret) -> Data {
    let mut bytes: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    // stringData is write-only upstream (merged into data on write); honoured here for servers that keep it.
    for (k, v) in s.string_data.iter().flatten() {
        bytes.insert(k.clone(), v.as_bytes().to_vec());
    }
    Data {
        strings: BTreeMap::new(),
        bytes,
    }
}

/// Read the referenced objects through the API (I/O).
pub async fn fetch(
    client: &kube::Client,
    namespace: &str,
    refs: &BTreeSet<(Kind, String)>,
) -> PodSources {
    let mut objects = BTreeMap::new();
    for (kind, name) in refs {
        let fetched = match kind {
            Kind::ConfigMap => {
                let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
                match api.get_opt(name).await {
                    Ok(Some(cm)) => Fetched::Found(config_map_data(&cm)),
                    Ok(None) => Fetched::NotFound,
                    Err(e) => Fetched::Failed(e.to_string()),
                }
            }
            Kind::Secret => {
                let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
                match api.get_opt(name).await {
                    Ok(Some(s)) => Fetched::Found(secret_data(&s)),
                    Ok(None) => Fetched::NotFound,
                    Err(e) => Fetched::Failed(e.to_string()),
                }
            }
        };
        objects.insert((*kind, name.clone()), fetched);
    }
    PodSources { objects }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapVolumeSource, Container, EnvFromSource,
        EnvVar, EnvVarSource, ProjectedVolumeSource, SecretProjection, SecretVolumeSource,
    };

    #[test]
    fn references_from_env_env_from_and_volumes() {
        let spec = PodSpec {
            init_containers: Some(vec![Container {
                name: "init".into(),
                env_from: Some(vec![EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "init-cm".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
            containers: vec![Container {
                name: "c".into(),
                env: Some(vec![EnvVar {
                    name: "A".into(),
                    value_from: Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "app".into(),
                            key: "a".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: "v".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "vol-cm".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "s".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some("creds".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "p".into(),
                    projected: Some(ProjectedVolumeSource {
                        sources: Some(vec![VolumeProjection {
                            secret: Some(SecretProjection {
                                name: "proj".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let refs: Vec<(Kind, String)> = referenced(&spec).into_iter().collect();
        let expected: Vec<(Kind, String)> = [
            (Kind::ConfigMap, "app"),
            (Kind::ConfigMap, "init-cm"),
            (Kind::ConfigMap, "vol-cm"),
            (Kind::Secret, "creds"),
            (Kind::Secret, "proj"),
        ]
        .into_iter()
        .map(|(k, n)| (k, n.to_string()))
        .collect();
        assert_eq!(refs, expected);
    }

    #[test]
    fn missing_objects_read_as_kubelet_reports_them() {
        let sources = PodSources::default();
        assert_eq!(
            sources
                .lookup(Kind::ConfigMap, "default", "app", false)
                .unwrap_err()
                .to_string(),
            "configmap \"app\" not found"
        );
        assert_eq!(
            sources
                .lookup(Kind::Secret, "default", "db", false)
                .unwrap_err()
                .to_string(),
            "secret \"db\" not found"
        );
        assert_eq!(
            sources.lookup(Kind::Secret, "default", "db", true),
            Ok(None)
        );
    }
}
