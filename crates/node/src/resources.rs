//! `resourceFieldRef` values (env and downwardAPI volumes) as kubelet computes them: the container's limit
//! (the node's allocatable when unset) or request, divided by the divisor and rounded up. Pure.

use k8s_openapi::api::core::v1::Container;
use skiff_runtime::quantity::parse_milli;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("unsupported container resource : {0}")]
    Unsupported(String),
    #[error("invalid quantity {0:?}")]
    Quantity(String),
}

/// The value of `resource` (`limits.cpu`, `requests.memory`, ...) for `container`, as the string the
/// environment variable or file gets.
pub fn container_resource(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_allocatable: &BTreeMap<String, String>,
) -> Result<String, ResourceError> {
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| ResourceError::Unsupported(resource.to_string()))?;
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") {
        return Err(ResourceError::Unsupported(resource.to_string()));
    }
    let res = container.resources.as_ref();
    let value = match section {
        "limits" => res
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
            .map(|q| q.0.clone())
            .or_else(|| node_allocatable.get(name).cloned()),
        "requests" => res
            .and_then(|r| r.requests.as_ref())
            .and_then(|l| l.get(name))
            .or_else(|| {
                res.and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get(name))
            })
            .map(|q| q.0.clone()),
        _ => return Err(ResourceError::Unsupported(resource.to_string())),
    }
    .unwrap_or_else(|| "0".to_string());
    let milli = parse_milli(&value).ok_or_else(|| ResourceError::Quantity(value.clone()))?;
    let divisor = divisor
        .filter(|d| !d.is_empty() && *d != "0")
        .unwrap_or("1");
    let div = parse_milli(divisor)
        .filter(|d| *d > 0)
        .ok_or_else(|| ResourceError::Quantity(divisor.to_string()))?;
    // cpu in milli-cores against the divisor's milli-cores; memory and storage in bytes: both are the
    // ratio of the milli-units.
    let out = (milli + div - 1).div_euclid(div);
    Ok(out.max(0).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn container(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let map = |xs: &[(&str, &str)]| {
            (!xs.is_empty()).then(|| {
                xs.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: map(limits),
                requests: map(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn values_round_up_against_the_divisor() {
        let node: BTreeMap<String, String> = [("cpu", "2"), ("memory", "8Gi")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = container(&[("cpu", "500m"), ("memory", "128Mi")], &[("cpu", "250m")]);
        let v = |r: &str, d: Option<&str>| container_resource(&c, r, d, &node).unwrap();
        assert_eq!(v("limits.cpu", None), "1");
        assert_eq!(v("limits.cpu", Some("1m")), "500");
        assert_eq!(v("requests.cpu", Some("1m")), "250");
        assert_eq!(v("limits.memory", None), "134217728");
        assert_eq!(v("limits.memory", Some("1Mi")), "128");
        assert_eq!(v("requests.memory", Some("1Mi")), "128");
        let bare = container(&[], &[]);
        assert_eq!(
            container_resource(&bare, "limits.memory", Some("1Gi"), &node).unwrap(),
            "8"
        );
        assert_eq!(
            container_resource(&bare, "requests.cpu", None, &node).unwrap(),
            "0"
        );
        assert_eq!(
            container_resource(&bare, "limits.gpu", None, &node)
                .unwrap_err()
                .to_string(),
            "unsupported container resource : limits.gpu"
        );
    }
}
