//! Prometheus metrics of the enforcer: per-policy denials (read from the table's named counters at scrape
//! time, so they are the kernel's own numbers), sync counts and the last sync's duration. Served on a plain
//! HTTP/1.1 listener (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::apply::Runner;

#[derive(Debug, Default)]
pub struct Metrics {
    pub full_syncs: AtomicU64,
    pub diff_syncs: AtomicU64,
    pub failed_syncs: AtomicU64,
    /// Microseconds the last applied sync took (model + render + transaction).
    pub last_sync_micros: AtomicU64,
    pub programmed_policies: AtomicU64,
}

/// `denied-<direction>-<namespace>/<name>` → (direction, namespace, name).
fn split_counter(name: &str) -> Option<(&str, &str, &str)> {
    let rest = name.strip_prefix("denied-")?;
    let (dir, key) = rest.split_once('-')?;
    let (ns, policy) = key.split_once('/')?;
    Some((dir, ns, policy))
}

/// The exposition text for `counters` (name → packets, bytes) and the sync metrics.
pub fn render(m: &Metrics, counters: &std::collections::BTreeMap<String, (u64, u64)>) -> String {
    let mut out = String::new();
    for (metric, help, pick) in [
        ("skiff_netpol_denied_packets_total", "Packets dropped because a NetworkPolicy isolates the pod and no rule admits them, per isolating policy.", 0),
        ("skiff_netpol_denied_bytes_total", "Bytes of those packets.", 1),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (name, (packets, bytes)) in counters {
            if let Some((dir, ns, policy)) = split_counter(name) {
                let v = if pick == 0 { packets } else { bytes };
                let _ = writeln!(out, "{metric}{{direction=\"{dir}\",namespace=\"{ns}\",policy=\"{policy}\"}} {v}");
            }
        }
    }
    let _ = writeln!(out, "# HELP skiff_netpol_syncs_total Transactions applied to the skiff-netpol table.\n# TYPE skiff_netpol_syncs_total counter");
    let _ = writeln!(
        out,
        "skiff_netpol_syncs_total{{kind=\"full\"}} {}",
        m.full_syncs.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "skiff_netpol_syncs_total{{kind=\"diff\"}} {}",
        m.diff_syncs.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "skiff_netpol_syncs_total{{kind=\"failed\"}} {}",
        m.failed_syncs.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP skiff_netpol_last_sync_duration_seconds Model, render and transaction of the last applied sync.\n# TYPE skiff_netpol_last_sync_duration_seconds gauge");
    let _ = writeln!(
        out,
        "skiff_netpol_last_sync_duration_seconds {}",
        m.last_sync_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "# HELP skiff_netpol_programmed_policies NetworkPolicies selecting a pod of this node.\n# TYPE skiff_netpol_programmed_policies gauge");
    let _ = writeln!(
        out,
        "skiff_netpol_programmed_policies {}",
        m.programmed_policies.load(Ordering::Relaxed)
    );
    out
}

/// Serve `/metrics` until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, runner: Runner, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (runner, metrics) = (runner.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/metrics" {
                let counters = runner.counters(crate::nft::TABLE).await.unwrap_or_default();
                ("200 OK", render(&metrics, &counters))
            } else {
                ("404 Not Found", "404 page not found\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_labelled_series() {
        let m = Metrics::default();
        m.diff_syncs.store(3, Ordering::Relaxed);
        let counters = [("denied-ingress-x/deny-all".to_string(), (4, 240))]
            .into_iter()
            .collect();
        let text = render(&m, &counters);
        assert!(text.contains("skiff_netpol_denied_packets_total{direction=\"ingress\",namespace=\"x\",policy=\"deny-all\"} 4"), "{text}");
        assert!(text.contains("skiff_netpol_denied_bytes_total{direction=\"ingress\",namespace=\"x\",policy=\"deny-all\"} 240"));
        assert!(text.contains("skiff_netpol_syncs_total{kind=\"diff\"} 3"));
    }
}
