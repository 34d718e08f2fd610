//! Shared runtime for Skiff's API clients: cluster-wide defaults, the names Skiff's components agree on,
//! building a kube-rs client from a kubeconfig, and a bounded-frequency sync trigger.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod defaults;
pub mod gate;
pub mod quantity;
pub mod signal;
pub mod sync;
pub mod watch;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building client: {0}")]
    Client(#[from] kube::Error),
}

/// A kube-rs client for the cluster described by the kubeconfig at `path` (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?;
    Ok(kube::Client::try_from(config)?)
}

/// Who this agent is: the Node's name and its address on the node network (InternalIP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub name: String,
    pub ip: std::net::IpAddr,
}
