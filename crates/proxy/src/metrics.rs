//! kube-proxy's Prometheus metrics (same names), rendered as text exposition format.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

#[derive(Debug, Clone)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Histogram {
        let n = bounds.len();
        Histogram {
            bounds,
            counts: vec![0; n],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

fn exponential(start: f64, factor: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| start * factor.powi(i as i32)).collect()
}

#[derive(Debug)]
struct Inner {
    sync: Histogram,
    full: Histogram,
    partial: Histogram,
    programming: Histogram,
    last_sync: f64,
    failures: u64,
    syncs_full: u64,
    syncs_partial: u64,
    service_changes: u64,
    services: usize,
}

/// The proxy's metrics, shared between the sync loop and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // kube-proxy's buckets: 1 ms doubling 15 times for syncs; network programming from 1 ms to minutes.
        let sync = exponential(0.001, 2.0, 15);
        let mut programming = exponential(0.001, 2.0, 12);
        programming.extend([5.0, 10.0, 30.0, 60.0, 300.0]);
        Metrics {
            inner: Mutex::new(Inner {
                sync: Histogram::new(sync.clone()),
                full: Histogram::new(sync.clone()),
                partial: Histogram::new(sync),
                programming: Histogram::new(programming),
                last_sync: 0.0,
                failures: 0,
                syncs_full: 0,
                syncs_partial: 0,
                service_changes: 0,
                services: 0,
            }),
        }
    }

    pub fn record_sync(
        &self,
        full: bool,
        took: Duration,
        changed: usize,
        services: usize,
        programming: Option<Duration>,
    ) {
        let mut m = self.inner.lock();
        let s = took.as_secs_f64();
        m.sync.observe(s);
        if full {
            m.full.observe(s);
            m.syncs_full += 1;
        } else {
            m.partial.observe(s);
            m.syncs_partial += 1;
        }
        if let Some(p) = programming {
            m.programming.observe(p.as_secs_f64());
        }
        m.service_changes += changed as u64;
        m.services = services;
        m.last_sync = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
    }

    pub fn record_failure(&self) {
        self.inner.lock().failures += 1;
    }

    /// Seconds since the epoch of the last successful sync (0 before the first).
    pub fn last_sync(&self) -> f64 {
        self.inner.lock().last_sync
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock();
        let mut out = String::new();
        m.sync.render(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        m.full.render(
            &mut out,
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        );
        m.partial.render(
            &mut out,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        );
        m.programming.render(
            &mut out,
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
        );
        let _ = writeln!(out, "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced");
        let _ = writeln!(
            out,
            "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge"
        );
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds {}",
            m.last_sync
        );
        let _ = writeln!(out, "# HELP kubeproxy_sync_proxy_rules_nftables_sync_failures_total Cumulative proxy nftables sync failures");
        let _ = writeln!(
            out,
            "# TYPE kubeproxy_sync_proxy_rules_nftables_sync_failures_total counter"
        );
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total {}",
            m.failures
        );
        let _ = writeln!(out, "# HELP kubeproxy_sync_proxy_rules_service_changes_total Cumulative proxy rules Service changes");
        let _ = writeln!(
            out,
            "# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter"
        );
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_service_changes_total {}",
            m.service_changes
        );
        let _ = writeln!(
            out,
            "# HELP skiff_proxy_syncs_total Syncs applied to the kernel, by kind"
        );
        let _ = writeln!(out, "# TYPE skiff_proxy_syncs_total counter");
        let _ = writeln!(
            out,
            "skiff_proxy_syncs_total{{kind=\"full\"}} {}",
            m.syncs_full
        );
        let _ = writeln!(
            out,
            "skiff_proxy_syncs_total{{kind=\"partial\"}} {}",
            m.syncs_partial
        );
        let _ = writeln!(
            out,
            "# HELP skiff_proxy_services Services in the installed rule model"
        );
        let _ = writeln!(out, "# TYPE skiff_proxy_services gauge");
        let _ = writeln!(out, "skiff_proxy_services {}", m.services);
        out
    }
}
