//! The resources served: identity, scope, names and subresources, as upstream's discovery reports them.

use skiff_apimachinery::GroupKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Status,
    Scale,
}

#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Sub],
}

impl Resource {
    pub fn gk(&self) -> GroupKind<'static> {
        GroupKind {
            group: self.group,
            kind: self.kind,
        }
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn has(&self, s: Sub) -> bool {
        self.subresources.contains(&s)
    }
    /// Store key prefix of all objects of this resource (all namespaces).
    pub fn prefix(&self) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{g}/{}/", self.plural)
    }
    /// Store key prefix of this resource in one namespace (or all when None / cluster-scoped).
    pub fn ns_prefix(&self, ns: Option<&str>) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }
    /// Upstream's "group resource" as in error messages: `services`, `deployments.apps`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const ALL: &[&str] = &["all"];
const S: &[Sub] = &[Sub::Status];
const SS: &[Sub] = &[Sub::Status, Sub::Scale];
const NONE: &[Sub] = &[];

macro_rules! r {
    ($g:expr, $k:expr, $p:expr, $s:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr) => {
        Resource {
            group: $g,
            version: "v1",
            kind: $k,
            plural: $p,
            singular: $s,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
        }
    };
}

pub static RESOURCES: &[Resource] = &[
    r!(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        &[],
        S
    ),
    r!("", "Pod", "pods", "pod", true, &["po"], ALL, S),
    r!("", "Service", "services", "service", true, &["svc"], ALL, S),
    r!(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        &[],
        NONE
    ),
    r!("", "Node", "nodes", "node", false, &["no"], &[], S),
    r!("", "Event", "events", "event", true, &["ev"], &[], NONE),
    r!(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        &[],
        NONE
    ),
    r!("", "Secret", "secrets", "secret", true, &[], &[], NONE),
    r!(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        &[],
        NONE
    ),
    r!(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        &[],
        NONE
    ),
    r!(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        ALL,
        SS
    ),
    r!(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        ALL,
        SS
    ),
    r!(
        "apps",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        ALL,
        SS
    ),
    r!(
        "apps",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        ALL,
        S
    ),
    r!(
        "apps",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        &[],
        &[],
        NONE
    ),
    r!(
        "networking.k8s.io",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        &[],
        NONE
    ),
    r!(
        "networking.k8s.io",
        "Ingress",
        "ingresses",
        "ingress",
        true,
        &["ing"],
        &[],
        S
    ),
    r!(
        "networking.k8s.io",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        false,
        &[],
        &[],
        NONE
    ),
    r!(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        &[],
        NONE
    ),
    r!(
        "events.k8s.io",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        &[],
        NONE
    ),
];

/// Group versions in discovery order (core first).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}
