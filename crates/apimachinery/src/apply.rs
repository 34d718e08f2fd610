//! Server-side apply (`application/apply-patch+yaml`) and `metadata.managedFields` bookkeeping.
//! CONTRACT STUB: the apimachinery work replaces the bodies; keep the signatures.

use crate::GroupKind;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// Field path as upstream prints it, e.g. `.spec.replicas`.
    pub field: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// 409 Conflict upstream: `Apply failed with N conflict(s): conflict with "mgr": .spec.replicas`.
    #[error("Apply failed with {} conflict(s)", .0.len())]
    Conflicts(Vec<Conflict>),
    #[error("{0}")]
    Invalid(String),
}

/// Apply `applied` (the user's intent, as sent) for `manager` onto `live` (None = create). Returns the new object
/// with managedFields updated. `now` is the RFC 3339 time for managedFields entries.
pub fn server_side_apply(
    _gk: GroupKind<'_>,
    _live: Option<&Value>,
    _applied: &Value,
    _manager: &str,
    _force: bool,
    _now: &str,
) -> Result<Value, ApplyError> {
    Err(ApplyError::Invalid(
        "server-side apply not implemented yet".into(),
    ))
}

/// Record an ordinary write (create / update / patch, operation "Update") by `manager` in `new`'s managedFields.
pub fn record_update(
    _gk: GroupKind<'_>,
    _old: Option<&Value>,
    _new: &mut Value,
    _manager: &str,
    _now: &str,
) {
}
