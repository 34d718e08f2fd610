//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) → JSON objects.
//!
//! The body is `k8s\0` + `runtime.Unknown{typeMeta{apiVersion, kind}, raw}`; `raw` is the object's message.
//! Rather than one hand-written conversion per Rust type, the message is walked with a schema table
//! (`proto_schema.rs`, generated from the k8s-pb message definitions: field numbers, types; JSON names from
//! k8s-openapi) for the kinds kubectl's generators create: Deployment, ReplicaSet, StatefulSet, DaemonSet,
//! Service, Namespace, ConfigMap, Secret, Pod, Ingress.
//!
//! Go encodes every non-pointer field even when empty, so the JSON follows Go's omitempty rules: empty strings,
//! zero numbers and false are dropped (except for pointer fields whose zero is meaningful, e.g. `replicas: 0`),
//! empty messages stay `{}` (Go never omits structs), zero `Time`s are dropped (Go prints `null`).
//! `Time` → RFC 3339, `MicroTime` → RFC 3339 with microseconds, `IntOrString` → number or string,
//! `Quantity` → string, bytes → base64, embedded Go structs (`VolumeSource`, `ProbeHandler`, ...) are inlined.

use base64::Engine as _;
use serde_json::{Map, Value};

#[path = "proto_schema.rs"]
#[rustfmt::skip]
mod schema;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtoError(pub String);

/// Scalar wire types; the unsigned and floating ones only occur outside the generated closure today.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar {
    Str,
    I32,
    I64,
    U32,
    U64,
    Bool,
    Bytes,
    F64,
    F32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Msg(usize),
    /// map<string, V>
    Map(&'static Kind),
}

#[derive(Debug)]
pub(crate) struct Field {
    pub num: u32,
    /// JSON name; "" for an embedded Go struct whose fields are inlined into the parent.
    pub name: &'static str,
    pub kind: Kind,
    pub repeated: bool,
}

#[derive(Debug)]
pub(crate) struct Msg {
    pub name: &'static str,
    pub fields: &'static [Field],
}

const MAGIC: &[u8] = b"k8s\0";
/// Go's zero `time.Time` as Unix seconds (0001-01-01T00:00:00Z).
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Pointer fields whose zero value / false is meaningful and must survive omitempty.
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "defaultMode",
    "mode",
    "optional",
    "partition",
    "tolerationSeconds",
    "immutable",
    "shareProcessNamespace",
    "hostUsers",
    "setHostnameAsFQDN",
    "priority",
    "allocateLoadBalancerNodePorts",
];

/// Decode a `k8s\0`-enveloped runtime.Unknown into the object's JSON form (with apiVersion and kind).
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(ProtoError(
            "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]".into(),
        ));
    };
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut r = Reader { buf: rest, pos: 0 };
    while !r.done() {
        let (num, wt) = r.key()?;
        match (num, wt) {
            (1, 2) => {
                let tm = r.bytes()?;
                let mut t = Reader { buf: tm, pos: 0 };
                while !t.done() {
                    let (n, w) = t.key()?;
                    match (n, w) {
                        (1, 2) => api_version = t.string()?,
                        (2, 2) => kind = t.string()?,
                        _ => t.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            _ => r.skip(wt)?,
        }
    }
    let Some(root) = schema::root(&kind) else {
        return Err(ProtoError(format!(
            "no protobuf decoding for kind {kind:?} ({api_version})"
        )));
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(m) = message(root, raw)? {
        out.extend(m);
    }
    Ok(Value::Object(out))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated() -> ProtoError {
    ProtoError("unexpected EOF".into())
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(truncated)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(ProtoError("proto: integer overflow".into()))
    }
    fn key(&mut self) -> Result<(u32, u8), ProtoError> {
        let k = self.varint()?;
        Ok(((k >> 3) as u32, (k & 7) as u8))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(truncated)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.varint()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| ProtoError("proto: invalid UTF-8 string".into()))
    }
    fn fixed64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| truncated())?))
    }
    fn fixed32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| truncated())?))
    }
    fn skip(&mut self, wt: u8) -> Result<(), ProtoError> {
        match wt {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            w => Err(ProtoError(format!("proto: illegal wireType {w}"))),
        }
    }
}

/// One scalar from the wire (`wt` its wire type).
fn scalar(r: &mut Reader<'_>, s: Scalar, wt: u8) -> Result<Value, ProtoError> {
    let want = match s {
        Scalar::Str | Scalar::Bytes => 2,
        Scalar::F64 => 1,
        Scalar::F32 => 5,
        _ => 0,
    };
    if wt != want {
        return Err(ProtoError(format!(
            "proto: wrong wireType = {wt} for field"
        )));
    }
    Ok(match s {
        Scalar::Str => Value::String(r.string()?),
        Scalar::Bytes => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?))
        }
        Scalar::I32 => Value::from(r.varint()? as i64 as i32),
        Scalar::I64 => Value::from(r.varint()? as i64),
        Scalar::U32 => Value::from(r.varint()? as u32),
        Scalar::U64 => Value::from(r.varint()?),
        Scalar::Bool => Value::Bool(r.varint()? != 0),
        Scalar::F64 => Value::from(f64::from_bits(r.fixed64()?)),
        Scalar::F32 => Value::from(f64::from(f32::from_bits(r.fixed32()?))),
    })
}

fn value(r: &mut Reader<'_>, kind: &Kind, wt: u8) -> Result<Value, ProtoError> {
    match kind {
        Kind::Scalar(s) => scalar(r, *s, wt),
        Kind::Msg(i) => {
            if wt != 2 {
                return Err(ProtoError(format!(
                    "proto: wrong wireType = {wt} for message field"
                )));
            }
            let b = r.bytes()?;
            message(*i, b)
        }
        Kind::Map(v) => {
            let entry = r.bytes()?;
            let mut e = Reader { buf: entry, pos: 0 };
            let mut key = String::new();
            let mut val = Value::Null;
            while !e.done() {
                let (n, w) = e.key()?;
                match n {
                    1 => key = e.string()?,
                    2 => val = value(&mut e, v, w)?,
                    _ => e.skip(w)?,
                }
            }
            if val.is_null() {
                // an absent map value is the type's zero value
                val = match v {
                    Kind::Scalar(Scalar::Str | Scalar::Bytes) => Value::String(String::new()),
                    Kind::Scalar(_) => Value::from(0),
                    _ => Value::Object(Map::new()),
                };
            }
            let mut m = Map::new();
            m.insert(key, val);
            Ok(Value::Object(m))
        }
    }
}

/// Go's omitempty for scalars: drop "", 0 and false unless the field is a pointer with a meaningful zero
/// (status structs have no such pointers: `status.replicas` is a plain int32).
fn is_omitted(msg: &str, name: &str, v: &Value) -> bool {
    let name = if msg.ends_with("Status") { "" } else { name };
    let empty = match v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        Value::Null => true,
        _ => false,
    };
    empty && (matches!(v, Value::String(_) | Value::Null) || !KEEP_ZERO.contains(&name))
}

fn message(idx: usize, buf: &[u8]) -> Result<Value, ProtoError> {
    let msg = schema::MESSAGES
        .get(idx)
        .ok_or_else(|| ProtoError(format!("proto: unknown message {idx}")))?;
    let mut r = Reader { buf, pos: 0 };
    match msg.name {
        "Time" | "MicroTime" => {
            let (mut secs, mut nanos) = (0i64, 0i64);
            while !r.done() {
                let (n, w) = r.key()?;
                match (n, w) {
                    (1, 0) => secs = r.varint()? as i64,
                    (2, 0) => nanos = r.varint()? as i64,
                    _ => r.skip(w)?,
                }
            }
            if secs <= GO_ZERO_TIME {
                return Ok(Value::Null);
            }
            let ts = jiff::Timestamp::new(
                secs,
                if msg.name == "MicroTime" {
                    nanos as i32
                } else {
                    0
                },
            )
            .map_err(|e| ProtoError(format!("proto: invalid time: {e}")))?;
            let fmt = if msg.name == "MicroTime" {
                "%Y-%m-%dT%H:%M:%S.%6fZ"
            } else {
                "%Y-%m-%dT%H:%M:%SZ"
            };
            return Ok(Value::String(ts.strftime(fmt).to_string()));
        }
        "IntOrString" => {
            let (mut ty, mut int_val, mut str_val) = (0u64, 0i64, String::new());
            while !r.done() {
                let (n, w) = r.key()?;
                match (n, w) {
                    (1, 0) => ty = r.varint()?,
                    (2, 0) => int_val = r.varint()? as i64 as i32 as i64,
                    (3, 2) => str_val = r.string()?,
                    _ => r.skip(w)?,
                }
            }
            return Ok(if ty == 1 {
                Value::String(str_val)
            } else {
                Value::from(int_val)
            });
        }
        "Quantity" | "FieldsV1" | "RawExtension" | "Duration" => {
            let mut out = Value::Null;
            while !r.done() {
                let (n, w) = r.key()?;
                match (n, w) {
                    (1, 2) if msg.name == "Quantity" => out = Value::String(r.string()?),
                    (1, 2) => {
                        let raw = r.bytes()?;
                        out = serde_json::from_slice(raw).unwrap_or(Value::Null);
                    }
                    (1, 0) => {
                        // metav1.Duration: nanoseconds, printed as Go's duration string
                        let ns = r.varint()? as i64;
                        out = Value::String(go_duration(ns));
                    }
                    _ => r.skip(w)?,
                }
            }
            return Ok(out);
        }
        _ => {}
    }
    let mut out = Map::new();
    while !r.done() {
        let (n, wt) = r.key()?;
        let Some(f) = msg.fields.iter().find(|f| f.num == n) else {
            r.skip(wt)?;
            continue;
        };
        // packed repeated scalars (not what gogo emits for k8s, but valid proto)
        if f.repeated && wt == 2 {
            if let Kind::Scalar(s) = f.kind {
                if !matches!(s, Scalar::Str | Scalar::Bytes) {
                    let packed = r.bytes()?;
                    let mut p = Reader {
                        buf: packed,
                        pos: 0,
                    };
                    let w = match s {
                        Scalar::F64 => 1,
                        Scalar::F32 => 5,
                        _ => 0,
                    };
                    while !p.done() {
                        let v = scalar(&mut p, s, w)?;
                        push(&mut out, f.name, v);
                    }
                    continue;
                }
            }
        }
        let v = value(&mut r, &f.kind, wt)?;
        if f.name.is_empty() {
            // embedded Go struct: its fields belong to the parent
            if let Value::Object(m) = v {
                out.extend(m);
            }
        } else if let Kind::Map(_) = f.kind {
            let entry = out
                .entry(f.name.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let (Value::Object(dst), Value::Object(src)) = (entry, v) {
                dst.extend(src);
            }
        } else if f.repeated {
            push(&mut out, f.name, v);
        } else if !is_omitted(msg.name, f.name, &v) {
            out.insert(f.name.to_string(), v);
        } else {
            out.shift_remove(f.name);
        }
    }
    Ok(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    if let Value::Array(a) = out
        .entry(name.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        a.push(v);
    }
}

/// Go's `time.Duration.String()` for whole units (e.g. `1h0m0s`, `30s`, `1.5s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let ns = ns.unsigned_abs();
    let secs = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{frac:09}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::api::networking::v1 as net;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use prost::Message;
    use serde_json::json;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    /// ObjectMeta as Go encodes it: every non-pointer field present, empty.
    fn go_meta(name: &str, labels: &[(&str, &str)]) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: s(name),
            generate_name: s(""),
            namespace: s(""),
            self_link: s(""),
            uid: s(""),
            resource_version: s(""),
            generation: Some(0),
            creation_timestamp: Some(meta::Time {
                seconds: Some(GO_ZERO_TIME),
                nanos: Some(0),
            }),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn kubectl_create_deployment() {
        let labels = [("app", "demoapp")];
        let d = apps::Deployment {
            metadata: Some(go_meta("demoapp", &labels)),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(meta::LabelSelector {
                    match_labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    match_expressions: vec![],
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(go_meta("", &labels)),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: s("demoapp"),
                            image: s("ikubernetes/demoapp:v1.0"),
                            working_dir: s(""),
                            ports: vec![core::ContainerPort {
                                name: s(""),
                                host_port: Some(0),
                                container_port: Some(80),
                                protocol: s(""),
                                host_ip: s(""),
                            }],
                            resources: Some(core::ResourceRequirements::default()),
                            termination_message_path: s(""),
                            image_pull_policy: s(""),
                            stdin: Some(false),
                            tty: Some(false),
                            ..Default::default()
                        }],
                        restart_policy: s(""),
                        dns_policy: s(""),
                        host_network: Some(false),
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: s(""),
                    rolling_update: None,
                }),
                min_ready_seconds: Some(0),
                paused: Some(false),
                ..Default::default()
            }),
            status: Some(apps::DeploymentStatus {
                observed_generation: Some(0),
                replicas: Some(0),
                ..Default::default()
            }),
        };
        let body = envelope("apps/v1", "Deployment", d.encode_to_vec());
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "demoapp", "labels": {"app": "demoapp"}},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "demoapp"}},
                    "template": {"metadata": {"labels": {"app": "demoapp"}},
                        "spec": {"containers": [{"name": "demoapp", "image": "ikubernetes/demoapp:v1.0",
                            "ports": [{"containerPort": 80}], "resources": {}}]}},
                    "strategy": {}},
                "status": {}})
        );
    }

    #[test]
    fn service_intorstring_and_time() {
        let svc = core::Service {
            metadata: Some(meta::ObjectMeta {
                name: s("my-svc"),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(1_795_000_000),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            spec: Some(core::ServiceSpec {
                ports: vec![
                    core::ServicePort {
                        name: s("80-8080"),
                        protocol: s("TCP"),
                        port: Some(80),
                        target_port: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(8080),
                            str_val: s(""),
                        }),
                        node_port: Some(0),
                        ..Default::default()
                    },
                    core::ServicePort {
                        port: Some(53),
                        target_port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: s("dns"),
                        }),
                        ..Default::default()
                    },
                ],
                selector: [("app".to_string(), "x".to_string())].into_iter().collect(),
                cluster_ip: s(""),
                r#type: s("ClusterIP"),
                ..Default::default()
            }),
            status: Some(core::ServiceStatus {
                load_balancer: Some(core::LoadBalancerStatus::default()),
                conditions: vec![],
            }),
        };
        let v = decode(&envelope("v1", "Service", svc.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "my-svc", "creationTimestamp": "2026-11-18T11:06:40Z"},
                "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                                   {"port": 53, "targetPort": "dns"}],
                         "selector": {"app": "x"}, "type": "ClusterIP"},
                "status": {"loadBalancer": {}}})
        );
    }

    #[test]
    fn secret_bytes_namespace_ingress_and_inlined_structs() {
        let sec = core::Secret {
            metadata: Some(go_meta("s", &[])),
            data: [("k".to_string(), b"hello".to_vec())].into_iter().collect(),
            r#type: s("Opaque"),
            ..Default::default()
        };
        assert_eq!(
            decode(&envelope("v1", "Secret", sec.encode_to_vec())).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "aGVsbG8="}, "type": "Opaque"})
        );
        let ns = core::Namespace {
            metadata: Some(go_meta("demo", &[])),
            spec: Some(core::NamespaceSpec::default()),
            status: Some(core::NamespaceStatus {
                phase: s(""),
                conditions: vec![],
            }),
        };
        assert_eq!(
            decode(&envelope("v1", "Namespace", ns.encode_to_vec())).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}, "spec": {}, "status": {}})
        );
        let ing = net::Ingress {
            metadata: Some(go_meta("web", &[])),
            spec: Some(net::IngressSpec {
                ingress_class_name: s("nginx"),
                rules: vec![net::IngressRule {
                    host: s("a.com"),
                    ingress_rule_value: Some(net::IngressRuleValue {
                        http: Some(net::HttpIngressRuleValue {
                            paths: vec![net::HttpIngressPath {
                                path: s("/"),
                                path_type: s("Exact"),
                                backend: Some(net::IngressBackend {
                                    service: Some(net::IngressServiceBackend {
                                        name: s("svc"),
                                        port: Some(net::ServiceBackendPort {
                                            name: s(""),
                                            number: Some(80),
                                        }),
                                    }),
                                    resource: None,
                                }),
                            }],
                        }),
                    }),
                }],
                ..Default::default()
            }),
            status: None,
        };
        assert_eq!(
            decode(&envelope(
                "networking.k8s.io/v1",
                "Ingress",
                ing.encode_to_vec()
            ))
            .unwrap(),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
                "spec": {"ingressClassName": "nginx", "rules": [{"host": "a.com", "http": {"paths": [
                    {"path": "/", "pathType": "Exact", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}})
        );
        let pod = core::Pod {
            metadata: Some(go_meta("p", &[])),
            spec: Some(core::PodSpec {
                volumes: vec![core::Volume {
                    name: s("data"),
                    volume_source: Some(core::VolumeSource {
                        empty_dir: Some(core::EmptyDirVolumeSource::default()),
                        ..Default::default()
                    }),
                }],
                containers: vec![core::Container {
                    name: s("c"),
                    image: s("busybox"),
                    liveness_probe: Some(core::Probe {
                        handler: Some(core::ProbeHandler {
                            http_get: Some(core::HttpGetAction {
                                path: s("/healthz"),
                                port: Some(IntOrString {
                                    r#type: Some(0),
                                    int_val: Some(8080),
                                    str_val: s(""),
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        period_seconds: Some(5),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                termination_grace_period_seconds: Some(0),
                ..Default::default()
            }),
            status: None,
        };
        assert_eq!(
            decode(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap()["spec"],
            json!({"volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "c", "image": "busybox",
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5}}],
                "terminationGracePeriodSeconds": 0})
        );
    }

    #[test]
    fn explicit_zero_pointer_fields_survive() {
        let d = apps::Deployment {
            metadata: Some(go_meta("d", &[])),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                min_ready_seconds: Some(0),
                ..Default::default()
            }),
            status: None,
        };
        assert_eq!(
            decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap()["spec"],
            json!({"replicas": 0})
        );
    }

    #[test]
    fn garbage_never_panics() {
        // deterministic pseudo-random bodies behind a valid envelope: every outcome is Ok or Err, never a panic
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400usize {
            let raw: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            for kind in ["Deployment", "Pod", "Service", "Secret"] {
                let _ = decode(&envelope("v1", kind, raw.clone()));
            }
        }
    }

    #[test]
    fn bad_bodies() {
        assert!(decode(b"{}")
            .unwrap_err()
            .to_string()
            .contains("expected prefix"));
        let body = envelope("v1", "Service", vec![0x0a, 0x05, 0x01]);
        assert_eq!(decode(&body).unwrap_err().to_string(), "unexpected EOF");
        let body = envelope("v1", "Widget", Vec::new());
        assert!(decode(&body).is_err());
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }
}
