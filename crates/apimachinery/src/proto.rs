//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) → JSON objects.
//! CONTRACT STUB: the apimachinery work replaces the bodies; keep the signatures.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtoError(pub String);

/// Decode a `k8s\0`-enveloped runtime.Unknown into the object's JSON form (with apiVersion and kind).
pub fn decode(_body: &[u8]) -> Result<Value, ProtoError> {
    Err(ProtoError("protobuf decoding not implemented yet".into()))
}
