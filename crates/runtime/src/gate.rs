//! A hook the node agent awaits between a pod's sandbox (its IP known) and its first container: components
//! that must be in place before a pod's first packet (network policy) implement it. The node bounds the wait.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;

pub trait PodStartGate: Send + Sync {
    /// Resolves once whatever this gate guards is in place for `pod` with addresses `ips`.
    fn admit<'a>(&'a self, pod: &'a Pod, ips: &'a [String]) -> BoxFuture<'a, ()>;
}
