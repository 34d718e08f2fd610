//! Label selectors (equality- and set-based, as `?labelSelector=` and `spec.selector`) and the field selectors
//! kubectl uses.
//! CONTRACT STUB: the apimachinery work replaces the bodies; keep the signatures.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {}

impl LabelSelector {
    /// Parse the query-string form: `a=b,c!=d,e in (f,g),!h,i`.
    pub fn parse(_s: &str) -> Result<Self, SelectorError> {
        Ok(Self {})
    }
    /// From a JSON `LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_json(_selector: &Value) -> Result<Self, SelectorError> {
        Ok(Self {})
    }
    /// `labels` is the object's `metadata.labels` (None when absent).
    pub fn matches(&self, _labels: Option<&Value>) -> bool {
        true
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {}

impl FieldSelector {
    /// Parse `metadata.name=x,spec.nodeName!=y`.
    pub fn parse(_s: &str) -> Result<Self, SelectorError> {
        Ok(Self {})
    }
    /// Evaluate against the whole object (paths like `metadata.name`, `spec.nodeName`, `involvedObject.uid`, `type`).
    pub fn matches(&self, _obj: &Value) -> bool {
        true
    }
}
