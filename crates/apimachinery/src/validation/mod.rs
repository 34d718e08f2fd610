//! Validation as upstream (field paths and messages, pkg/apis/*/validation), and unknown-field detection for
//! fieldValidation.
//!
//! Messages are upstream's `field.Error.ErrorBody()`: `Required value`, `Invalid value: <v>: detail`,
//! `Unsupported value: "x": supported values: "a", "b"`, `Duplicate value: <v>`, `Forbidden: detail`, with Go's
//! value formatting (`%q` strings, `%#v` maps / slices / structs where upstream prints those).

use crate::names;
use crate::{Cause, GroupKind};
use serde_json::{Map, Value};

mod apps;
mod core;
mod networking;

use apps::*;
use core::*;
use networking::*;

/// Validate `obj` (after defaulting); `old` is the stored object on update (immutable-field checks).
pub fn validate(gk: GroupKind<'_>, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Errs::default();
    let name_check: fn(&str) -> Vec<String> = match (gk.group, gk.kind) {
        ("", "Service") => names::is_dns1035_label,
        ("", "Namespace") | ("apps", "StatefulSet") => names::is_dns1123_label,
        _ => names::is_dns1123_subdomain,
    };
    object_meta(
        &mut e,
        obj.get("metadata").unwrap_or(&Value::Null),
        "metadata",
        Some(name_check),
    );
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match (gk.group, gk.kind) {
        ("", "Service") => {
            service(&mut e, spec);
            if let Some(old) = old {
                service_update(&mut e, spec, old.get("spec").unwrap_or(&Value::Null));
            }
        }
        ("", "Pod") => {
            pod_spec(&mut e, spec, "spec");
            if let Some(old) = old {
                pod_update(&mut e, spec, old.get("spec").unwrap_or(&Value::Null));
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            workload(&mut e, gk.kind, spec);
            if let Some(old) = old {
                let (ns, os) = (spec.get("selector"), old.pointer("/spec/selector"));
                if ns != os {
                    e.invalid("spec.selector", go_label_selector(ns), "field is immutable");
                }
                if gk.kind == "StatefulSet" {
                    statefulset_update(&mut e, spec, old.get("spec").unwrap_or(&Value::Null));
                }
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if let Some(old) =
                old.filter(|o| o.get("immutable").and_then(Value::as_bool) == Some(true))
            {
                if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
                    e.forbidden("immutable", "field is immutable when `immutable` is set");
                }
                for field in ["data", "binaryData"] {
                    if obj.get(field) != old.get(field) {
                        e.forbidden(field, "field is immutable when `immutable` is set");
                    }
                }
            }
            for field in ["data", "binaryData", "stringData"] {
                if let Some(m) = obj.get(field).and_then(Value::as_object) {
                    for k in m.keys() {
                        config_key(&mut e, k, &format!("{field}[{k}]"));
                    }
                }
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => network_policy(&mut e, spec),
        ("networking.k8s.io", "Ingress") => ingress(&mut e, spec),
        _ => {}
    }
    e.0
}

#[derive(Default)]
struct Errs(Vec<Cause>);

impl Errs {
    fn push(&mut self, reason: &str, field: &str, message: String) {
        self.0.push(Cause {
            reason: reason.into(),
            message,
            field: field.into(),
        });
    }
    fn required(&mut self, field: &str, detail: &str) {
        let msg = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.push("FieldValueRequired", field, msg);
    }
    /// `value` is already in Go's printed form (see [`go`]).
    fn invalid(&mut self, field: &str, value: String, detail: &str) {
        let msg = if detail.is_empty() {
            format!("Invalid value: {value}")
        } else {
            format!("Invalid value: {value}: {detail}")
        };
        self.push("FieldValueInvalid", field, msg);
    }
    fn not_supported(&mut self, field: &str, value: &str, valid: &[&str]) {
        let quoted: Vec<String> = valid.iter().map(|v| format!("{v:?}")).collect();
        self.push(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {value:?}: supported values: {}",
                quoted.join(", ")
            ),
        );
    }
    fn duplicate(&mut self, field: &str, value: String) {
        self.push(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {value}"),
        );
    }
    fn forbidden(&mut self, field: &str, detail: &str) {
        self.push("FieldValueForbidden", field, format!("Forbidden: {detail}"));
    }
}

/// Go's printing of a JSON scalar as upstream's field errors show it: `%q` for strings, `%v` for numbers/bools.
fn go(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

/// Go's `%#v` of a `map[string]string` (keys sorted, as fmt does).
fn go_map(m: Option<&Value>) -> String {
    let Some(m) = m.and_then(Value::as_object) else {
        return "map[string]string(nil)".into();
    };
    let mut pairs: Vec<(&String, String)> = m
        .iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
        .collect();
    pairs.sort();
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

/// Go's `%#v` of a `[]string`.
fn go_strings(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => "[]string(nil)".into(),
        Some(a) => {
            let inner: Vec<String> = a
                .iter()
                .map(|s| format!("{:?}", s.as_str().unwrap_or_default()))
                .collect();
            format!("[]string{{{}}}", inner.join(", "))
        }
    }
}

/// Go's `%#v` of a `metav1.LabelSelector` (as upstream prints immutable selectors).
fn go_label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        return "\"null\"".into();
    };
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|r| {
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{}}}",
                        r.get("key").and_then(Value::as_str).unwrap_or_default(),
                        r.get("operator")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        go_strings(r.get("values"))
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{}}}",
        go_map(sel.get("matchLabels")),
        exprs
    )
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}
fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn object_meta(
    e: &mut Errs,
    meta: &Value,
    path: &str,
    name_check: Option<fn(&str) -> Vec<String>>,
) {
    if let Some(check) = name_check {
        let name = s(meta, "name");
        let gen = s(meta, "generateName");
        if name.is_empty() && gen.is_empty() {
            e.required(&format!("{path}.name"), "name or generateName is required");
        } else if !name.is_empty() {
            for m in check(name) {
                e.invalid(&format!("{path}.name"), go(&Value::String(name.into())), &m);
            }
        }
    }
    labels(e, meta.get("labels"), &format!("{path}.labels"));
    if let Some(a) = meta.get("annotations").and_then(Value::as_object) {
        let p = format!("{path}.annotations");
        let mut total = 0;
        for (k, v) in a {
            for m in names::is_qualified_name(&k.to_lowercase()) {
                e.invalid(&p, format!("{k:?}"), &m);
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            e.push(
                "FieldValueTooLong",
                &p,
                format!("Too long: may not be more than {} bytes", 256 * 1024),
            );
        }
    }
}

fn labels(e: &mut Errs, labels: Option<&Value>, path: &str) {
    let Some(l) = labels.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in l {
        for m in names::is_qualified_name(k) {
            e.invalid(path, format!("{k:?}"), &m);
        }
        let v = v.as_str().unwrap_or_default();
        for m in names::is_valid_label_value(v) {
            e.invalid(path, format!("{v:?}"), &m);
        }
    }
}

/// upstream's `ValidateLabelSelector` (strict label values).
fn label_selector(e: &mut Errs, sel: &Value, path: &str) {
    labels(e, sel.get("matchLabels"), &format!("{path}.matchLabels"));
    for (i, r) in arr(sel, "matchExpressions").iter().enumerate() {
        let rp = format!("{path}.matchExpressions[{i}]");
        let op = s(r, "operator");
        let n = arr(r, "values").len();
        match op {
            "In" | "NotIn" => {
                if n == 0 {
                    e.required(
                        &format!("{rp}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if n > 0 {
                    e.forbidden(
                        &format!("{rp}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            _ => e.invalid(
                &format!("{rp}.operator"),
                format!("{op:?}"),
                "not a valid selector operator",
            ),
        }
        let key = s(r, "key");
        for m in names::is_qualified_name(key) {
            e.invalid(&format!("{rp}.key"), format!("{key:?}"), &m);
        }
        for (j, v) in arr(r, "values").iter().enumerate() {
            let v = v.as_str().unwrap_or_default();
            for m in names::is_valid_label_value(v) {
                e.invalid(&format!("{rp}.values[{j}]"), format!("{v:?}"), &m);
            }
        }
    }
}

/// Paths of fields the kind's schema does not know, as upstream reports them, e.g. `spec.foo`
/// (kubectl prints `strict decoding error: unknown field "spec.foo"`).
///
/// Found by decoding into the k8s-openapi type and comparing the re-encoded object with the input: a non-null
/// input field that does not come back is unknown. Returns nothing when the object does not decode at all
/// (see [`decode_error`]).
pub fn unknown_fields(gk: GroupKind<'_>, obj: &Value) -> Vec<String> {
    let Some(Ok(back)) = roundtrip(gk, obj) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff_fields(obj, &back, "", &mut out);
    out
}

/// The decoding error for an object whose fields have the wrong JSON types (upstream replies 400 BadRequest),
/// None when it decodes (or the kind has no typed schema here).
pub fn decode_error(gk: GroupKind<'_>, obj: &Value) -> Option<String> {
    match roundtrip(gk, obj) {
        // A required field left out is validation's business (422 with a Required cause), not a decode error;
        // upstream's decoder accepts absent fields too.
        Some(Err(e)) if e.starts_with("missing field") => None,
        Some(Err(e)) => Some(e),
        _ => None,
    }
}

fn diff_fields(input: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (input, back) {
        (Value::Object(i), Value::Object(b)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => out.push(p),
                    Some(bv) => diff_fields(v, bv, &p, out),
                }
            }
        }
        (Value::Array(i), Value::Array(b)) => {
            for (n, (iv, bv)) in i.iter().zip(b.iter()).enumerate() {
                diff_fields(iv, bv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn roundtrip(gk: GroupKind<'_>, obj: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api;
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize + k8s_openapi::Resource>(
        obj: &Value,
    ) -> Result<Value, String> {
        let mut o = obj.clone();
        if let Some(m) = o.as_object_mut() {
            // decode against the served kind regardless of what the body claims
            m.insert("apiVersion".into(), Value::String(T::API_VERSION.into()));
            m.insert("kind".into(), Value::String(T::KIND.into()));
        }
        let typed: T = serde_json::from_value(o).map_err(|e| e.to_string())?;
        serde_json::to_value(&typed).map_err(|e| e.to_string())
    }
    Some(match (gk.group, gk.kind) {
        ("", "Namespace") => rt::<api::core::v1::Namespace>(obj),
        ("", "Pod") => rt::<api::core::v1::Pod>(obj),
        ("", "Service") => rt::<api::core::v1::Service>(obj),
        ("", "Endpoints") => rt::<api::core::v1::Endpoints>(obj),
        ("", "Node") => rt::<api::core::v1::Node>(obj),
        ("", "Event") => rt::<api::core::v1::Event>(obj),
        ("", "ConfigMap") => rt::<api::core::v1::ConfigMap>(obj),
        ("", "Secret") => rt::<api::core::v1::Secret>(obj),
        ("discovery.k8s.io", "EndpointSlice") => rt::<api::discovery::v1::EndpointSlice>(obj),
        ("apps", "Deployment") => rt::<api::apps::v1::Deployment>(obj),
        ("apps", "ReplicaSet") => rt::<api::apps::v1::ReplicaSet>(obj),
        ("apps", "StatefulSet") => rt::<api::apps::v1::StatefulSet>(obj),
        ("apps", "DaemonSet") => rt::<api::apps::v1::DaemonSet>(obj),
        ("networking.k8s.io", "NetworkPolicy") => rt::<api::networking::v1::NetworkPolicy>(obj),
        ("networking.k8s.io", "Ingress") => rt::<api::networking::v1::Ingress>(obj),
        ("networking.k8s.io", "IngressClass") => rt::<api::networking::v1::IngressClass>(obj),
        ("coordination.k8s.io", "Lease") => rt::<api::coordination::v1::Lease>(obj),
        ("events.k8s.io", "Event") => rt::<api::events::v1::Event>(obj),
        ("autoscaling", "Scale") => rt::<api::autoscaling::v1::Scale>(obj),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SVC: GroupKind<'static> = GroupKind {
        group: "",
        kind: "Service",
    };
    const DEPLOY: GroupKind<'static> = GroupKind {
        group: "apps",
        kind: "Deployment",
    };

    /// kubectl's rendering of the causes.
    fn lines(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    fn svc(spec: Value) -> Value {
        let mut o = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "my-svc", "namespace": "default"}, "spec": spec});
        crate::defaults::apply_defaults(SVC, &mut o);
        o
    }

    #[test]
    fn valid_service_passes() {
        let o = svc(
            json!({"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "x"}, "clusterIP": "10.96.0.5"}),
        );
        assert_eq!(lines(&validate(SVC, &o, None)), Vec::<String>::new());
    }

    #[test]
    fn service_errors_like_upstream() {
        let mut o = svc(
            json!({"ports": [{"port": 70000, "name": "http", "protocol": "HTTP"}, {"port": 80, "name": "http", "targetPort": "not_valid"}],
            "sessionAffinity": "Sticky"}),
        );
        o["metadata"]["name"] = json!("1svc");
        assert_eq!(
            lines(&validate(SVC, &o, None)),
            vec![
                "metadata.name: Invalid value: \"1svc\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
                "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                // defaulting copied the bad port into targetPort, upstream reports both
                "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.ports[1].name: Duplicate value: \"http\"",
                "spec.ports[1].targetPort: Invalid value: \"not_valid\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"ClientIP\", \"None\"",
            ]
        );
        let none = svc(json!({"selector": {"app": "x"}}));
        assert_eq!(
            lines(&validate(SVC, &none, None)),
            vec!["spec.ports: Required value"]
        );
        let headless = svc(json!({"clusterIP": "None"}));
        assert_eq!(lines(&validate(SVC, &headless, None)), Vec::<String>::new());
        let en = svc(json!({"type": "ExternalName"}));
        assert_eq!(
            lines(&validate(SVC, &en, None)),
            vec!["spec.externalName: Required value"]
        );
        let bad_type = svc(json!({"type": "Magic", "ports": [{"port": 80}]}));
        assert!(lines(&validate(SVC, &bad_type, None))
            .contains(&"spec.type: Unsupported value: \"Magic\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"".to_string()));
        let np = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}));
        assert_eq!(
            lines(&validate(SVC, &np, None)),
            vec!["spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"]
        );
        let cip = svc(
            json!({"ports": [{"port": 80, "nodePort": 30001}], "externalTrafficPolicy": "Local"}),
        );
        assert_eq!(
            lines(&validate(SVC, &cip, None)),
            vec![
                "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services"
            ]
        );
        let dup = svc(json!({"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]}));
        assert_eq!(
            lines(&validate(SVC, &dup, None)),
            vec!["spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}"]
        );
    }

    #[test]
    fn cluster_ip_is_immutable() {
        let old = svc(json!({"ports": [{"port": 80}], "clusterIP": "10.96.0.5"}));
        let new = svc(json!({"ports": [{"port": 80}], "clusterIP": "10.96.0.6"}));
        assert_eq!(
            lines(&validate(SVC, &new, Some(&old))),
            vec!["spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.6\"}: may not change once set"]
        );
        assert!(validate(SVC, &old, Some(&old)).is_empty());
    }

    fn deploy(sel: Value, labels: Value) -> Value {
        let mut d = json!({"metadata": {"name": "demoapp"}, "spec": {"replicas": 2, "selector": sel,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "demoapp", "image": "ikubernetes/demoapp:v1.0"}]}}}});
        crate::defaults::apply_defaults(DEPLOY, &mut d);
        d
    }

    #[test]
    fn deployment_validation() {
        let ok = deploy(
            json!({"matchLabels": {"app": "demoapp"}}),
            json!({"app": "demoapp", "x": "y"}),
        );
        assert_eq!(lines(&validate(DEPLOY, &ok, None)), Vec::<String>::new());
        let mismatch = deploy(
            json!({"matchLabels": {"app": "demoapp"}}),
            json!({"app": "other"}),
        );
        assert_eq!(
            lines(&validate(DEPLOY, &mismatch, None)),
            vec!["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"]
        );
        let changed = deploy(json!({"matchLabels": {"app": "v2"}}), json!({"app": "v2"}));
        assert_eq!(
            lines(&validate(DEPLOY, &changed, Some(&ok))),
            vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"v2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"]
        );
        let mut neg = ok.clone();
        neg["spec"]["replicas"] = json!(-1);
        neg["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        assert_eq!(
            lines(&validate(DEPLOY, &neg, None)),
            vec![
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.spec.containers[0].image: Required value"
            ]
        );
        let mut nosel = ok.clone();
        nosel["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(
            lines(&validate(DEPLOY, &nosel, None)),
            vec!["spec.selector: Required value"]
        );
    }

    #[test]
    fn pod_and_misc_validation() {
        let pod_gk = GroupKind {
            group: "",
            kind: "Pod",
        };
        let mut p = json!({"metadata": {"name": "p", "labels": {"bad key": "v"}}, "spec": {"containers": [
            {"name": "c", "image": "x", "ports": [{"containerPort": 0}]}, {"name": "c", "image": "y"}]}});
        crate::defaults::apply_defaults(pod_gk, &mut p);
        assert_eq!(
            lines(&validate(pod_gk, &p, None)),
            vec![
                "metadata.labels: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "spec.containers[0].ports[0].containerPort: Required value",
                "spec.containers[1].name: Duplicate value: \"c\"",
            ]
        );
        let mut changed = p.clone();
        changed["spec"]["containers"][0]["image"] = json!("x2");
        changed["spec"]["nodeName"] = json!("node1");
        assert!(lines(&validate(pod_gk, &changed, Some(&p)))
            .iter()
            .all(|l| !l.starts_with("spec: Forbidden")));
        changed["spec"]["restartPolicy"] = json!("Never");
        assert!(lines(&validate(pod_gk, &changed, Some(&p)))
            .iter()
            .any(|l| l.starts_with("spec: Forbidden: pod updates may not change fields")));

        let ing_gk = GroupKind {
            group: "networking.k8s.io",
            kind: "Ingress",
        };
        let ing = json!({"metadata": {"name": "i"}, "spec": {"rules": [{"host": "a.com", "http": {"paths": [
            {"path": "/", "backend": {"service": {"name": "s", "port": {"number": 80}}}},
            {"path": "x", "pathType": "Prefix", "backend": {"service": {"name": "s"}}}]}}]}});
        assert_eq!(
            lines(&validate(ing_gk, &ing, None)),
            vec![
                "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
                "spec.rules[0].http.paths[1].path: Invalid value: \"x\": must be an absolute path",
                "spec.rules[0].http.paths[1].backend: Required value: port name or number is required",
            ]
        );
        let cm_gk = GroupKind {
            group: "",
            kind: "ConfigMap",
        };
        let cm = json!({"metadata": {"name": "cm"}, "data": {"ok.key": "1", "bad key": "2"}});
        assert_eq!(
            lines(&validate(cm_gk, &cm, None)),
            vec!["data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"]
        );
        let immutable = json!({"metadata": {"name": "cm"}, "immutable": true, "data": {"a": "1"}});
        let changed = json!({"metadata": {"name": "cm"}, "immutable": true, "data": {"a": "2"}});
        assert_eq!(
            lines(&validate(cm_gk, &changed, Some(&immutable))),
            vec!["data: Forbidden: field is immutable when `immutable` is set"]
        );
        let sts_gk = GroupKind {
            group: "apps",
            kind: "StatefulSet",
        };
        let sts = json!({"metadata": {"name": "web"}, "spec": {"serviceName": "web", "replicas": 1, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always"}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}}}});
        let mut sts2 = sts.clone();
        sts2["spec"]["replicas"] = json!(3);
        assert!(validate(sts_gk, &sts2, Some(&sts)).is_empty());
        sts2["spec"]["serviceName"] = json!("other");
        assert_eq!(
            lines(&validate(sts_gk, &sts2, Some(&sts))),
            vec!["spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"]
        );
        let np_gk = GroupKind {
            group: "networking.k8s.io",
            kind: "NetworkPolicy",
        };
        let np = json!({"metadata": {"name": "np"}, "spec": {"podSelector": {}, "policyTypes": ["Sideways"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}});
        assert_eq!(
            lines(&validate(np_gk, &np, None)),
            vec![
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.policyTypes[0]: Unsupported value: \"Sideways\": supported values: \"Egress\", \"Ingress\""
            ]
        );
        let ns_gk = GroupKind {
            group: "",
            kind: "Namespace",
        };
        assert_eq!(
            lines(&validate(ns_gk, &json!({"metadata": {}}), None)),
            vec!["metadata.name: Required value: name or generateName is required"]
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_paths() {
        let o = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "creationTimestamp": null, "bogus": 1},
            "spec": {"foo": "bar", "ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "nodeport": 30000}], "selector": {"any-key": "x"}},
            "status": {"loadBalancer": {}}});
        assert_eq!(
            unknown_fields(SVC, &o),
            vec!["metadata.bogus", "spec.foo", "spec.ports[1].nodeport"]
        );
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always", "resources": {"limits": {"cpu": "1"}}, "extra": true}]}}}});
        assert_eq!(
            unknown_fields(DEPLOY, &d),
            vec!["spec.template.spec.containers[0].extra"]
        );
        assert!(decode_error(DEPLOY, &d).is_none());
        let wrong = json!({"metadata": {"name": "d"}, "spec": {"replicas": "two"}});
        assert!(decode_error(DEPLOY, &wrong).is_some());
        assert!(unknown_fields(DEPLOY, &wrong).is_empty());
    }
}
