//! Pure API machinery: everything the API server computes about objects without doing I/O.
//! Objects are `serde_json::Value` in their JSON wire form (apiVersion, kind, metadata, spec, status).
//!
//! Owned by the apimachinery work; the signatures below are the contract `skiff-api` calls.

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
