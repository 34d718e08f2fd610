//! ClusterIP and NodePort allocation for Services. The allocated sets are derived from the stored Services at
//! start and changed only under the service-write lock together with the store write, so an address or port is
//! never handed out twice, also across restarts.

use ipnet::Ipv4Net;
use rand::Rng;
use serde_json::{json, Value};
use skiff_apimachinery::Cause;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

pub struct Allocators {
    pub cidr: Ipv4Net,
    pub ports: RangeInclusive<u16>,
    ips_used: HashSet<Ipv4Addr>,
    ports_used: HashSet<u16>,
}

/// What one Service holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Held {
    pub ips: Vec<Ipv4Addr>,
    pub ports: Vec<u16>,
}

pub fn held_by(svc: &Value) -> Held {
    let spec = &svc["spec"];
    let mut h = Held::default();
    let mut ips: Vec<&str> = spec["clusterIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        if let Some(ip) = spec["clusterIP"].as_str() {
            ips.push(ip);
        }
    }
    for ip in ips {
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            h.ips.push(ip);
        }
    }
    if let Some(ports) = spec["ports"].as_array() {
        for p in ports {
            if let Some(n) = p["nodePort"].as_u64() {
                h.ports.push(n as u16);
            }
        }
    }
    if let Some(n) = spec["healthCheckNodePort"].as_u64() {
        h.ports.push(n as u16);
    }
    h
}

fn cause(field: impl Into<String>, message: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message,
        field: field.into(),
    }
}

impl Allocators {
    pub fn new(cidr: Ipv4Net, ports: RangeInclusive<u16>) -> Self {
        Self {
            cidr,
            ports,
            ips_used: HashSet::new(),
            ports_used: HashSet::new(),
        }
    }

    pub fn mark(&mut self, h: &Held) {
        self.ips_used.extend(h.ips.iter().copied());
        self.ports_used.extend(h.ports.iter().copied());
    }

    pub fn release(&mut self, h: &Held) {
        for ip in &h.ips {
            self.ips_used.remove(ip);
        }
        for p in &h.ports {
            self.ports_used.remove(p);
        }
    }

    /// Release what `old` held and `new` does not (after a successful write).
    #[cfg(test)]
    pub fn release_diff(&mut self, old: &Held, new: &Held) {
        let gone = Held {
            ips: old
                .ips
                .iter()
                .filter(|i| !new.ips.contains(i))
                .copied()
                .collect(),
            ports: old
                .ports
                .iter()
                .filter(|p| !new.ports.contains(p))
                .copied()
                .collect(),
        };
        self.release(&gone);
    }

    /// The service CIDR's first address (the `kubernetes` Service).
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    fn random_ip(&self) -> Option<Ipv4Addr> {
        let base = u32::from(self.cidr.network());
        let size = 1u64 << (32 - self.cidr.prefix_len());
        if size <= 2 {
            return None;
        }
        let mut rng = rand::rng();
        for _ in 0..256 {
            let off = rng.random_range(1..size - 1) as u32;
            let ip = Ipv4Addr::from(base + off);
            if !self.ips_used.contains(&ip) {
                return Some(ip);
            }
        }
        (1..size - 1)
            .map(|o| Ipv4Addr::from(base + o as u32))
            .find(|ip| !self.ips_used.contains(ip))
    }

    fn random_port(&self) -> Option<u16> {
        let mut rng = rand::rng();
        for _ in 0..256 {
            let p = rng.random_range(self.ports.clone());
            if !self.ports_used.contains(&p) {
                return Some(p);
            }
        }
        self.ports.clone().find(|p| !self.ports_used.contains(p))
    }

    fn take_port(
        &mut self,
        field: String,
        p: u64,
        keep: &[u16],
        dry: bool,
        causes: &mut Vec<Cause>,
    ) -> Option<u16> {
        let n = p as u16;
        if keep.contains(&n) {
            return Some(n);
        }
        if p > u16::MAX as u64 || !self.ports.contains(&n) {
            causes.push(cause(
                field,
                format!(
                    "Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {}-{}",
                    self.ports.start(),
                    self.ports.end()
                ),
            ));
            return None;
        }
        if self.ports_used.contains(&n) {
            causes.push(cause(
                field,
                format!("Invalid value: {p}: provided port is already allocated"),
            ));
            return None;
        }
        if !dry {
            self.ports_used.insert(n);
        }
        Some(n)
    }

    /// Fill in and reserve the Service's cluster IP, node ports and health-check node port, keeping what `old`
    /// already holds. On error nothing new stays reserved. With `dry` nothing is reserved at all.
    pub fn allocate(
        &mut self,
        svc: &mut Value,
        old: Option<&Value>,
        dry: bool,
    ) -> Result<(), Vec<Cause>> {
        let old_held = old.map(held_by).unwrap_or_default();
        let before_ips = self.ips_used.clone();
        let before_ports = self.ports_used.clone();
        let r = self.allocate_inner(svc, old, &old_held, dry);
        if r.is_err() || dry {
            self.ips_used = before_ips;
            self.ports_used = before_ports;
        }
        r
    }

    fn allocate_inner(
        &mut self,
        svc: &mut Value,
        old: Option<&Value>,
        old_held: &Held,
        dry: bool,
    ) -> Result<(), Vec<Cause>> {
        if !svc["spec"].is_object() {
            svc["spec"] = json!({});
        }
        let mut causes = Vec::new();
        let ty = svc["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        let spec = svc["spec"].as_object_mut().ok_or_else(Vec::new)?;
        // ClusterIP
        if ty == "ExternalName" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        } else {
            let given = spec
                .get("clusterIP")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            let given = if given.is_empty() {
                spec.get("clusterIPs")
                    .and_then(|v| v.get(0))
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            } else {
                given
            };
            let old_ip = old
                .and_then(|o| o["spec"]["clusterIP"].as_str())
                .unwrap_or("")
                .to_string();
            let ip_str = if given.is_empty() && !old_ip.is_empty() {
                old_ip.clone()
            } else if given.is_empty() {
                match self.random_ip() {
                    Some(ip) => {
                        if !dry {
                            self.ips_used.insert(ip);
                        }
                        ip.to_string()
                    }
                    None => {
                        causes.push(cause(
                            "spec.clusterIPs",
                            "Internal error: range is full".into(),
                        ));
                        String::new()
                    }
                }
            } else if given == "None" || given == old_ip {
                given
            } else {
                match given.parse::<Ipv4Addr>() {
                    Ok(ip) if !self.cidr.contains(&ip) => {
                        causes.push(cause(
                            "spec.clusterIPs",
                            format!(
                                "Invalid value: []string{{\"{given}\"}}: failed to allocate IP {given}: provided IP is not in the valid range. The range of valid IPs is {}",
                                self.cidr
                            ),
                        ));
                    }
                    Ok(ip) if self.ips_used.contains(&ip) && !old_held.ips.contains(&ip) => {
                        causes.push(cause(
                            "spec.clusterIPs",
                            format!("Invalid value: []string{{\"{given}\"}}: failed to allocate IP {given}: provided IP is already allocated"),
                        ));
                    }
                    Ok(ip) => {
                        if !dry {
                            self.ips_used.insert(ip);
                        }
                    }
                    // Malformed addresses are validation's to report.
                    Err(_) => {}
                }
                given
            };
            if !ip_str.is_empty() {
                spec.insert("clusterIP".into(), json!(ip_str));
                spec.insert("clusterIPs".into(), json!([ip_str]));
                spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
                spec.entry("ipFamilyPolicy")
                    .or_insert_with(|| json!("SingleStack"));
            }
        }
        // Node ports
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && spec
                    .get("allocateLoadBalancerNodePorts")
                    .and_then(|v| v.as_bool())
                    != Some(false));
        let old_ports: Vec<Value> = old
            .and_then(|o| o["spec"]["ports"].as_array().cloned())
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
            for (i, p) in ports.iter_mut().enumerate() {
                if !wants_node_ports {
                    // A type change away from NodePort/LoadBalancer drops the ports (released after the write).
                    if ty != "LoadBalancer" {
                        if let Some(o) = p.as_object_mut() {
                            o.remove("nodePort");
                        }
                    }
                    continue;
                }
                let field = format!("spec.ports[{i}].nodePort");
                match p
                    .get("nodePort")
                    .and_then(|v| v.as_u64())
                    .filter(|n| *n != 0)
                {
                    Some(n) => {
                        self.take_port(field, n, &old_held.ports, dry, &mut causes);
                    }
                    None => {
                        // Keep the node port this port had before (matched by port number and protocol).
                        let proto = p
                            .get("protocol")
                            .and_then(|v| v.as_str())
                            .unwrap_or("TCP")
                            .to_string();
                        let prev = old_ports.iter().find(|op| {
                            op.get("port") == p.get("port")
                                && op.get("protocol").and_then(|v| v.as_str()).unwrap_or("TCP")
                                    == proto
                        });
                        let n = match prev
                            .and_then(|op| op.get("nodePort"))
                            .and_then(|v| v.as_u64())
                        {
                            Some(n) => Some(n as u16),
                            None => {
                                let n = self.random_port();
                                if let (Some(n), false) = (n, dry) {
                                    self.ports_used.insert(n);
                                }
                                n
                            }
                        };
                        if let (Some(n), Some(o)) = (n, p.as_object_mut()) {
                            o.insert("nodePort".into(), json!(n));
                        }
                    }
                }
            }
        }
        // Health-check node port
        let local = spec.get("externalTrafficPolicy").and_then(|v| v.as_str()) == Some("Local");
        if ty == "LoadBalancer" && local {
            match spec
                .get("healthCheckNodePort")
                .and_then(|v| v.as_u64())
                .filter(|n| *n != 0)
            {
                Some(n) => {
                    self.take_port(
                        "spec.healthCheckNodePort".into(),
                        n,
                        &old_held.ports,
                        dry,
                        &mut causes,
                    );
                }
                None => {
                    let prev = old
                        .and_then(|o| o["spec"]["healthCheckNodePort"].as_u64())
                        .map(|n| n as u16);
                    let n = prev.or_else(|| {
                        let n = self.random_port();
                        if let (Some(n), false) = (n, dry) {
                            self.ports_used.insert(n);
                        }
                        n
                    });
                    if let Some(n) = n {
                        spec.insert("healthCheckNodePort".into(), json!(n));
                    }
                }
            }
        } else {
            spec.remove("healthCheckNodePort");
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(causes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocs() -> Allocators {
        Allocators::new("10.96.0.0/12".parse().expect("cidr"), 30000..=32767)
    }

    #[test]
    fn chosen_ip_conflict_and_range_messages() {
        let mut a = allocs();
        let mut s1 = json!({"spec": {"clusterIP": "10.97.72.1", "ports": [{"port": 80}]}});
        a.allocate(&mut s1, None, false).expect("first");
        assert_eq!(s1["spec"]["clusterIPs"], json!(["10.97.72.1"]));
        let mut s2 = json!({"spec": {"clusterIP": "10.97.72.1"}});
        let e = a.allocate(&mut s2, None, false).expect_err("taken");
        assert_eq!(e[0].field, "spec.clusterIPs");
        assert_eq!(
            e[0].message,
            "Invalid value: []string{\"10.97.72.1\"}: failed to allocate IP 10.97.72.1: provided IP is already allocated"
        );
        let mut s3 = json!({"spec": {"clusterIP": "10.200.0.1"}});
        let e = a.allocate(&mut s3, None, false).expect_err("range");
        assert_eq!(
            e[0].message,
            "Invalid value: []string{\"10.200.0.1\"}: failed to allocate IP 10.200.0.1: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
        );
        // Updating the holder with the same IP is fine.
        let mut s1b = s1.clone();
        a.allocate(&mut s1b, Some(&s1), false)
            .expect("same ip on update");
    }

    #[test]
    fn node_ports_allocate_keep_and_conflict() {
        let mut a = allocs();
        let mut s1 = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 31399}, {"port": 81}]}});
        a.allocate(&mut s1, None, false).expect("alloc");
        let p1 = s1["spec"]["ports"][1]["nodePort"]
            .as_u64()
            .expect("auto port");
        assert!((30000..=32767).contains(&p1));
        let mut s2 =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 31399}]}});
        let e = a.allocate(&mut s2, None, false).expect_err("dup");
        assert_eq!(e[0].field, "spec.ports[0].nodePort");
        assert_eq!(
            e[0].message,
            "Invalid value: 31399: provided port is already allocated"
        );
        // Failed allocation reserved nothing: the auto IP of s2 is free again.
        let mut s3 =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 29999}]}});
        let e = a.allocate(&mut s3, None, false).expect_err("range");
        assert_eq!(
            e[0].message,
            "Invalid value: 29999: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
        // Update without nodePorts keeps the old ones; type change to ClusterIP drops them.
        let mut upd = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        a.allocate(&mut upd, Some(&s1), false).expect("keep");
        assert_eq!(upd["spec"]["ports"][0]["nodePort"], json!(31399));
        assert_eq!(upd["spec"]["ports"][1]["nodePort"], json!(p1));
        let mut cip = s1.clone();
        cip["spec"]["type"] = json!("ClusterIP");
        a.allocate(&mut cip, Some(&s1), false)
            .expect("to clusterip");
        assert!(held_by(&cip).ports.is_empty());
        a.release_diff(&held_by(&s1), &held_by(&cip));
        let mut s4 =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 31399}]}});
        a.allocate(&mut s4, None, false)
            .expect("released port reusable");
    }

    #[test]
    fn headless_external_name_and_health_check() {
        let mut a = allocs();
        let mut h = json!({"spec": {"clusterIP": "None"}});
        a.allocate(&mut h, None, false).expect("headless");
        assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
        let mut e = json!({"spec": {"type": "ExternalName", "externalName": "x.example"}});
        a.allocate(&mut e, None, false).expect("externalname");
        assert!(e["spec"].get("clusterIP").is_none());
        let mut lb = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}});
        a.allocate(&mut lb, None, false).expect("lb");
        assert!(lb["spec"]["healthCheckNodePort"].as_u64().is_some());
        assert_eq!(held_by(&lb).ports.len(), 2);
    }
}
