//! Skiff's pod network: the `skiff-cni` CNI plugin with host-local style IPAM, the runtime side that runs a
//! CNI plugin list as a container runtime does, and the routes between nodes (VXLAN overlay or host-gw).

pub mod config;
pub mod ipam;
pub mod nl;
pub mod bgp;
pub mod overlay;
pub mod plugin;
pub mod runtime;
pub mod types;

pub use plugin::plugin_main;
pub use types::{CniError, CniResult};
