//! The OpenAPI documents: `/openapi/v3` (the root listing a document per group-version) and each
//! group-version's v3 document, and `/openapi/v2` (JSON, or protobuf as kubectl asks for it). Their schemas
//! are upstream's, from `openapi/definitions.json`, generated from Kubernetes' own OpenAPI v2 document by
//! `scripts/gen-openapi.py` (never written by hand): `kubectl explain` reads descriptions and types at every
//! depth, and kubectl's client-side validation (used for `kind: List`) reads the v2 document.

pub mod proto;

use crate::registry;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::OnceLock;

const DEFINITIONS_JSON: &str = include_str!("../../openapi/definitions.json");

/// The content type kubectl asks `/openapi/v2` for first, and the one served for it.
pub const V2_PROTOBUF_ACCEPT: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
pub const V2_PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Upstream's definitions (v2 form: references are `#/definitions/NAME`).
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        serde_json::from_str::<Value>(DEFINITIONS_JSON)
            .ok()
            .and_then(|v| v.get("definitions").and_then(Value::as_object).cloned())
            .unwrap_or_default()
    })
}

/// The definition name of a served kind (the one carrying its group-version-kind).
fn definition_of(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    definitions().iter().find_map(|(name, schema)| {
        let gvks = schema.get("x-kubernetes-group-version-kind")?.as_array()?;
        gvks.iter()
            .any(|g| g["group"] == group && g["version"] == version && g["kind"] == kind)
            .then_some(name.as_str())
    })
}

fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str().and_then(|r| r.strip_prefix("#/definitions/")) {
                        out.push(r.to_string());
                    }
                } else {
                    refs_in(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs_in(x, out)),
        _ => {}
    }
}

/// Every definition reachable from `roots`.
fn closure(roots: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let defs = definitions();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = roots.into_iter().collect();
    while let Some(name) = stack.pop() {
        if !defs.contains_key(&name) || !seen.insert(name.clone()) {
            continue;
        }
        refs_in(&defs[&name], &mut stack);
    }
    seen
}

/// A v2 schema in v3 form, as upstream's v3 builder writes it: references point into
/// `#/components/schemas/`, and a reference with siblings (a field's own description or default) is
/// wrapped in `allOf`, since siblings of `$ref` do not count in OpenAPI 3.0 (kubectl explain then shows
/// the field's description and the referenced type's name, `<IntOrString>`).
fn to_v3(v: &Value) -> Value {
    if let Some(m) = v.as_object() {
        if let Some(r) = m.get("$ref").filter(|_| m.len() > 1) {
            let mut out: Map<String, Value> = m
                .iter()
                .filter(|(k, _)| k.as_str() != "$ref")
                .map(|(k, x)| (k.clone(), to_v3(x)))
                .collect();
            out.insert("allOf".into(), json!([to_v3(&json!({"$ref": r}))]));
            return Value::Object(out);
        }
    }
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = match (k.as_str(), x.as_str()) {
                        ("$ref", Some(r)) => {
                            Value::String(r.replace("#/definitions/", "#/components/schemas/"))
                        }
                        _ => to_v3(x),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

/// A definition in v3 form. The two types that hold either of two JSON types are written as upstream's v3
/// documents write them (`oneOf`, no `type`), so kubectl shows their names (`<IntOrString>`, `<Quantity>`).
fn v3_definition(name: &str, schema: &Value) -> Value {
    let mut out = to_v3(schema);
    let one_of = match name {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            json!([{"type": "integer"}, {"type": "string"}])
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            json!([{"type": "string"}, {"type": "number"}])
        }
        _ => return out,
    };
    if let Some(m) = out.as_object_mut() {
        m.remove("type");
        m.insert("oneOf".into(), one_of);
    }
    out
}

fn gv_path(g: &str, v: &str) -> String {
    if g.is_empty() {
        format!("api/{v}")
    } else {
        format!("apis/{g}/{v}")
    }
}

/// A stable hash of the documents, so kubectl's OpenAPI cache (keyed by it) is invalidated when they change.
fn hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in DEFINITIONS_JSON.bytes().chain(b"paths-2".iter().copied()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016X}")
    })
}

pub fn v3_root() -> Value {
    let mut paths = Map::new();
    for (g, v) in registry::group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash())}),
        );
    }
    json!({"paths": paths})
}

/// A schema for a served kind that upstream's definitions lack (none today): open, so nothing is refused.
fn open_schema(r: &registry::Resource) -> Value {
    json!({
        "description": format!("{} ({}).", r.kind, r.api_version()),
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": r.kind}],
    })
}

/// The name a served kind's schema has in the documents.
fn schema_name(r: &registry::Resource) -> String {
    definition_of(r.group, r.version, r.kind)
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "io.k8s.skiff.{}.{}.{}",
                if r.group.is_empty() { "core" } else { r.group },
                r.version,
                r.kind
            )
        })
}

/// One path per resource with its operations carrying `x-kubernetes-group-version-kind` and the
/// `fieldValidation` parameter (what kubectl looks for to decide that the server validates fields).
fn v3_paths(g: &str, v: &str) -> Map<String, Value> {
    let mut paths = Map::new();
    for r in registry::in_group_version(g, v) {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let schema_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
        let fv = json!({"name": "fieldValidation", "in": "query", "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.", "schema": {"type": "string", "uniqueItems": true}});
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "parameters": [fv.clone()],
                "requestBody": {"content": {"application/json": {"schema": schema_ref.clone()}}},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref.clone()}}}},
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk.clone(),
            })
        };
        let base = format!("/{}/", gv_path(g, v));
        let (item, coll) = if r.namespaced {
            (
                format!("{base}namespaces/{{namespace}}/{}/{{name}}", r.plural),
                format!("{base}namespaces/{{namespace}}/{}", r.plural),
            )
        } else {
            (
                format!("{base}{}/{{name}}", r.plural),
                format!("{base}{}", r.plural),
            )
        };
        paths.insert(
            item,
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        paths.insert(coll, json!({"post": op("post")}));
    }
    paths
}

/// A group-version's v3 document: its resources' paths and the schemas of its kinds with everything they
/// refer to.
pub fn v3_group_version(path: &str) -> Option<Value> {
    let (g, v) = registry::group_versions()
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path)?;
    let resources: Vec<&registry::Resource> = registry::in_group_version(g, v).collect();
    let names = closure(
        resources
            .iter()
            .filter_map(|r| definition_of(r.group, r.version, r.kind))
            .map(str::to_string)
            .chain(["io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_string()]),
    );
    let defs = definitions();
    let mut schemas: Map<String, Value> = names
        .iter()
        .map(|n| (n.clone(), v3_definition(n, &defs[n])))
        .collect();
    for r in &resources {
        if definition_of(r.group, r.version, r.kind).is_none() {
            schemas.insert(schema_name(r), open_schema(r));
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::version()["gitVersion"].clone()},
        "paths": v3_paths(g, v),
        "components": {"schemas": schemas},
    }))
}

/// The v2 document: every definition (paths are not needed by kubectl's v2 readers).
pub fn v2() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": crate::discovery::version()["gitVersion"].clone()},
            "paths": {},
            "definitions": definitions(),
        })
    })
}

/// The v2 document as gnostic's `openapi_v2.Document` protobuf, encoded once.
pub fn v2_protobuf() -> &'static [u8] {
    static PB: OnceLock<Vec<u8>> = OnceLock::new();
    PB.get_or_init(|| proto::document(v2()))
}

/// Whether a request for `/openapi/v2` asks for the protobuf form.
pub fn wants_v2_protobuf(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or_default().trim();
        media == V2_PROTOBUF_ACCEPT || media == V2_PROTOBUF_CONTENT_TYPE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_upstreams_schema() {
        for (g, v) in registry::group_versions() {
            for r in registry::in_group_version(g, v) {
                assert!(
                    definition_of(r.group, r.version, r.kind).is_some(),
                    "{}/{} {}",
                    r.group,
                    r.version,
                    r.kind
                );
            }
        }
    }

    #[test]
    fn group_version_documents_resolve_every_reference() {
        for (g, v) in registry::group_versions() {
            let doc = v3_group_version(&gv_path(g, v)).expect("document");
            let schemas = doc["components"]["schemas"].as_object().expect("schemas");
            let text = doc.to_string();
            for part in text.split("\"#/components/schemas/").skip(1) {
                let name = &part[..part.find('"').expect("quote")];
                assert!(schemas.contains_key(name), "{g}/{v}: {name}");
            }
        }
        let core = v3_group_version("api/v1").expect("core");
        let port = &core["components"]["schemas"]["io.k8s.api.core.v1.ServicePort"];
        assert_eq!(
            port["properties"]["targetPort"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString"
        );
        assert!(port["properties"]["targetPort"]["description"]
            .as_str()
            .expect("description")
            .starts_with("Number or name of the port"));
    }

    #[test]
    fn protobuf_is_asked_for_by_media_type() {
        assert!(wants_v2_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(!wants_v2_protobuf("application/json"));
    }
}
