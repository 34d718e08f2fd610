//! Watches Services, EndpointSlices and Namespaces (list + watch + resume, via kube-rs watchers) into the single
//! writer [`SnapshotBuilder`], publishing a snapshot after each batch of ready events.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use crate::convert::{service_spec, slice_spec};
use crate::model::{Snapshot, SnapshotBuilder};

enum Update {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Namespace(Box<Event<PartialObjectMeta<Namespace>>>),
}

fn unix_serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

#[derive(Default)]
struct Relist {
    services: Option<Vec<crate::model::ServiceSpec>>,
    slices: Option<Vec<crate::model::SliceSpec>>,
    namespaces: Option<Vec<String>>,
    synced: [bool; 3],
}

fn ns_name(k: &PartialObjectMeta<Namespace>) -> Option<String> {
    k.metadata.name.clone()
}

fn apply(builder: &mut SnapshotBuilder, relist: &mut Relist, update: Update) {
    match update {
        Update::Service(ev) => match *ev {
            Event::Apply(s) => {
                if let Some(spec) = service_spec(&s) {
                    builder.apply_service(spec);
                } else if let (Some(ns), Some(n)) = (&s.metadata.namespace, &s.metadata.name) {
                    builder.delete_service(&ns.to_ascii_lowercase(), &n.to_ascii_lowercase());
                }
            }
            Event::Delete(s) => {
                if let (Some(ns), Some(n)) = (&s.metadata.namespace, &s.metadata.name) {
                    builder.delete_service(&ns.to_ascii_lowercase(), &n.to_ascii_lowercase());
                }
            }
            Event::Init => relist.services = Some(Vec::new()),
            Event::InitApply(s) => {
                if let (Some(list), Some(spec)) = (relist.services.as_mut(), service_spec(&s)) {
                    list.push(spec);
                }
            }
            Event::InitDone => {
                builder.replace_services(relist.services.take().unwrap_or_default());
                relist.synced[0] = true;
            }
        },
        Update::Slice(ev) => match *ev {
            Event::Apply(s) => {
                if let Some(spec) = slice_spec(&s) {
                    builder.apply_slice(spec);
                } else if let (Some(ns), Some(n)) = (&s.metadata.namespace, &s.metadata.name) {
                    builder.delete_slice(&ns.to_ascii_lowercase(), &n.to_ascii_lowercase());
                }
            }
            Event::Delete(s) => {
                if let (Some(ns), Some(n)) = (&s.metadata.namespace, &s.metadata.name) {
                    builder.delete_slice(&ns.to_ascii_lowercase(), &n.to_ascii_lowercase());
                }
            }
            Event::Init => relist.slices = Some(Vec::new()),
            Event::InitApply(s) => {
                if let (Some(list), Some(spec)) = (relist.slices.as_mut(), slice_spec(&s)) {
                    list.push(spec);
                }
            }
            Event::InitDone => {
                builder.replace_slices(relist.slices.take().unwrap_or_default());
                relist.synced[1] = true;
            }
        },
        Update::Namespace(ev) => match *ev {
            Event::Apply(n) => {
                if let Some(name) = ns_name(&n) {
                    builder.apply_namespace(&name.to_ascii_lowercase());
                }
            }
            Event::Delete(n) => {
                if let Some(name) = ns_name(&n) {
                    builder.delete_namespace(&name.to_ascii_lowercase());
                }
            }
            Event::Init => relist.namespaces = Some(Vec::new()),
            Event::InitApply(n) => {
                if let (Some(list), Some(name)) = (relist.namespaces.as_mut(), ns_name(&n)) {
                    list.push(name.to_ascii_lowercase());
                }
            }
            Event::InitDone => {
                builder.replace_namespaces(relist.namespaces.take().unwrap_or_default());
                relist.synced[2] = true;
            }
        },
    }
    if relist.synced.iter().all(|s| *s) {
        builder.set_synced(true);
    }
}

/// Run the watchers forever, calling `publish` with each new snapshot.
pub async fn watch(client: kube::Client, mut builder: SnapshotBuilder, publish: impl Fn(Snapshot)) {
    let config = watcher::Config::default();
    let services = watcher::watcher(Api::<Service>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|r| r.map(|e| Update::Service(Box::new(e))));
    let slices = watcher::watcher(Api::<EndpointSlice>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|r| r.map(|e| Update::Slice(Box::new(e))));
    let namespaces = watcher::watcher(Api::<PartialObjectMeta<Namespace>>::all(client), config)
        .default_backoff()
        .map(|r| r.map(|e| Update::Namespace(Box::new(e))));
    let mut stream =
        futures::stream::select_all(vec![services.boxed(), slices.boxed(), namespaces.boxed()]);
    let mut relist = Relist::default();
    while let Some(item) = stream.next().await {
        let mut handle =
            |item: Result<Update, watcher::Error>, builder: &mut SnapshotBuilder| match item {
                Ok(u) => apply(builder, &mut relist, u),
                Err(e) => tracing::warn!(error = %e, "watch error (retrying with backoff)"),
            };
        handle(item, &mut builder);
        // Take everything already delivered before publishing, so a burst costs one snapshot.
        for _ in 0..10_000 {
            match stream.next().now_or_never() {
                Some(Some(item)) => handle(item, &mut builder),
                _ => break,
            }
        }
        if builder.has_changes() {
            builder.set_serial(unix_serial());
            publish(builder.snapshot());
        }
    }
}
