//! Server-side Table printing (`as=Table`): upstream's columns per kind and each object's cells.
//! CONTRACT STUB: the apimachinery work replaces the bodies; keep the signatures.

use crate::GroupKind;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
}

/// Column definitions (priority 1 = shown only with -o wide). Unknown kinds: Name + Age.
pub fn columns(_gk: GroupKind<'_>) -> Vec<Column> {
    Vec::new()
}

/// One row's cells for `obj`, in `columns` order; `now` computes AGE.
pub fn cells(_gk: GroupKind<'_>, _obj: &Value, _now: jiff::Timestamp) -> Vec<Value> {
    Vec::new()
}
