//! NetworkPolicy enforcement (networking.k8s.io/v1) for one node, as Calico's or kube-router's policy agents.
//!
//! Pure: `cidr` (ipBlock ranges), `model` (policies + pods + namespaces → per-pod verdict sets; cannot fail),
//! `nft` (model → one nftables table `skiff-netpol`, whole or as a difference), `why` (explanations of one
//! verdict, from the same model). I/O: `apply` (`nft -f -`, counters), `agent` (watch caches, sync loop,
//! the pod-start gate).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod apply;
pub mod cidr;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod query;
pub mod testing;
pub mod why;
