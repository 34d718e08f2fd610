//! A watch-fed cache per kind: list + watch with resourceVersion resume (kube-rs' watcher), one writer
//! (the informer task), many readers. Unlike kube-rs' reflector it hands every change to a handler
//! with the previous and current object, so controllers can enqueue keys affected by either.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type Key = (String, String);

pub fn key_of<K: Resource>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

pub struct Cache<K> {
    map: RwLock<BTreeMap<Key, Arc<K>>>,
    synced: AtomicBool,
    synced_notify: Notify,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache {
            map: RwLock::new(BTreeMap::new()),
            synced: AtomicBool::new(false),
            synced_notify: Notify::new(),
        }
    }
}

impl<K> Cache<K> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.map
            .read()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of one namespace (ordered by name).
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let map = self.map.read();
        map.range((namespace.to_string(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.map.read().values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<Key> {
        self.map.read().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Waits until the first complete list has been loaded.
    pub async fn wait_synced(&self) {
        loop {
            let notified = self.synced_notify.notified();
            if self.is_synced() {
                return;
            }
            notified.await;
        }
    }
}

/// Called with (previous, current): (None, Some) added, (Some, Some) changed, (Some, None) deleted.
pub type Handler<K> = Box<dyn Fn(Option<&K>, Option<&K>) + Send + Sync>;

fn same_version<K: Resource>(a: &K, b: &K) -> bool {
    let (ra, rb) = (
        a.meta().resource_version.as_ref(),
        b.meta().resource_version.as_ref(),
    );
    ra.is_some() && ra == rb
}

/// Runs forever: keeps `cache` equal to the server's view and reports each change to `handler`.
/// After a watch is lost (API server restart, 410 Gone) the watcher relists; the relist is diffed
/// against the cache so that handlers see only real changes (no duplicate adds) and missed deletes.
pub async fn run<K>(api: Api<K>, cache: Arc<Cache<K>>, handler: Handler<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer: Option<BTreeMap<Key, Arc<K>>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(kind = %K::kind(&()), %error, "watch failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Init => buffer = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                buffer
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(&obj), Arc::new(obj));
            }
            watcher::Event::InitDone => {
                let new = buffer.take().unwrap_or_default();
                let old = std::mem::replace(&mut *cache.map.write(), new.clone());
                for (key, prev) in &old {
                    match new.get(key) {
                        None => handler(Some(prev), None),
                        Some(cur) if !same_version(prev.as_ref(), cur.as_ref()) => {
                            handler(Some(prev), Some(cur))
                        }
                        Some(_) => {}
                    }
                }
                for (key, cur) in &new {
                    if !old.contains_key(key) {
                        handler(None, Some(cur));
                    }
                }
                cache.synced.store(true, Ordering::Release);
                cache.synced_notify.notify_waiters();
            }
            watcher::Event::Apply(obj) => {
                let cur = Arc::new(obj);
                let prev = cache.map.write().insert(key_of(cur.as_ref()), cur.clone());
                if let Some(prev) = &prev {
                    if same_version(prev.as_ref(), cur.as_ref()) {
                        continue;
                    }
                }
                handler(prev.as_deref(), Some(&cur));
            }
            watcher::Event::Delete(obj) => {
                let prev = cache.map.write().remove(&key_of(&obj));
                handler(Some(prev.as_deref().unwrap_or(&obj)), None);
            }
        }
    }
}
