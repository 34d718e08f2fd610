//! `skiff netpol why FROM TO PORT[/PROTO]` against a cluster: list policies, pods and namespaces, build the
//! model for every pod (as if all were local) and explain the verdict.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::Api;

use crate::model::{Local, Model, PodView};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Input(String),
}

/// An end given as `namespace/name` (a pod) or an IPv4 address.
fn resolve(end: &str, pods: &[PodView]) -> Result<Ipv4Addr, QueryError> {
    if let Ok(ip) = end.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let (ns, name) = end.split_once('/').ok_or_else(|| {
        QueryError::Input(format!(
            "{end:?}: give a pod as namespace/name, or an IPv4 address"
        ))
    })?;
    pods.iter()
        .find(|p| p.namespace == ns && p.name == name)
        .map(|p| p.ip)
        .ok_or_else(|| {
            QueryError::Input(format!(
                "pod {end} not found, or it has no IPv4 address or uses the host network"
            ))
        })
}

pub async fn why(
    client: kube::Client,
    from: &str,
    to: &str,
    port: &str,
) -> Result<String, QueryError> {
    let (port, protocol) = crate::why::parse_port(port).map_err(QueryError::Input)?;
    let lp = ListParams::default();
    let policies = Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await?
        .items;
    let pods: Vec<PodView> = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await?
        .items
        .iter()
        .filter_map(PodView::from_pod)
        .collect();
    let namespaces = Api::<Namespace>::all(client).list(&lp).await?.items;
    let (src, dst) = (resolve(from, &pods)?, resolve(to, &pods)?);
    let model = Model::build(&policies, &pods, &namespaces, Local::All);
    Ok(crate::why::explain(&model, src, dst, protocol, port))
}
