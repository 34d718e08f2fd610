//! The identity a container runs as, from the pod's and the container's `securityContext` (the container's
//! fields win), with kubelet's `runAsNonRoot` check. Pure.

use crate::spawn::User;
use k8s_openapi::api::core::v1::{Container, PodSpec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error("container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})")]
    ImageRunsAsRoot { pod: String, container: String },
    #[error("container's runAsUser breaks non-root policy (pod: {pod:?}, container: {container})")]
    RunAsUserRoot { pod: String, container: String },
    #[error("invalid {field} {value}: must be between 0 and 4294967295")]
    Range { field: &'static str, value: i64 },
}

fn id(field: &'static str, value: i64) -> Result<u32, SecurityError> {
    u32::try_from(value).map_err(|_| SecurityError::Range { field, value })
}

/// None: the container runs as the agent's user (root), as an image without a USER does.
/// `pod` names the pod in errors as kubelet's `format.Pod` does (`name_namespace(uid)`).
pub fn container_user(
    spec: &PodSpec,
    container: &Container,
    pod: &str,
) -> Result<Option<User>, SecurityError> {
    let psc = spec.security_context.as_ref();
    let csc = container.security_context.as_ref();
    let uid = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let gid = csc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root {
        match uid {
            None => {
                return Err(SecurityError::ImageRunsAsRoot {
                    pod: pod.to_string(),
                    container: container.name.clone(),
                })
            }
            Some(0) => {
                return Err(SecurityError::RunAsUserRoot {
                    pod: pod.to_string(),
                    container: container.name.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let mut groups: Vec<u32> = Vec::new();
    for g in psc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
    {
        groups.push(id("supplementalGroups", g)?);
    }
    // kubelet adds the fsGroup to every container's supplemental groups.
    if let Some(g) = psc.and_then(|s| s.fs_group) {
        groups.push(id("fsGroup", g)?);
    }
    if uid.is_none() && gid.is_none() && groups.is_empty() {
        return Ok(None);
    }
    let gid = match gid {
        Some(g) => id("runAsGroup", g)?,
        None => 0,
    };
    groups.sort_unstable();
    groups.dedup();
    Ok(Some(User {
        uid: match uid {
            Some(u) => id("runAsUser", u)?,
            None => 0,
        },
        gid,
        groups,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};

    #[test]
    fn container_fields_override_the_pods() {
        let spec = PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                fs_group: Some(2000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plain = Container {
            name: "a".into(),
            ..Default::default()
        };
        assert_eq!(
            container_user(&spec, &plain, "p").unwrap(),
            Some(User {
                uid: 1000,
                gid: 3000,
                groups: vec![2000]
            })
        );
        let own = Container {
            name: "b".into(),
            security_context: Some(SecurityContext {
                run_as_user: Some(2001),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(container_user(&spec, &own, "p").unwrap().unwrap().uid, 2001);
        assert_eq!(
            container_user(&PodSpec::default(), &plain, "p").unwrap(),
            None
        );
    }

    #[test]
    fn run_as_non_root_is_enforced() {
        let c = Container {
            name: "app".into(),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            container_user(&PodSpec::default(), &c, "web_default(u1)")
                .unwrap_err()
                .to_string(),
            "container has runAsNonRoot and image will run as root (pod: \"web_default(u1)\", container: app)"
        );
    }
}
