//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7396), strategic merge patch.
//! CONTRACT STUB: the apimachinery work replaces the bodies; keep the signatures.

use crate::GroupKind;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (400 BadRequest upstream).
    #[error("{0}")]
    Malformed(String),
    /// The patch cannot be applied to this object (422 upstream, e.g. a failed `test` op).
    #[error("{0}")]
    Unprocessable(String),
}

pub fn apply_json_patch(_doc: &Value, _patch: &Value) -> Result<Value, PatchError> {
    Err(PatchError::Malformed(
        "json patch not implemented yet".into(),
    ))
}

pub fn apply_merge_patch(_doc: &Value, _patch: &Value) -> Result<Value, PatchError> {
    Err(PatchError::Malformed(
        "merge patch not implemented yet".into(),
    ))
}

pub fn apply_strategic_merge_patch(
    _gk: GroupKind<'_>,
    _doc: &Value,
    _patch: &Value,
) -> Result<Value, PatchError> {
    Err(PatchError::Malformed(
        "strategic merge patch not implemented yet".into(),
    ))
}
