//! A bounded-frequency runner, as kube-proxy's: many change notifications collapse into one sync, syncs are at
//! least `min_interval` apart, and a sync happens at least every `max_interval` even without changes.

use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
pub struct SyncTrigger {
    notify: Notify,
}

impl SyncTrigger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask for a sync; cheap, and calls made before the next sync collapse into it.
    pub fn request(&self) {
        self.notify.notify_one();
    }

    /// Run `sync` whenever requested, never more often than `min_interval`, at least every `max_interval`.
    /// `sync` returns false when it failed; the runner then retries after `min_interval`.
    pub async fn run<F, Fut>(&self, min_interval: Duration, max_interval: Duration, mut sync: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut last = Instant::now() - min_interval;
        let mut retry = false;
        loop {
            if !retry {
                let _ = tokio::time::timeout(max_interval, self.notify.notified()).await;
            }
            let wait = (last + min_interval).saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            last = Instant::now();
            retry = !sync().await;
        }
    }
}
