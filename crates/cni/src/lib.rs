//! Skiff's pod network: the `skiff-cni` CNI plugin with host-local style IPAM, the runtime side that runs a
//! CNI plugin list as a container runtime does, and the routes between nodes (VXLAN overlay or host-gw, or
//! BGP with BIRD).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod bgp;
pub mod config;
pub mod ipam;
pub mod nl;
pub mod overlay;
pub mod plugin;
pub mod runtime;
pub mod types;

pub use plugin::plugin_main;

/// How pod traffic reaches other nodes: the routes of `overlay` (VXLAN or host-gw, programmed by Skiff) or
/// of `bgp` (learned and installed by BIRD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Vxlan,
    HostGw,
    Bgp,
}
pub use types::{CniError, CniResult};
