//! One kind's watch events fed into an agent component's single-writer state: a (re)list replaces the kind
//! wholesale, then each event is applied and a sync requested; the first complete list marks the kind synced.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};

use crate::sync::SyncTrigger;

/// Feed `stream` into `state` until the stream ends (a watcher with back-off only ends when dropped).
/// `on_list` gets every object of a (re)list; `apply` and `delete` get single events. `synced` is set and
/// notified after each complete list; every change requests a sync from `trigger`. `what` names the kind
/// in logs.
#[allow(clippy::too_many_arguments)] // the closures are what differs per kind; a struct would only rename them
pub async fn feed_state<K, S, A, D, L>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    what: &'static str,
    state: &parking_lot::Mutex<S>,
    trigger: &SyncTrigger,
    synced: &(AtomicBool, tokio::sync::Notify),
    apply: A,
    delete: D,
    on_list: L,
) where
    A: Fn(&mut S, K),
    D: Fn(&mut S, K),
    L: Fn(&mut S, Vec<K>),
{
    let mut stream = std::pin::pin!(stream);
    let mut buffer: Vec<K> = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(o)) => buffer.push(o),
            Ok(Event::InitDone) => {
                on_list(&mut state.lock(), std::mem::take(&mut buffer));
                synced.0.store(true, Ordering::SeqCst);
                synced.1.notify_waiters();
                trigger.request();
            }
            Ok(Event::Apply(o)) => {
                apply(&mut state.lock(), o);
                trigger.request();
            }
            Ok(Event::Delete(o)) => {
                delete(&mut state.lock(), o);
                trigger.request();
            }
            Err(e) => tracing::warn!(kind = what, error = %e, "watch error; retrying"),
        }
    }
}
