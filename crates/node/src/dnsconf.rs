//! The pod's `/etc/resolv.conf` and `/etc/hosts`, rendered as kubelet (with containerd) writes them. Pure.

use k8s_openapi::api::core::v1::PodSpec;

/// A parsed resolv.conf: what the node uses, and what a pod gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().map(str::to_string)),
                // The last search/domain line wins, as in the C library.
                Some("search") | Some("domain") => {
                    conf.searches = words.map(str::to_string).collect()
                }
                Some("options") => conf.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        conf
    }

    /// containerd's layout: search, nameserver lines, options.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for server in &self.nameservers {
            out.push_str(&format!("nameserver {server}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// How the pod's DNS is decided (`dnsPolicy`); None means "keep the node's /etc/resolv.conf" (hostNetwork
/// pods with the default policy see the node's file unchanged).
pub fn pod_resolv_conf(
    spec: &PodSpec,
    namespace: &str,
    cluster_dns: &str,
    cluster_domain: &str,
    host: &ResolvConf,
) -> Option<ResolvConf> {
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let mut conf = match policy {
        "None" => ResolvConf::default(),
        "Default" => host.clone(),
        "ClusterFirst" if host_network => {
            spec.dns_config.as_ref()?;
            host.clone()
        }
        // ClusterFirst, ClusterFirstWithHostNet
        _ => {
            let mut searches = vec![
                format!("{namespace}.svc.{cluster_domain}"),
                format!("svc.{cluster_domain}"),
                cluster_domain.to_string(),
            ];
            for s in &host.searches {
                if !searches.contains(s) {
                    searches.push(s.clone());
                }
            }
            ResolvConf {
                nameservers: vec![cluster_dns.to_string()],
                searches,
                options: vec!["ndots:5".to_string()],
            }
        }
    };
    if let Some(extra) = &spec.dns_config {
        for ns in extra.nameservers.iter().flatten() {
            if !conf.nameservers.contains(ns) {
                conf.nameservers.push(ns.clone());
            }
        }
        for s in extra.searches.iter().flatten() {
            if !conf.searches.contains(s) {
                conf.searches.push(s.clone());
            }
        }
        // Options merge by name; the pod's value replaces the default one.
        for opt in extra.options.iter().flatten() {
            let Some(name) = opt.name.clone() else {
                continue;
            };
            let rendered = match &opt.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            };
            conf.options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            conf.options.push(rendered);
        }
    }
    // The C library reads at most 3 nameservers and 32 search domains.
    conf.nameservers.truncate(3);
    conf.searches.truncate(32);
    Some(conf)
}

/// The pod's hostname as kubelet computes it: `spec.hostname` or the pod name, truncated to 63 characters
/// (without a trailing '-' or '.').
pub fn pod_hostname(pod_name: &str, spec: &PodSpec) -> String {
    let name = spec
        .hostname
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or(pod_name);
    let mut host: String = name.chars().take(63).collect();
    while host.ends_with('-') || host.ends_with('.') {
        host.pop();
    }
    host
}

/// The hostname's domain when `spec.subdomain` is set: `<subdomain>.<ns>.svc.<cluster domain>`.
pub fn pod_domain(spec: &PodSpec, namespace: &str, cluster_domain: &str) -> Option<String> {
    spec.subdomain
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{sub}.{namespace}.svc.{cluster_domain}"))
}

/// kubelet's managed hosts file.
pub fn hosts_file(
    pod_ips: &[String],
    hostname: &str,
    domain: Option<&str>,
    spec: &PodSpec,
) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        match domain {
            Some(domain) => out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = spec.host_aliases.as_deref().unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfig, PodDNSConfigOption};

    fn host() -> ResolvConf {
        ResolvConf::parse("# generated\nnameserver 10.255.255.53\nnameserver 10.255.255.54 ; x\nsearch example.com\noptions edns0\n")
    }

    #[test]
    fn parses_host_resolv_conf() {
        assert_eq!(
            host(),
            ResolvConf {
                nameservers: vec!["10.255.255.53".into(), "10.255.255.54".into()],
                searches: vec!["example.com".into()],
                options: vec!["edns0".into()],
            }
        );
    }

    #[test]
    fn cluster_first() {
        let conf = pod_resolv_conf(
            &PodSpec::default(),
            "web",
            "10.96.0.10",
            "cluster.local",
            &ResolvConf::default(),
        );
        assert_eq!(
            conf.unwrap().render(),
            "search web.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let conf = pod_resolv_conf(
            &PodSpec::default(),
            "web",
            "10.96.0.10",
            "cluster.local",
            &host(),
        );
        assert_eq!(
            conf.unwrap().render(),
            "search web.svc.cluster.local svc.cluster.local cluster.local example.com\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn policies() {
        let with = |policy: &str, host_network: bool| PodSpec {
            dns_policy: Some(policy.into()),
            host_network: Some(host_network),
            ..Default::default()
        };
        let render = |spec: &PodSpec| {
            pod_resolv_conf(spec, "default", "10.96.0.10", "cluster.local", &host())
                .map(|c| c.render())
        };
        assert_eq!(
            render(&with("Default", false)).unwrap(),
            "search example.com\nnameserver 10.255.255.53\nnameserver 10.255.255.54\noptions edns0\n"
        );
        assert_eq!(render(&with("ClusterFirst", true)), None);
        assert_eq!(
            render(&with("ClusterFirstWithHostNet", true)).unwrap(),
            "search default.svc.cluster.local svc.cluster.local cluster.local example.com\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let mut none = with("None", false);
        none.dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.2.3.4".into()]),
            searches: Some(vec!["ns1.svc.cluster-domain.example".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".into()),
                    value: None,
                },
            ]),
        });
        assert_eq!(
            render(&none).unwrap(),
            "search ns1.svc.cluster-domain.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        let mut merged = with("ClusterFirst", false);
        merged.dns_config = none.dns_config.clone();
        assert_eq!(
            render(&merged).unwrap(),
            "search default.svc.cluster.local svc.cluster.local cluster.local example.com ns1.svc.cluster-domain.example\nnameserver 10.96.0.10\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn hosts_plain_and_fqdn() {
        let spec = PodSpec::default();
        assert_eq!(
            hosts_file(&["10.244.1.5".into()], "demo", None, &spec),
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n10.244.1.5\tdemo\n"
        );
        let spec = PodSpec {
            hostname: Some("web-0".into()),
            subdomain: Some("nginx".into()),
            host_aliases: Some(vec![HostAlias {
                ip: "127.0.0.1".into(),
                hostnames: Some(vec!["foo.local".into(), "bar.local".into()]),
            }]),
            ..Default::default()
        };
        let hostname = pod_hostname("ignored", &spec);
        let domain = pod_domain(&spec, "web", "cluster.local");
        assert_eq!(
            hosts_file(&["10.244.1.6".into()], &hostname, domain.as_deref(), &spec),
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n10.244.1.6\tweb-0.nginx.web.svc.cluster.local\tweb-0\n\n# Entries added by HostAliases.\n127.0.0.1\tfoo.local\tbar.local\n"
        );
    }

    #[test]
    fn hostname_is_truncated_like_kubelet() {
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(pod_hostname(&long, &PodSpec::default()), "a".repeat(62));
    }
}
