//! Restart back-off per container, as kubelet's (`flowcontrol.Backoff`): the first restart is immediate, then
//! 10s, 20s, 40s ... capped at 5 minutes; a container that ran for longer than twice the cap starts over.
//! Pure: times are passed in.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackOff {
    /// (current back-off, the exit time it was last advanced at); times are offsets from any fixed origin.
    entry: Option<(Duration, Duration)>,
}

impl BackOff {
    fn expired(&self, finished_at: Duration) -> bool {
        match self.entry {
            Some((_, last)) => finished_at.saturating_sub(last) > 2 * MAX,
            None => true,
        }
    }

    /// How long after `now` the container that exited at `finished_at` may restart (zero: restart now), and the
    /// back-off shown in the CrashLoopBackOff message.
    pub fn delay(&self, finished_at: Duration, now: Duration) -> (Duration, Duration) {
        match self.entry {
            Some((backoff, _)) if !self.expired(finished_at) => {
                let elapsed = now.saturating_sub(finished_at);
                (backoff.saturating_sub(elapsed), backoff)
            }
            _ => (Duration::ZERO, Duration::ZERO),
        }
    }

    /// Record a restart of the container that exited at `finished_at`.
    pub fn next(&mut self, finished_at: Duration) {
        let backoff = match self.entry {
            Some((b, _)) if !self.expired(finished_at) => (b * 2).min(MAX),
            _ => INITIAL,
        };
        self.entry = Some((backoff, finished_at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn crash_loop_sequence() {
        let mut b = BackOff::default();
        // First exit: restart immediately.
        assert_eq!(b.delay(s(1), s(1)), (s(0), s(0)));
        b.next(s(1));
        // Second exit at 2s: wait 10s from the exit.
        assert_eq!(b.delay(s(2), s(2)), (s(10), s(10)));
        assert_eq!(b.delay(s(2), s(7)), (s(5), s(10)));
        b.next(s(2));
        let mut t = 12;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let (wait, _) = b.delay(s(t), s(t));
            waits.push(wait.as_secs());
            b.next(s(t));
            t += wait.as_secs() + 1;
        }
        assert_eq!(waits, vec![20, 40, 80, 160, 300, 300, 300, 300]);
    }

    #[test]
    fn long_run_resets() {
        let mut b = BackOff::default();
        b.next(s(0));
        b.next(s(5));
        assert_eq!(b.delay(s(6), s(6)).0, s(20));
        // Ran for more than 10 minutes since the last restart: immediate again, then 10s.
        assert_eq!(b.delay(s(700), s(700)), (s(0), s(0)));
        b.next(s(700));
        assert_eq!(b.delay(s(701), s(701)).0, s(10));
    }
}
