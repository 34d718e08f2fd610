//! Pod status as kubelet computes it from its containers' states (`getPhase`, the pod conditions). Pure.

use k8s_openapi::api::core::v1::{
    ContainerStatus, HostIP, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The phase from the containers' states (kubelet's `getPhase`, without init containers).
pub fn pod_phase(restart_policy: &str, statuses: &[ContainerStatus]) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for status in statuses {
        let state = status.state.as_ref();
        if state.and_then(|s| s.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some()
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

/// How far the init containers are (kubelet's `getPhase` counts): (pending, failed).
pub fn init_progress(init: &[ContainerStatus]) -> (usize, usize) {
    let (mut pending, mut failed) = (0, 0);
    for status in init {
        let state = status.state.as_ref();
        if state.and_then(|s| s.running.as_ref()).is_some() {
            pending += 1;
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            if t.exit_code != 0 {
                failed += 1;
            }
        } else if let Some(t) = status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
        {
            if t.exit_code != 0 {
                failed += 1;
            } else {
                pending += 1;
            }
        } else {
            pending += 1;
        }
    }
    (pending, failed)
}

/// Whether every init container has completed successfully (the `Initialized` condition), and the names
/// of those that have not.
pub fn incomplete_init(init: &[ContainerStatus]) -> Vec<&str> {
    init.iter()
        .filter(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_none_or(|t| t.exit_code != 0)
        })
        .map(|c| c.name.as_str())
        .collect()
}

/// Kubernetes QoS class of the pod (shown by kubectl describe).
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let res = c.resources.as_ref();
        let requests = res.and_then(|r| r.requests.as_ref());
        let limits = res.and_then(|r| r.limits.as_ref());
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

pub struct StatusInput<'a> {
    pub spec: &'a PodSpec,
    /// In spec order.
    pub containers: Vec<ContainerStatus>,
    /// The init containers' statuses, in spec order (empty without init containers).
    pub init_containers: Vec<ContainerStatus>,
    pub pod_ips: Vec<String>,
    pub host_ip: String,
    pub start_time: Option<Time>,
    pub sandbox_ready: bool,
    pub previous: Option<&'a PodStatus>,
    pub now: Time,
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: Option<&PodStatus>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time only moves when the status flips.
    let last_transition_time = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(now.clone()));
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        last_transition_time,
        last_probe_time: None,
        observed_generation: None,
    }
}

pub fn pod_status(input: StatusInput<'_>) -> PodStatus {
    let restart_policy = input.spec.restart_policy.as_deref().unwrap_or("Always");
    let (init_pending, init_failed) = init_progress(&input.init_containers);
    let incomplete = incomplete_init(&input.init_containers);
    let phase = if init_failed > 0 && restart_policy == "Never" {
        "Failed"
    } else if init_pending > 0 || init_failed > 0 {
        "Pending"
    } else {
        pod_phase(restart_policy, &input.containers)
    };
    let unready: Vec<&str> = input
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let (ready_reason, ready_message) = if terminal {
        ("PodCompleted", None)
    } else {
        (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let all_ready = unready.is_empty() && !terminal;
    let prev = input.previous;
    let now = &input.now;
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            input.sandbox_ready,
            None,
            None,
            prev,
            now,
        ),
        condition(
            "Initialized",
            incomplete.is_empty(),
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
            prev,
            now,
        ),
        condition(
            "Ready",
            all_ready,
            Some(ready_reason),
            ready_message.clone(),
            prev,
            now,
        ),
        condition(
            "ContainersReady",
            all_ready,
            Some(ready_reason),
            ready_message,
            prev,
            now,
        ),
        condition("PodScheduled", true, None, None, prev, now),
    ];
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(input.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: input.host_ip.clone(),
        }]),
        pod_ip: input.pod_ips.first().cloned(),
        pod_ips: (!input.pod_ips.is_empty()).then(|| {
            input
                .pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        start_time: input.start_time,
        container_statuses: Some(input.containers),
        init_container_statuses: (!input.init_containers.is_empty())
            .then_some(input.init_containers),
        qos_class: Some(qos_class(input.spec).to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn running(name: &str, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(t(10)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated(name: &str, code: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn waiting(name: &str, reason: &str, restarted: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: None,
                }),
                ..Default::default()
            }),
            last_state: restarted.then(|| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_init(policy: &str, init: Vec<ContainerStatus>) -> PodStatus {
        let spec = PodSpec {
            restart_policy: Some(policy.into()),
            ..Default::default()
        };
        pod_status(StatusInput {
            spec: &spec,
            init_containers: init,
            containers: vec![waiting("app", "PodInitializing", false)],
            pod_ips: vec![],
            host_ip: "172.30.0.2".into(),
            start_time: None,
            sandbox_ready: true,
            previous: None,
            now: t(1),
        })
    }

    fn initialized(s: &PodStatus) -> (String, Option<String>, Option<String>) {
        let c = s
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Initialized"))
            .expect("Initialized condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn init_containers_gate_the_phase_and_initialized() {
        let running_init = with_init("Always", vec![terminated("a", 0), running("b", false)]);
        assert_eq!(running_init.phase.as_deref(), Some("Pending"));
        assert_eq!(
            initialized(&running_init),
            (
                "False".to_string(),
                Some("ContainersNotInitialized".to_string()),
                Some("containers with incomplete status: [b]".to_string())
            )
        );
        assert_eq!(
            running_init.init_container_statuses.as_ref().map(Vec::len),
            Some(2)
        );
        let crash = with_init("Always", vec![waiting("a", "CrashLoopBackOff", true)]);
        assert_eq!(crash.phase.as_deref(), Some("Pending"));
        let failed = with_init("Never", vec![terminated("a", 3)]);
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
        let done = with_init("Always", vec![terminated("a", 0)]);
        assert_eq!(initialized(&done).0, "True");
        // All init containers done, the app container still waiting: Pending until it runs.
        assert_eq!(done.phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn phases() {
        assert_eq!(
            pod_phase("Always", &[waiting("a", "ContainerCreating", false)]),
            "Pending"
        );
        assert_eq!(
            pod_phase(
                "Always",
                &[
                    running("a", false),
                    waiting("b", "ImageNotInCatalog", false)
                ]
            ),
            "Pending"
        );
        assert_eq!(pod_phase("Always", &[running("a", true)]), "Running");
        // CrashLoopBackOff after a previous run counts as stopped: the pod stays Running.
        assert_eq!(
            pod_phase("Always", &[waiting("a", "CrashLoopBackOff", true)]),
            "Running"
        );
        assert_eq!(
            pod_phase("Never", &[terminated("a", 0), terminated("b", 0)]),
            "Succeeded"
        );
        assert_eq!(
            pod_phase("Never", &[terminated("a", 0), terminated("b", 2)]),
            "Failed"
        );
        assert_eq!(pod_phase("OnFailure", &[terminated("a", 0)]), "Succeeded");
        assert_eq!(
            pod_phase("OnFailure", &[waiting("a", "CrashLoopBackOff", true)]),
            "Running"
        );
        assert_eq!(
            pod_phase("Never", &[running("a", true), terminated("b", 1)]),
            "Running"
        );
    }

    #[test]
    fn conditions_and_fields() {
        let spec = PodSpec {
            containers: vec![Container {
                name: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let status = pod_status(StatusInput {
            spec: &spec,
            init_containers: Vec::new(),
            containers: vec![running("a", false), running("b", false)],
            pod_ips: vec!["10.244.1.5".into()],
            host_ip: "172.30.0.2".into(),
            start_time: Some(t(5)),
            sandbox_ready: true,
            previous: None,
            now: t(20),
        });
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "Running");
        assert_eq!(json["podIP"], "10.244.1.5");
        assert_eq!(json["podIPs"], serde_json::json!([{"ip": "10.244.1.5"}]));
        assert_eq!(json["hostIPs"], serde_json::json!([{"ip": "172.30.0.2"}]));
        assert_eq!(json["qosClass"], "BestEffort");
        assert_eq!(
            json["conditions"][2],
            serde_json::json!({"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                "message": "containers with unready status: [a b]", "lastTransitionTime": "1970-01-01T00:00:20Z"})
        );
        // Becoming ready moves the Ready transition time, not the others.
        let next = pod_status(StatusInput {
            spec: &spec,
            init_containers: Vec::new(),
            containers: vec![running("a", true), running("b", true)],
            pod_ips: vec!["10.244.1.5".into()],
            host_ip: "172.30.0.2".into(),
            start_time: Some(t(5)),
            sandbox_ready: true,
            previous: Some(&status),
            now: t(30),
        });
        let json = serde_json::to_value(&next).unwrap();
        assert_eq!(
            json["conditions"][2],
            serde_json::json!({"type": "Ready", "status": "True", "lastTransitionTime": "1970-01-01T00:00:30Z"})
        );
        assert_eq!(
            json["conditions"][1]["lastTransitionTime"],
            "1970-01-01T00:00:20Z"
        );
        let done = pod_status(StatusInput {
            spec: &spec,
            init_containers: Vec::new(),
            containers: vec![terminated("a", 0)],
            pod_ips: vec![],
            host_ip: "172.30.0.2".into(),
            start_time: None,
            sandbox_ready: false,
            previous: None,
            now: t(30),
        });
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["phase"], "Running");
        assert_eq!(json["conditions"][2]["reason"], "ContainersNotReady");
    }

    #[test]
    fn qos() {
        let with = |requests: &[(&str, &str)], limits: &[(&str, &str)]| PodSpec {
            containers: vec![Container {
                name: "a".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        requests
                            .iter()
                            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                            .collect(),
                    ),
                    limits: Some(
                        limits
                            .iter()
                            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(qos_class(&with(&[], &[])), "BestEffort");
        assert_eq!(qos_class(&with(&[("cpu", "100m")], &[])), "Burstable");
        assert_eq!(
            qos_class(&with(&[], &[("cpu", "1"), ("memory", "1Gi")])),
            "Guaranteed"
        );
    }
}
