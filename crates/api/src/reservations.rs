//! ClusterIP and NodePort reservations that hold across several API servers sharing one store.
//!
//! Every allocated address and port is a record in the store (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created with create-if-absent before the Service is written,
//! as upstream's IPAddress objects: two servers (or two requests) can never both create the same record, so
//! they never hand out the same value. The pure [`Allocators`] decides what to take; its used-sets are only a
//! hint, corrected from the store whenever a record says otherwise.

use crate::alloc::{held_by, Allocators, Held};
use serde_json::{json, Value};
use skiff_apimachinery::Cause;
use skiff_store::{ListOptions, Store};
use std::net::Ipv4Addr;
use std::sync::Arc;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
/// Attempts when a randomly picked value turns out taken by another server meanwhile.
const ATTEMPTS: usize = 16;

#[derive(Debug)]
pub enum AllocError {
    /// Field errors (taken, out of range, range full) for a 422.
    Invalid(Vec<Cause>),
    Store(skiff_store::Error),
}

impl From<skiff_store::Error> for AllocError {
    fn from(e: skiff_store::Error) -> Self {
        AllocError::Store(e)
    }
}

/// Records this request created: removed again when the Service write fails.
#[derive(Debug, Default)]
#[must_use]
pub struct Reservation {
    created: Vec<(String, u64)>,
    held: Held,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Item {
    Ip(Ipv4Addr),
    Port(u16),
}

impl Item {
    fn key(&self) -> String {
        match self {
            Item::Ip(ip) => format!("{IP_PREFIX}{ip}"),
            Item::Port(p) => format!("{PORT_PREFIX}{p}"),
        }
    }
    fn held(&self) -> Held {
        match self {
            Item::Ip(ip) => Held {
                ips: vec![*ip],
                ports: vec![],
            },
            Item::Port(p) => Held {
                ips: vec![],
                ports: vec![*p],
            },
        }
    }
}

fn items(h: &Held) -> Vec<Item> {
    h.ips
        .iter()
        .map(|i| Item::Ip(*i))
        .chain(h.ports.iter().map(|p| Item::Port(*p)))
        .collect()
}

/// What `a` holds and `b` does not.
fn minus(a: &Held, b: &Held) -> Held {
    Held {
        ips: a
            .ips
            .iter()
            .filter(|i| !b.ips.contains(i))
            .copied()
            .collect(),
        ports: a
            .ports
            .iter()
            .filter(|p| !b.ports.contains(p))
            .copied()
            .collect(),
    }
}

fn owner_of(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(value)
        .ok()?
        .get("service")?
        .as_str()
        .map(str::to_string)
}

pub struct ServiceAllocator {
    store: Arc<dyn Store>,
    hint: parking_lot::Mutex<Allocators>,
}

impl ServiceAllocator {
    /// Load the records, and create the missing ones of stored Services (stores written before records
    /// existed; several servers starting together create each at most once).
    pub async fn new(
        store: Arc<dyn Store>,
        mut hint: Allocators,
        services_prefix: &str,
    ) -> Result<Self, skiff_store::Error> {
        let svcs = store.list(services_prefix, ListOptions::default()).await?;
        for kv in &svcs.items {
            let Ok(v) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let owner = format!(
                "{}/{}",
                v["metadata"]["namespace"].as_str().unwrap_or(""),
                v["metadata"]["name"].as_str().unwrap_or("")
            );
            let h = held_by(&v);
            for it in items(&h) {
                match store.create(&it.key(), record(&owner)).await {
                    Ok(_) | Err(skiff_store::Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            hint.mark(&h);
        }
        let s = Self {
            store,
            hint: parking_lot::Mutex::new(hint),
        };
        s.load_hint().await?;
        Ok(s)
    }

    /// Mark every recorded value as used in the hint.
    async fn load_hint(&self) -> Result<(), skiff_store::Error> {
        let ips = self.store.list(IP_PREFIX, ListOptions::default()).await?;
        let ports = self.store.list(PORT_PREFIX, ListOptions::default()).await?;
        let mut h = Held::default();
        for kv in ips.items {
            if let Ok(ip) = kv.key[IP_PREFIX.len()..].parse() {
                h.ips.push(ip);
            }
        }
        for kv in ports.items {
            if let Ok(p) = kv.key[PORT_PREFIX.len()..].parse() {
                h.ports.push(p);
            }
        }
        self.hint.lock().mark(&h);
        Ok(())
    }

    /// The service CIDR's first address (the `kubernetes` Service).
    pub fn first_ip(&self) -> Ipv4Addr {
        self.hint.lock().first_ip()
    }

    /// Make the hint agree with the store for the values a request names explicitly (another server may
    /// have taken or freed them).
    async fn refresh(&self, h: &Held) -> Result<(), skiff_store::Error> {
        for it in items(h) {
            let present = self.store.get(&it.key()).await?.is_some();
            let mut hint = self.hint.lock();
            if present {
                hint.mark(&it.held());
            } else {
                hint.release(&it.held());
            }
        }
        Ok(())
    }

    /// Fill in the Service's cluster IP, node ports and health-check node port (keeping what `old` holds) and
    /// reserve the new ones for `owner` (`namespace/name`). With `dry` nothing is reserved.
    pub async fn allocate(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        dry: bool,
        owner: &str,
    ) -> Result<Reservation, AllocError> {
        let orig = svc.clone();
        let old_held = old.map(held_by).unwrap_or_default();
        self.refresh(&minus(&held_by(&orig), &old_held)).await?;
        let mut reloaded = false;
        for attempt in 0..ATTEMPTS {
            *svc = orig.clone();
            // The hint takes the new values at once (two random picks of one request never coincide) and
            // gives them back when the records say no.
            let decided = self.hint.lock().allocate(svc, old, dry);
            if let Err(causes) = decided {
                let full = causes.iter().any(|c| c.message.contains("range is full"));
                if full && !reloaded {
                    // The hint may remember values other servers freed: start over from the records.
                    reloaded = true;
                    self.reset_hint().await?;
                    continue;
                }
                return Err(AllocError::Invalid(causes));
            }
            if dry {
                return Ok(Reservation::default());
            }
            let new = minus(&held_by(svc), &old_held);
            let mut created = Vec::new();
            let mut taken = None;
            for it in items(&new) {
                match self.store.create(&it.key(), record(owner)).await {
                    Ok(kv) => created.push((kv.key, kv.mod_revision)),
                    Err(skiff_store::Error::AlreadyExists(_)) => {
                        taken = Some(it);
                        break;
                    }
                    Err(e) => {
                        self.undo(Reservation { created, held: new }).await;
                        return Err(e.into());
                    }
                }
            }
            let res = Reservation { created, held: new };
            match taken {
                None => return Ok(res),
                Some(it) => {
                    // Taken by someone else meanwhile: a random pick is redrawn, an explicit one now fails
                    // with the upstream message.
                    self.undo(res).await;
                    self.hint.lock().mark(&it.held());
                    if attempt == 3 {
                        // Repeated collisions: the hint is far behind other servers; reload it.
                        self.reset_hint().await?;
                    }
                }
            }
        }
        Err(AllocError::Store(skiff_store::Error::Backend(
            "could not reserve a cluster IP / node port: too much contention".into(),
        )))
    }

    async fn reset_hint(&self) -> Result<(), skiff_store::Error> {
        {
            let mut h = self.hint.lock();
            *h = Allocators::new(h.cidr, h.ports.clone());
        }
        self.load_hint().await
    }

    /// Give back what a reservation created (its Service write failed).
    pub async fn undo(&self, r: Reservation) {
        for (key, rev) in r.created {
            if let Err(e) = self.store.delete(&key, Some(rev)).await {
                tracing::warn!(%key, error = %e, "could not remove an allocation record");
            }
        }
        self.hint.lock().release(&r.held);
    }

    /// Free what `h` holds after its Service was deleted or stopped using it (only records of `owner`).
    pub async fn release(&self, h: &Held, owner: &str) {
        for it in items(h) {
            let key = it.key();
            let r = match self.store.get(&key).await {
                Ok(Some(kv)) if owner_of(&kv.value).as_deref() == Some(owner) => self
                    .store
                    .delete(&key, Some(kv.mod_revision))
                    .await
                    .map(|_| ()),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(%key, error = %e, "could not remove an allocation record");
            }
        }
        self.hint.lock().release(h);
    }

    /// After a successful update: free what `old` held and `new` does not.
    pub async fn release_diff(&self, old: &Held, new: &Held, owner: &str) {
        self.release(&minus(old, new), owner).await;
    }
}

fn record(owner: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"service": owner})).unwrap_or_default()
}
