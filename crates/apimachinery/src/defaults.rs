//! Defaulting as upstream's `SetDefaults_*` (pkg/apis/*/v1/defaults.go) for the kinds served, plus the few
//! values upstream's registry strategies and default admission plugins fill in on create (a Pod's `Pending`
//! phase and QoS class, a Namespace's `kubernetes` finalizer, the not-ready/unreachable tolerations).
//! Every function only fills what is absent, so applying defaults twice changes nothing.

use crate::GroupKind;
use serde_json::{json, Map, Value};

/// Fill in upstream defaults on an object about to be created or updated (idempotent).
pub fn apply_defaults(gk: GroupKind<'_>, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match (gk.group, gk.kind) {
        ("", "Service") => service(obj),
        ("", "Pod") => pod(obj),
        ("", "Namespace") => namespace(obj),
        ("", "Secret") => {
            set(obj, "type", json!("Opaque"));
        }
        ("", "Endpoints") => {
            for ss in list_mut(obj, "subsets") {
                for p in list_mut(ss, "ports") {
                    set(p, "protocol", json!("TCP"));
                }
            }
        }
        ("", "Node") => {
            if let Some(cap) = obj.pointer("/status/capacity").cloned() {
                if let Some(status) = obj.get_mut("status") {
                    set(status, "allocatable", cap);
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for p in list_mut(obj, "ports") {
                set(p, "name", json!(""));
                set(p, "protocol", json!("TCP"));
            }
        }
        ("apps", "Deployment") => deployment(obj),
        ("apps", "ReplicaSet") => {
            let spec = child(obj, "spec");
            set(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("networking.k8s.io", "NetworkPolicy") => network_policy(obj),
        ("networking.k8s.io", "Ingress") => {}
        _ => {}
    }
}

/// Carry server-assigned values from the stored object into an update that omits them, as upstream's registry
/// does before validation (Service `patchAllocatedValues`: clusterIP(s), ipFamilies/ipFamilyPolicy, nodePorts
/// and healthCheckNodePort; and metadata the client may leave out: uid, creationTimestamp). Call before
/// [`apply_defaults`] and validation on PUT / PATCH.
pub fn prepare_for_update(gk: GroupKind<'_>, obj: &mut Value, old: &Value) {
    if !obj.is_object() {
        return;
    }
    for key in ["uid", "creationTimestamp"] {
        if let Some(v) = old.pointer(&format!("/metadata/{key}")).cloned() {
            set(child(obj, "metadata"), key, v);
        }
    }
    if (gk.group, gk.kind) != ("", "Service") {
        return;
    }
    let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    let old_type = old_spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    drop_type_dependent_fields(obj, &old_spec);
    let spec = child(obj, "spec");
    let new_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if old_type != "ExternalName" && new_type != "ExternalName" {
        if is_empty_str(spec.get("clusterIP")) {
            if let Some(ip) = old_spec.get("clusterIP").cloned() {
                spec["clusterIP"] = ip;
            }
            if spec
                .get("clusterIPs")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
            {
                if let Some(ips) = old_spec.get("clusterIPs").cloned() {
                    spec["clusterIPs"] = ips;
                }
            }
        }
        for key in ["ipFamilies", "ipFamilyPolicy"] {
            if let Some(v) = old_spec.get(key).cloned() {
                set(spec, key, v);
            }
        }
    }
    let keeps_node_ports = |t: &str| t == "NodePort" || t == "LoadBalancer";
    if keeps_node_ports(&old_type) && keeps_node_ports(&new_type) {
        let old_ports = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in list_mut(spec, "ports") {
            if p.get("nodePort")
                .is_some_and(|n| n.as_i64().unwrap_or(0) != 0)
            {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                        == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            });
            if let Some(np) = same.and_then(|o| o.get("nodePort")).cloned() {
                p["nodePort"] = np;
            }
        }
        if let Some(h) = old_spec.get("healthCheckNodePort").cloned() {
            set(spec, "healthCheckNodePort", h);
        }
    }
}

/// Upstream's `dropTypeDependentFields` (pkg/registry/core/service/strategy.go): when a Service's type changes to
/// one that no longer uses a field the server may have filled in, and the update left that field as it was,
/// wipe it (the allocator then releases node ports / the cluster IP). A field the user changed is kept so that
/// validation can report it.
fn drop_type_dependent_fields(obj: &mut Value, old_spec: &Value) {
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let ty = |v: &Value| match str_of(v, "type") {
        t if t.is_empty() => "ClusterIP".to_string(),
        t => t,
    };
    let needs_cluster_ip = |v: &Value| ty(v) != "ExternalName";
    let needs_node_port = |v: &Value| matches!(ty(v).as_str(), "NodePort" | "LoadBalancer");
    let needs_hc_node_port =
        |v: &Value| ty(v) == "LoadBalancer" && str_of(v, "externalTrafficPolicy") == "Local";
    let externally_accessible = |v: &Value| {
        matches!(ty(v).as_str(), "NodePort" | "LoadBalancer")
            || (ty(v) == "ClusterIP"
                && v.get("externalIPs")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty()))
    };
    // null and absent are the same "unset" value
    let same = |a: &Value, b: &Value, k: &str| {
        let n = |v: &Value| v.get(k).filter(|x| !x.is_null()).cloned();
        n(a) == n(b)
    };
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    let new_spec = spec.clone();
    let remove = |spec: &mut Value, k: &str| {
        if let Some(m) = spec.as_object_mut() {
            m.shift_remove(k);
        }
    };
    if needs_cluster_ip(old_spec) && !needs_cluster_ip(&new_spec) {
        let old_ips = old_spec.get("clusterIPs").filter(|x| !x.is_null());
        let new_ips = new_spec.get("clusterIPs").filter(|x| !x.is_null());
        let same_ips = str_of(old_spec, "clusterIP") == str_of(&new_spec, "clusterIP")
            && (new_ips.is_none() || new_ips == old_ips);
        if same_ips {
            remove(spec, "clusterIP");
            remove(spec, "clusterIPs");
        }
        for k in ["ipFamilies", "ipFamilyPolicy"] {
            if same(old_spec, &new_spec, k) {
                remove(spec, k);
            }
        }
    }
    if needs_node_port(old_spec) && !needs_node_port(&new_spec) {
        let node_port = |p: &Value| p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        let old_ports: Vec<i64> = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(node_port).filter(|n| *n != 0).collect())
            .unwrap_or_default();
        // sameNodePorts: every node port the update names is one the Service already had
        let same_node_ports = new_spec
            .get("ports")
            .and_then(Value::as_array)
            .is_none_or(|a| {
                a.iter()
                    .map(node_port)
                    .all(|n| n == 0 || old_ports.contains(&n))
            });
        if same_node_ports {
            for p in list_mut(spec, "ports") {
                remove(p, "nodePort");
            }
        }
    }
    if needs_hc_node_port(old_spec)
        && !needs_hc_node_port(&new_spec)
        && same(old_spec, &new_spec, "healthCheckNodePort")
    {
        remove(spec, "healthCheckNodePort");
    }
    if ty(old_spec) == "LoadBalancer" && ty(&new_spec) != "LoadBalancer" {
        let k = "allocateLoadBalancerNodePorts";
        if old_spec.get(k).is_some_and(Value::is_boolean)
            && new_spec.get(k).is_some_and(Value::is_boolean)
            && same(old_spec, &new_spec, k)
        {
            remove(spec, k);
        }
        if same(old_spec, &new_spec, "loadBalancerClass") {
            remove(spec, "loadBalancerClass");
        }
    }
    if externally_accessible(old_spec)
        && !externally_accessible(&new_spec)
        && same(old_spec, &new_spec, "externalTrafficPolicy")
    {
        remove(spec, "externalTrafficPolicy");
    }
    // the load balancer's status no longer applies
    if ty(&new_spec) != "LoadBalancer" {
        if let Some(st) = obj.get_mut("status").filter(|s| s.is_object()) {
            if st.get("loadBalancer").is_some() {
                st["loadBalancer"] = json!({});
            }
        }
    }
}

/// Set `key` when absent or null; returns the (possibly pre-existing) value.
fn set<'a>(obj: &'a mut Value, key: &str, value: Value) -> &'a mut Value {
    if !obj.is_object() {
        // callers only pass objects; a non-object parent is left unchanged
        return obj;
    }
    // IndexMut on an object inserts null for a missing key
    let entry = &mut obj[key];
    if entry.is_null() {
        *entry = value;
    }
    entry
}

/// The object at `key`, created empty when absent.
fn child<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    set(obj, key, Value::Object(Map::new()))
}

fn list_mut<'a>(obj: &'a mut Value, key: &str) -> std::slice::IterMut<'a, Value> {
    match obj.get_mut(key).and_then(Value::as_array_mut) {
        Some(a) => a.iter_mut(),
        None => [].iter_mut(),
    }
}

fn is_empty_str(v: Option<&Value>) -> bool {
    v.is_none_or(|v| v.is_null() || v.as_str() == Some(""))
}

fn service(obj: &mut Value) {
    let spec = child(obj, "spec");
    if is_empty_str(spec.get("sessionAffinity")) {
        spec["sessionAffinity"] = json!("None");
    }
    match spec.get("sessionAffinity").and_then(Value::as_str) {
        Some("None") => {
            if let Some(m) = spec.as_object_mut() {
                m.shift_remove("sessionAffinityConfig");
            }
        }
        Some("ClientIP")
            if spec
                .pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
                .is_none_or(Value::is_null) =>
        {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        }
        _ => {}
    }
    if is_empty_str(spec.get("type")) {
        spec["type"] = json!("ClusterIP");
    }
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for p in list_mut(spec, "ports") {
        if is_empty_str(p.get("protocol")) {
            p["protocol"] = json!("TCP");
        }
        let tp = p.get("targetPort");
        let unset =
            tp.is_none_or(|t| t.is_null() || t.as_i64() == Some(0) || t.as_str() == Some(""));
        if unset {
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            if !port.is_null() {
                p["targetPort"] = port;
            }
        }
    }
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible =
        ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && has_external_ips);
    if externally_accessible && is_empty_str(spec.get("externalTrafficPolicy")) {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer" | "ClusterIP") {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if ty != "ExternalName" {
        // upstream's registry fills these when it allocates cluster IPs (single-stack IPv4 cluster)
        if let Some(ip) = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            let ip = ip.to_string();
            if spec
                .get("clusterIPs")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
            {
                spec["clusterIPs"] = json!([ip]);
            }
        }
        set(spec, "ipFamilyPolicy", json!("SingleStack"));
        if spec
            .get("ipFamilies")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
        {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
    }
    let status = child(obj, "status");
    set(status, "loadBalancer", json!({}));
}

fn namespace(obj: &mut Value) {
    if let Some(name) = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
    {
        let labels = child(child(obj, "metadata"), "labels");
        set(labels, "kubernetes.io/metadata.name", json!(name));
    }
    let spec = child(obj, "spec");
    set(spec, "finalizers", json!(["kubernetes"]));
    let status = child(obj, "status");
    if is_empty_str(status.get("phase")) {
        status["phase"] = json!("Active");
    }
}

fn pod(obj: &mut Value) {
    let spec = child(obj, "spec");
    pod_spec(spec);
    set(spec, "enableServiceLinks", json!(true));
    // SetDefaults_Pod: requests default to limits
    for c in list_mut(spec, "containers") {
        if let Some(limits) = c
            .pointer("/resources/limits")
            .and_then(Value::as_object)
            .cloned()
        {
            let req = child(child(c, "resources"), "requests");
            for (k, v) in limits {
                set(req, &k, v);
            }
        }
    }
    // admission (DefaultTolerationSeconds, Priority) as a default cluster does
    set(spec, "priority", json!(0));
    set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    let tols = set(spec, "tolerations", json!([]));
    if let Some(tols) = tols.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let has = tols.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    && t.get("effect")
                        .and_then(Value::as_str)
                        .is_none_or(|e| e.is_empty() || e == "NoExecute")
            }) || tols.iter().any(|t| {
                // a toleration of everything (empty key, Exists) covers both
                t.get("key")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                    && t.get("operator").and_then(Value::as_str) == Some("Exists")
            });
            if !has {
                tols.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
    let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
    let status = child(obj, "status");
    if is_empty_str(status.get("phase")) {
        status["phase"] = json!("Pending");
    }
    set(status, "qosClass", json!(qos));
}

/// Upstream's `GetPodQOS` (cpu and memory of regular and init containers).
fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"].iter().flat_map(|k| {
        spec.get(*k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    });
    for c in containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r));
            let lm = lim.and_then(|m| m.get(r));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            if lm.is_none() || rq.is_some_and(|rq| Some(rq) != lm) {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn pod_spec(spec: &mut Value) {
    if is_empty_str(spec.get("dnsPolicy")) {
        spec["dnsPolicy"] = json!("ClusterFirst");
    }
    if is_empty_str(spec.get("restartPolicy")) {
        spec["restartPolicy"] = json!("Always");
    }
    set(spec, "securityContext", json!({}));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    if is_empty_str(spec.get("schedulerName")) {
        spec["schedulerName"] = json!("default-scheduler");
    }
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in list_mut(spec, key) {
            container(c, host_network);
        }
    }
    for v in list_mut(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Value, host_network: bool) {
    if is_empty_str(c.get("imagePullPolicy")) {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        c["imagePullPolicy"] = json!(if image_tag(image) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        });
    }
    if is_empty_str(c.get("terminationMessagePath")) {
        c["terminationMessagePath"] = json!("/dev/termination-log");
    }
    if is_empty_str(c.get("terminationMessagePolicy")) {
        c["terminationMessagePolicy"] = json!("File");
    }
    for p in list_mut(c, "ports") {
        if is_empty_str(p.get("protocol")) {
            p["protocol"] = json!("TCP");
        }
        if host_network
            && p.get("hostPort")
                .is_none_or(|h| h.is_null() || h.as_i64() == Some(0))
        {
            if let Some(cp) = p.get("containerPort").cloned() {
                p["hostPort"] = cp;
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            http_get(p);
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = c
            .get_mut("lifecycle")
            .and_then(|l| l.get_mut(hook))
            .filter(|h| h.is_object())
        {
            http_get(h);
        }
    }
    for e in list_mut(c, "env") {
        if let Some(fr) = e
            .pointer_mut("/valueFrom/fieldRef")
            .filter(|f| f.is_object())
        {
            set(fr, "apiVersion", json!("v1"));
        }
    }
}

fn http_get(handler: &mut Value) {
    if let Some(h) = handler.get_mut("httpGet").filter(|h| h.is_object()) {
        if is_empty_str(h.get("path")) {
            h["path"] = json!("/");
        }
        if is_empty_str(h.get("scheme")) {
            h["scheme"] = json!("HTTP");
        }
    }
}

/// The tag as upstream's `parsers.ParseImageName` sees it: `latest` when neither tag nor digest is given.
fn image_tag(image: &str) -> &str {
    if image.contains('@') {
        let before = image.split('@').next().unwrap_or("");
        let last = before.rsplit('/').next().unwrap_or("");
        return last.split_once(':').map(|(_, t)| t).unwrap_or("");
    }
    let last = image.rsplit('/').next().unwrap_or("");
    last.split_once(':').map(|(_, t)| t).unwrap_or("latest")
}

fn volume(v: &mut Value) {
    const SOURCES: &[&str] = &[
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    let Some(m) = v.as_object_mut() else {
        return;
    };
    if !SOURCES
        .iter()
        .any(|s| m.get(*s).is_some_and(|x| !x.is_null()))
    {
        m.insert("emptyDir".into(), json!({}));
    }
    for src in ["configMap", "secret", "projected", "downwardAPI"] {
        if let Some(s) = m.get_mut(src).filter(|s| s.is_object()) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = m.get_mut("hostPath").filter(|s| s.is_object()) {
        set(h, "type", json!(""));
    }
}

fn template(spec: &mut Value) {
    if let Some(ps) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .filter(|s| s.is_object())
    {
        pod_spec(ps);
    }
}

fn deployment(obj: &mut Value) {
    let spec = child(obj, "spec");
    set(spec, "replicas", json!(1));
    let strategy = child(spec, "strategy");
    if is_empty_str(strategy.get("type")) {
        strategy["type"] = json!("RollingUpdate");
    }
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child(strategy, "rollingUpdate");
        set(ru, "maxUnavailable", json!("25%"));
        set(ru, "maxSurge", json!("25%"));
    }
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    template(spec);
}

fn stateful_set(obj: &mut Value) {
    let spec = child(obj, "spec");
    if is_empty_str(spec.get("podManagementPolicy")) {
        spec["podManagementPolicy"] = json!("OrderedReady");
    }
    let us = child(spec, "updateStrategy");
    if is_empty_str(us.get("type")) {
        us["type"] = json!("RollingUpdate");
        set(us, "rollingUpdate", json!({}));
    }
    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        if let Some(ru) = us.get_mut("rollingUpdate").filter(|r| r.is_object()) {
            set(ru, "partition", json!(0));
        }
    }
    let policy = child(spec, "persistentVolumeClaimRetentionPolicy");
    set(policy, "whenDeleted", json!("Retain"));
    set(policy, "whenScaled", json!("Retain"));
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

fn daemon_set(obj: &mut Value) {
    let spec = child(obj, "spec");
    let us = child(spec, "updateStrategy");
    if is_empty_str(us.get("type")) {
        us["type"] = json!("RollingUpdate");
    }
    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child(us, "rollingUpdate");
        set(ru, "maxUnavailable", json!(1));
        set(ru, "maxSurge", json!(0));
    }
    set(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

fn network_policy(obj: &mut Value) {
    let spec = child(obj, "spec");
    for dir in ["ingress", "egress"] {
        for rule in list_mut(spec, dir) {
            for p in list_mut(rule, "ports") {
                if is_empty_str(p.get("protocol")) {
                    p["protocol"] = json!("TCP");
                }
            }
        }
    }
    if spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
    {
        let has_egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        spec["policyTypes"] = if has_egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(group: &str, kind: &str, mut obj: Value) -> Value {
        let gk = GroupKind { group, kind };
        apply_defaults(gk, &mut obj);
        let once = obj.clone();
        apply_defaults(gk, &mut obj);
        assert_eq!(once, obj, "defaulting {kind} twice changed it");
        obj
    }

    #[test]
    fn service_defaults() {
        let svc = defaulted(
            "",
            "Service",
            json!({"metadata": {"name": "s"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}], "selector": {"app": "x"}}}),
        );
        assert_eq!(
            svc,
            json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.10",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}],
                "selector": {"app": "x"}, "sessionAffinity": "None", "type": "ClusterIP", "internalTrafficPolicy": "Cluster",
                "clusterIPs": ["10.96.0.10"], "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]},
                "status": {"loadBalancer": {}}})
        );
        let lb = defaulted(
            "",
            "Service",
            json!({"spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP", "ports": [{"port": 80, "targetPort": 0}]}}),
        );
        assert_eq!(lb["spec"]["externalTrafficPolicy"], json!("Cluster"));
        assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], json!(true));
        assert_eq!(
            lb["spec"]["sessionAffinityConfig"],
            json!({"clientIP": {"timeoutSeconds": 10800}})
        );
        assert_eq!(lb["spec"]["ports"][0]["targetPort"], json!(80));
        let en = defaulted(
            "",
            "Service",
            json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
        );
        assert!(en["spec"].get("ipFamilies").is_none());
        assert!(en["spec"].get("internalTrafficPolicy").is_none());
        assert!(en["spec"].get("externalTrafficPolicy").is_none());
    }

    #[test]
    fn pod_defaults() {
        let p = defaulted(
            "",
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "ikubernetes/demoapp:v1.0",
            "ports": [{"containerPort": 80}],
            "livenessProbe": {"httpGet": {"port": 80, "path": "/livez"}},
            "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}},
            {"name": "d", "image": "busybox"}]}}),
        );
        assert_eq!(
            p["spec"]["containers"][0],
            json!({"name": "c", "image": "ikubernetes/demoapp:v1.0", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "livenessProbe": {"httpGet": {"port": 80, "path": "/livez", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                "resources": {"limits": {"cpu": "1", "memory": "64Mi"}, "requests": {"cpu": "1", "memory": "64Mi"}},
                "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
        );
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            json!("Always")
        );
        for (k, v) in [
            ("restartPolicy", json!("Always")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("schedulerName", json!("default-scheduler")),
            ("enableServiceLinks", json!(true)),
            ("securityContext", json!({})),
        ] {
            assert_eq!(p["spec"][k], v, "{k}");
        }
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            p["status"],
            json!({"phase": "Pending", "qosClass": "Burstable"})
        );
        assert_eq!(image_tag("busybox"), "latest");
        assert_eq!(image_tag("localhost:5000/x:1.2"), "1.2");
        assert_eq!(image_tag("localhost:5000/x"), "latest");
        assert_eq!(image_tag("x@sha256:abc"), "");
    }

    #[test]
    fn workload_defaults() {
        let d = defaulted(
            "apps",
            "Deployment",
            json!({"spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}],
            "volumes": [{"name": "v"}, {"name": "cm", "configMap": {"name": "x"}}]}}}}),
        );
        assert_eq!(d["spec"]["replicas"], json!(1));
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], json!(10));
        assert_eq!(d["spec"]["progressDeadlineSeconds"], json!(600));
        assert_eq!(
            d["spec"]["template"]["spec"]["restartPolicy"],
            json!("Always")
        );
        assert!(d["spec"]["template"]["spec"]
            .get("enableServiceLinks")
            .is_none());
        assert_eq!(
            d["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {}}, {"name": "cm", "configMap": {"name": "x", "defaultMode": 420}}])
        );
        let recreate = defaulted(
            "apps",
            "Deployment",
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
        let ds = defaulted("apps", "DaemonSet", json!({"spec": {}}));
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        let sts = defaulted("apps", "StatefulSet", json!({"spec": {}}));
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(sts["spec"]["podManagementPolicy"], json!("OrderedReady"));
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        let rs = defaulted("apps", "ReplicaSet", json!({"spec": {"replicas": 0}}));
        assert_eq!(rs["spec"]["replicas"], json!(0));
    }

    #[test]
    fn update_keeps_allocated_service_values() {
        let gk = GroupKind {
            group: "",
            kind: "Service",
        };
        let old = defaulted(
            "",
            "Service",
            json!({"metadata": {"name": "s", "uid": "u1", "creationTimestamp": "2026-11-22T00:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 31399}]}}),
        );
        let mut new = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 9090}]}});
        prepare_for_update(gk, &mut new, &old);
        apply_defaults(gk, &mut new);
        assert_eq!(new["spec"]["clusterIP"], json!("10.96.0.9"));
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.96.0.9"]));
        assert_eq!(
            new["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090, "nodePort": 31399, "protocol": "TCP"}])
        );
        assert_eq!(new["metadata"]["uid"], json!("u1"));
        assert!(crate::validation::validate(gk, &new, Some(&old)).is_empty());
    }

    #[test]
    fn type_change_drops_node_ports_and_traffic_policy() {
        let gk = GroupKind {
            group: "",
            kind: "Service",
        };
        let old = defaulted(
            "",
            "Service",
            json!({"metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 32000, "ports": [{"port": 80, "nodePort": 31399}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}),
        );
        // a merge patch `{"spec":{"type":"ClusterIP"}}` keeps everything else of the live object
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        prepare_for_update(gk, &mut new, &old);
        apply_defaults(gk, &mut new);
        assert_eq!(
            new["spec"],
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"],
                   "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                   "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                   "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"})
        );
        assert_eq!(new["status"], json!({"loadBalancer": {}}));
        assert_eq!(
            crate::validation::validate(gk, &new, Some(&old)),
            Vec::<crate::Cause>::new()
        );

        // a node port the user changed in the same update is kept (validation reports it)
        let mut changed = old.clone();
        changed["spec"]["type"] = json!("ClusterIP");
        changed["spec"]["ports"][0]["nodePort"] = json!(31400);
        prepare_for_update(gk, &mut changed, &old);
        assert_eq!(changed["spec"]["ports"][0]["nodePort"], json!(31400));

        // ClusterIP -> ExternalName gives up the cluster IP
        let cip = defaulted(
            "",
            "Service",
            json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}),
        );
        let mut en = cip.clone();
        en["spec"]["type"] = json!("ExternalName");
        en["spec"]["externalName"] = json!("example.com");
        prepare_for_update(gk, &mut en, &cip);
        apply_defaults(gk, &mut en);
        assert_eq!(en["spec"].get("clusterIP"), None);
        assert_eq!(en["spec"].get("clusterIPs"), None);
        assert_eq!(en["spec"].get("ipFamilies"), None);
        assert_eq!(
            crate::validation::validate(gk, &en, Some(&cip)),
            Vec::<crate::Cause>::new()
        );
    }

    #[test]
    fn misc_defaults() {
        let ns = defaulted("", "Namespace", json!({"metadata": {"name": "demo"}}));
        assert_eq!(
            ns,
            json!({"metadata": {"name": "demo", "labels": {"kubernetes.io/metadata.name": "demo"}},
                   "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        );
        let np = defaulted(
            "networking.k8s.io",
            "NetworkPolicy",
            json!({"spec": {"podSelector": {},
            "ingress": [{"ports": [{"port": 80}]}], "egress": [{}]}}),
        );
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            np["spec"]["ingress"][0]["ports"][0],
            json!({"port": 80, "protocol": "TCP"})
        );
        let np2 = defaulted(
            "networking.k8s.io",
            "NetworkPolicy",
            json!({"spec": {"podSelector": {}}}),
        );
        assert_eq!(np2["spec"]["policyTypes"], json!(["Ingress"]));
        let es = defaulted(
            "discovery.k8s.io",
            "EndpointSlice",
            json!({"ports": [{"port": 80}]}),
        );
        assert_eq!(
            es["ports"],
            json!([{"port": 80, "name": "", "protocol": "TCP"}])
        );
        let ep = defaulted(
            "",
            "Endpoints",
            json!({"subsets": [{"ports": [{"port": 80}]}]}),
        );
        assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], json!("TCP"));
        let sec = defaulted("", "Secret", json!({"data": {}}));
        assert_eq!(sec["type"], json!("Opaque"));
    }
}
