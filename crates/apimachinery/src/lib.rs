//! Pure API machinery: everything the API server computes about objects without doing I/O.
//! Objects are `serde_json::Value` in their JSON wire form (apiVersion, kind, metadata, spec, status).
//!
//! Owned by the apimachinery work; the signatures below are the contract `skiff-api` calls.
//!
//! Order of use in a write path, as upstream's registry does it:
//! decode ([`proto::decode`] for protobuf bodies) → [`validation::decode_error`] / [`validation::unknown_fields`]
//! (fieldValidation) → on update [`defaults::prepare_for_update`] (keeps allocated Service values) →
//! [`defaults::apply_defaults`] → [`validation::validate`] → [`apply::record_update`] (or
//! [`apply::server_side_apply`] for apply patches, whose conflicts [`apply::conflict_message`] words as upstream).
//! Reads: [`selector::LabelSelector`] / [`selector::FieldSelector`] (with
//! [`selector::FieldSelector::check_supported`] for upstream's `field label not supported` errors), and
//! [`table::columns`] / [`table::cells`] for `as=Table`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod apply;
pub mod defaults;
pub mod names;
pub mod patch;
pub mod proto;
pub mod selector;
pub mod table;
pub mod validation;

/// The identity of a kind: `group` is "" for core/v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupKind<'a> {
    pub group: &'a str,
    pub kind: &'a str,
}

/// One cause of an Invalid (422) or BadRequest reply, as upstream's `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cause {
    /// Upstream cause types: FieldValueRequired, FieldValueInvalid, FieldValueDuplicate, FieldValueNotSupported,
    /// FieldValueForbidden, FieldValueTooLong, FieldValueTypeInvalid, FieldImmutable ("FieldValueInvalid" + message).
    pub reason: String,
    /// Upstream's message without the field prefix, e.g. `Invalid value: 70000: must be between 1 and 65535, inclusive`.
    pub message: String,
    /// Upstream's field path, e.g. `spec.ports[0].port`.
    pub field: String,
}
pub use apply::{ApplyError, Conflict};

#[cfg(test)]
mod perf {
    //! Rough per-operation costs (run: `cargo test -p skiff-apimachinery perf -- --ignored --nocapture`).
    use crate::GroupKind;
    use serde_json::json;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn perf_smoke() {
        let gk = GroupKind {
            group: "apps",
            kind: "Deployment",
        };
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "demoapp", "namespace": "default",
            "labels": {"app": "demoapp"}, "creationTimestamp": "2026-11-22T04:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "demoapp"}}, "template": {"metadata": {"labels": {"app": "demoapp"}},
            "spec": {"containers": [{"name": "demoapp", "image": "ikubernetes/demoapp:v1.0", "ports": [{"containerPort": 80}]}]}}}});
        crate::defaults::apply_defaults(gk, &mut d);
        let n = 2000;
        let time = |name: &str, f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            println!(
                "{name}: {:.1} us/op",
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        };
        let sel = crate::selector::LabelSelector::parse("app=demoapp,tier notin (db)").unwrap();
        let labels = d["metadata"]["labels"].clone();
        time("label selector match", &mut || {
            assert!(sel.matches(Some(&labels)))
        });
        let patch = json!({"spec": {"replicas": 4, "template": {"spec": {"$setElementOrder/containers": [{"name": "demoapp"}],
            "containers": [{"name": "demoapp", "image": "x:2"}]}}}});
        time("strategic merge patch", &mut || {
            crate::patch::apply_strategic_merge_patch(gk, &d, &patch).unwrap();
        });
        time("defaults", &mut || {
            let mut x = d.clone();
            crate::defaults::apply_defaults(gk, &mut x);
        });
        time("validate", &mut || {
            assert!(crate::validation::validate(gk, &d, None).is_empty())
        });
        time("unknown_fields", &mut || {
            assert!(crate::validation::unknown_fields(gk, &d).is_empty())
        });
        let now: jiff::Timestamp = "2026-11-22T05:00:00Z".parse().unwrap();
        time("table cells", &mut || {
            crate::table::cells(gk, &d, now);
        });
        time("server-side apply (create)", &mut || {
            crate::apply::server_side_apply(gk, None, &d, "kubectl", false, "2026-11-22T05:00:00Z")
                .unwrap();
        });
    }
}
