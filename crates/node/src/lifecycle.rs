//! Container lifecycle hooks (`lifecycle.preStop`): exec inside the container, httpGet / tcpSocket from
//! the pod's network namespace (the probe machinery), or sleep; bounded by what is left of the grace period.

use crate::probe::{self, Outcome, Target};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use std::time::Duration;

/// How kubelet names a hook in its FailedPreStopHook event.
pub fn describe(h: &LifecycleHandler) -> String {
    if let Some(e) = &h.exec {
        format!(
            "Exec lifecycle hook ({:?})",
            e.command.clone().unwrap_or_default()
        )
    } else if let Some(g) = &h.http_get {
        format!(
            "HTTP lifecycle hook ({})",
            g.path.clone().unwrap_or_default()
        )
    } else if let Some(s) = &h.sleep {
        format!("Sleep lifecycle hook ({})", s.seconds)
    } else {
        "lifecycle hook".to_string()
    }
}

/// Run the hook to its end or until `limit` passes.
pub async fn run_hook(
    h: &LifecycleHandler,
    container: &Container,
    target: &Target,
    limit: Duration,
) -> Result<(), String> {
    if let Some(s) = &h.sleep {
        let wanted = Duration::from_secs(s.seconds.max(0) as u64);
        tokio::time::sleep(wanted.min(limit)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        timeout_seconds: Some(limit.as_secs().clamp(1, i32::MAX as u64) as i32),
        ..Default::default()
    };
    match tokio::time::timeout(
        limit.max(Duration::from_millis(1)),
        probe::attempt(&probe, container, target),
    )
    .await
    {
        Ok(Outcome::Success) => Ok(()),
        Ok(Outcome::Failure(m)) => Err(m),
        Err(_) => Err(format!(
            "hook did not finish within the grace period ({}s)",
            limit.as_secs()
        )),
    }
}
