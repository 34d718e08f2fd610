//! Core/v1 Events about pods, as kubelet records them (source component `kubelet`, host = node). Sent in
//! the background: an event never delays a pod.

use crate::Ctx;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

pub(crate) fn emit(
    ctx: &Ctx,
    pod: &Pod,
    container: Option<&str>,
    kind: &str,
    reason: &str,
    message: String,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:016x}", rand::random::<u64>())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(kind.into()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(ctx.node.name.clone()),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: None,
        count: Some(1),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(ctx.node.name.clone()),
        action: None,
        related: None,
        series: None,
    };
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    let slots = ctx.api_slots.clone();
    tokio::spawn(async move {
        // The semaphore is never closed; a failed acquire would only mean sending without a slot.
        let _slot = slots.acquire_owned().await;
        if let Err(err) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(%err, "recording event");
        }
    });
}
