//! A deduplicating work queue keyed by object: a key added many times before it is processed is
//! processed once, which batches bursts of changes (a scale to 1,000 pods touches a Service's key
//! 1,000 times but its slices are recomputed a handful of times).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::informer::Key;

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    order: VecDeque<Key>,
    pending: HashSet<Key>,
}

impl WorkQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add(&self, key: Key) {
        let mut state = self.state.lock();
        if state.pending.insert(key.clone()) {
            state.order.push_back(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    pub fn add_ns_name(&self, namespace: &str, name: &str) {
        self.add((namespace.to_string(), name.to_string()));
    }

    /// Adds the key after `delay` (retries with backoff, periodic rechecks).
    pub fn add_after(self: &Arc<Self>, key: Key, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Waits for at least one key and returns every key queued so far (each once).
    pub async fn next_batch(&self) -> Vec<Key> {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.state.lock();
                if !state.order.is_empty() {
                    state.pending.clear();
                    return state.order.drain(..).collect();
                }
            }
            notified.await;
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicate_keys_are_processed_once_in_order() {
        let q = WorkQueue::new();
        q.add_ns_name("default", "b");
        q.add_ns_name("default", "a");
        q.add_ns_name("default", "b");
        let batch = q.next_batch().await;
        assert_eq!(
            batch,
            vec![
                ("default".to_string(), "b".to_string()),
                ("default".to_string(), "a".to_string())
            ]
        );
        assert!(q.is_empty());
        q.add_ns_name("default", "b");
        assert_eq!(q.next_batch().await.len(), 1);
    }
}
