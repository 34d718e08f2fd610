//! Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection: with several
//! `skiff server` processes, only the holder of the lease runs the controllers and the scheduler.
//!
//! A candidate takes the lease when it is absent, released, or unchanged for a whole lease duration *as
//! observed locally* (no clock comparison between machines, as upstream); the holder renews it every retry
//! period and stops its controllers when it could not renew within the renew deadline or someone else took
//! it. Every write is a compare-and-swap on the Lease's resourceVersion, so two candidates never both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

/// Upstream's defaults (kube-controller-manager, kube-scheduler).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This candidate (upstream: `hostname_uuid`).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The lease's election fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub holder: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<jiff::Timestamp>,
    pub renew_time: Option<jiff::Timestamp>,
    pub transitions: i32,
}

impl Record {
    fn from_spec(s: &LeaseSpec) -> Self {
        Record {
            holder: s.holder_identity.clone().unwrap_or_default(),
            lease_duration_seconds: s.lease_duration_seconds.unwrap_or(0),
            acquire_time: s.acquire_time.as_ref().map(|t| t.0),
            renew_time: s.renew_time.as_ref().map(|t| t.0),
            transitions: s.lease_transitions.unwrap_or(0),
        }
    }
    fn to_spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: self.acquire_time.map(MicroTime),
            renew_time: self.renew_time.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..Default::default()
        }
    }
}

/// What a candidate does with the lease it just read.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this record (create when there was none, else replace at the read resourceVersion).
    Write(Record),
    /// Someone else holds a live lease.
    Wait,
}

/// The election rule. `expired`: the current record has not changed for a lease duration as observed
/// locally.
pub fn decide(
    current: Option<&Record>,
    expired: bool,
    me: &str,
    now: jiff::Timestamp,
    lease_duration: Duration,
) -> Decision {
    let secs = lease_duration.as_secs().max(1) as i32;
    match current {
        Some(r) if r.holder == me => Decision::Write(Record {
            renew_time: Some(now),
            lease_duration_seconds: secs,
            ..r.clone()
        }),
        Some(r) if !r.holder.is_empty() && !expired => Decision::Wait,
        _ => Decision::Write(Record {
            holder: me.to_string(),
            lease_duration_seconds: secs,
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions: current.map(|r| r.transitions + 1).unwrap_or(0),
        }),
    }
}

pub struct Elector {
    api: Api<Lease>,
    cfg: Config,
    /// The last record read and when this candidate first saw it so.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(client: Client, cfg: Config) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    /// One round: read the lease, decide, write. Ok(true) when this candidate holds the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.cfg.name).await?;
        let current = lease
            .as_ref()
            .map(|l| Record::from_spec(&l.spec.clone().unwrap_or_default()));
        let now = Instant::now();
        if let Some(c) = &current {
            if self.observed.as_ref().map(|(r, _)| r) != Some(c) {
                self.observed = Some((c.clone(), now));
            }
        }
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) >= self.cfg.lease_duration);
        let record = match decide(
            current.as_ref(),
            expired,
            &self.cfg.identity,
            jiff::Timestamp::now(),
            self.cfg.lease_duration,
        ) {
            Decision::Wait => return Ok(false),
            Decision::Write(r) => r,
        };
        let result = match lease {
            None => {
                let l = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(record.to_spec()),
                };
                self.api.create(&PostParams::default(), &l).await
            }
            Some(mut l) => {
                // resourceVersion kept: a concurrent writer makes this a 409 and the other one won.
                l.spec = Some(record.to_spec());
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &l)
                    .await
            }
        };
        match result {
            Ok(_) => {
                self.observed = Some((record, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Retry every retry period until this candidate holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "leader election: lease not reachable"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renew every retry period; returns when leadership is lost (renew deadline passed without a successful
    /// renewal, or another candidate holds the lease).
    pub async fn keep_renewing(&mut self) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last = Instant::now(),
                Ok(false) => {
                    tracing::warn!(identity = %self.cfg.identity, "leader election: lease taken by another candidate");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "leader election: renewing failed"),
            }
            if last.elapsed() >= self.cfg.renew_deadline {
                tracing::warn!(identity = %self.cfg.identity, "leader election: renew deadline passed");
                return;
            }
        }
    }
}

/// Run `work` only while this candidate leads: acquire, run it while renewing, stop it when leadership is lost
/// and stand by again. Returns only when `work` ends by itself (with its result).
pub async fn run_elected<F, Fut, T>(client: Client, cfg: Config, work: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut elector = Elector::new(client, cfg);
    loop {
        elector.acquire().await;
        tracing::info!(identity = %elector.identity(), "leader election: became leader");
        let mut task = tokio::spawn(work());
        tokio::select! {
            r = &mut task => match r {
                Ok(v) => return v,
                Err(e) => {
                    // A panic in the work: stand by again rather than take the process down.
                    tracing::error!(error = %e, "leader election: controllers task failed");
                }
            },
            _ = elector.keep_renewing() => {
                tracing::warn!(identity = %elector.identity(), "leader election: lost the lease; stopping controllers");
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Upstream's identity: the host name, `_`, a random UUID-like suffix.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "skiff".into());
    format!("{host}_{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
    }

    #[test]
    fn absent_lease_is_taken_with_zero_transitions() {
        let d = decide(None, false, "a", t(0), LEASE_DURATION);
        assert_eq!(
            d,
            Decision::Write(Record {
                holder: "a".into(),
                lease_duration_seconds: 15,
                acquire_time: Some(t(0)),
                renew_time: Some(t(0)),
                transitions: 0,
            })
        );
    }

    #[test]
    fn holder_renews_keeping_acquire_time_and_transitions() {
        let cur = Record {
            holder: "a".into(),
            lease_duration_seconds: 15,
            acquire_time: Some(t(0)),
            renew_time: Some(t(2)),
            transitions: 3,
        };
        // Even when it looks expired locally: the holder itself may always renew.
        match decide(Some(&cur), true, "a", t(4), LEASE_DURATION) {
            Decision::Write(r) => {
                assert_eq!(r.renew_time, Some(t(4)));
                assert_eq!((r.acquire_time, r.transitions), (Some(t(0)), 3));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn others_wait_for_a_live_lease_and_take_an_expired_or_released_one() {
        let cur = Record {
            holder: "a".into(),
            lease_duration_seconds: 15,
            acquire_time: Some(t(0)),
            renew_time: Some(t(2)),
            transitions: 3,
        };
        assert_eq!(
            decide(Some(&cur), false, "b", t(4), LEASE_DURATION),
            Decision::Wait
        );
        match decide(Some(&cur), true, "b", t(20), LEASE_DURATION) {
            Decision::Write(r) => {
                assert_eq!(r.holder, "b");
                assert_eq!(r.transitions, 4);
                assert_eq!(r.acquire_time, Some(t(20)));
            }
            d => panic!("{d:?}"),
        }
        let released = Record {
            holder: String::new(),
            ..cur
        };
        assert!(matches!(
            decide(Some(&released), false, "b", t(5), LEASE_DURATION),
            Decision::Write(Record { ref holder, transitions: 4, .. }) if holder == "b"
        ));
    }
}
