//! The Skiff node agent (kubelet): Node registration and Lease heartbeat, pod sandboxes (network, UTS and mount
//! namespaces), container processes from the host filesystem resolved through the image catalog, probes,
//! restart back-off, pod status and events, service environment variables, resolv.conf and hosts; and the
//! built-in `demoapp` server.

pub mod backoff;
pub mod catalog;
pub mod demoapp;
pub mod dnsconf;
pub mod envvars;
pub mod status;

use std::path::PathBuf;

/// `skiff agent` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Where pod state, generated resolv.conf/hosts files and container logs live.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub data_dir: PathBuf,
    /// CNI network configuration directory (the first *.conflist, by name, is used).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries (repeatable).
    #[arg(long = "cni-bin-dir", default_values = ["/opt/cni/bin", "/usr/lib/cni"])]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The cluster DNS server written into pods' resolv.conf.
    #[arg(long, default_value = skiff_runtime::defaults::KUBE_DNS_SERVICE_IP)]
    pub cluster_dns: String,
    #[arg(long, default_value = skiff_runtime::defaults::CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// YAML file mapping image names to argv, added to (and overriding) the built-in catalog.
    #[arg(long)]
    pub image_catalog: Option<PathBuf>,
    /// The skiff binary used for built-in images (demoapp, dns); defaults to this executable.
    #[arg(long)]
    pub skiff_exe: Option<PathBuf>,
    /// Kubeconfig handed to system pods (e.g. DNS) that need API access.
    #[arg(long)]
    pub internal_kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Catalog(#[from] catalog::LoadError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
