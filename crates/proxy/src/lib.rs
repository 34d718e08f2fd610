//! kube-proxy for Skiff: watches Services, EndpointSlices and Nodes through kube-rs, builds a pure rule model
//! (`model`), renders it for nftables (`nft`) and applies it as one `nft -f -` transaction per sync (`apply`),
//! incrementally after the first full sync. Also: stale UDP conntrack cleanup, health-check node ports for
//! `externalTrafficPolicy: Local`, LoadBalancer address announcement, and Prometheus metrics.

pub mod model;
pub mod nft;
