//! Validation as upstream (field paths and messages), and unknown-field detection for fieldValidation.
//! CONTRACT STUB: the apimachinery work replaces the bodies; keep the signatures.

use crate::{Cause, GroupKind};
use serde_json::Value;

/// Validate `obj` (after defaulting); `old` is the stored object on update (immutable-field checks).
pub fn validate(_gk: GroupKind<'_>, _obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
    Vec::new()
}

/// Paths of fields the kind's schema does not know, as upstream reports them, e.g. `spec.foo`
/// (kubectl prints `strict decoding error: unknown field "spec.foo"`).
pub fn unknown_fields(_gk: GroupKind<'_>, _obj: &Value) -> Vec<String> {
    Vec::new()
}
