//! core/v1 Events, as `kubectl describe` and `kubectl get events` show them.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};

pub fn reference_to<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        namespace: obj.namespace(),
        name: Some(obj.name_any()),
        uid: obj.uid(),
        resource_version: obj.resource_version(),
        ..Default::default()
    }
}

/// Records an event in the background (an event that cannot be written is logged, never fatal).
pub fn record(
    client: &Client,
    component: &str,
    involved: ObjectReference,
    type_: &str,
    reason: &str,
    message: String,
) {
    let client = client.clone();
    let component = component.to_string();
    let type_ = type_.to_string();
    let reason = reason.to_string();
    tokio::spawn(async move {
        let namespace = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let now = Time(jiff::Timestamp::now());
        let suffix: u64 = rand::random();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:016x}",
                    involved.name.clone().unwrap_or_default(),
                    suffix
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.clone()),
            message: Some(message),
            type_: Some(type_),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(component.clone()),
                host: None,
            }),
            reporting_component: Some(component),
            reporting_instance: Some("skiff".to_string()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(client, &namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(%error, %reason, "could not record event");
        }
    });
}
