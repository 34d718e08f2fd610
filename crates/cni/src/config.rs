//! The network configuration list the node agent writes into its CNI configuration directory.

/// File name the agent should use in its CNI conf dir (lexically first, as kubelet's runtimes pick).
pub const CONFLIST_FILE: &str = "10-skiff.conflist";

/// The `.conflist` for a node: one `skiff-cni` plugin with the built-in IPAM over the node's podCIDR.
/// `mtu` is 1450 under the VXLAN overlay (1500 minus the 50 bytes of VXLAN encapsulation), else 1500.
pub fn skiff_conflist(network_name: &str, pod_cidr: ipnet::Ipv4Net, mtu: u32) -> String {
    render(network_name, pod_cidr, mtu, None)
}

/// As [`skiff_conflist`], with the IPAM allocations kept under `ipam_data_dir` instead of
/// `/var/lib/cni/networks` (e.g. the node's own data dir, so removing the node removes its allocations).
pub fn skiff_conflist_in(
    network_name: &str,
    pod_cidr: ipnet::Ipv4Net,
    mtu: u32,
    ipam_data_dir: &std::path::Path,
) -> String {
    render(network_name, pod_cidr, mtu, Some(ipam_data_dir))
}

fn render(
    network_name: &str,
    pod_cidr: ipnet::Ipv4Net,
    mtu: u32,
    data_dir: Option<&std::path::Path>,
) -> String {
    let mut ipam =
        serde_json::json!({ "type": "skiff-ipam", "subnet": pod_cidr.trunc().to_string() });
    if let Some(dir) = data_dir {
        ipam["dataDir"] = serde_json::Value::String(dir.display().to_string());
    }
    let value = serde_json::json!({
        // 1.1.0: the runtime's GC reaches the plugin (CNI_COMMAND=GC) to release addresses a crash leaked.
        "cniVersion": "1.1.0",
        "name": network_name,
        "plugins": [{
            "type": crate::plugin::PLUGIN_TYPE,
            "mtu": mtu,
            "ipam": ipam,
        }],
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn golden_conflist() {
        assert_eq!(
            super::skiff_conflist("skiff", "10.244.1.0/24".parse().unwrap(), 1450),
            r#"{
  "cniVersion": "1.1.0",
  "name": "skiff",
  "plugins": [
    {
      "type": "skiff-cni",
      "mtu": 1450,
      "ipam": {
        "type": "skiff-ipam",
        "subnet": "10.244.1.0/24"
      }
    }
  ]
}"#
        );
        let with_dir = super::skiff_conflist_in(
            "skiff",
            "10.244.1.0/24".parse().unwrap(),
            1500,
            std::path::Path::new("/var/lib/skiff/c/nodes/1/ipam"),
        );
        let v: serde_json::Value = serde_json::from_str(&with_dir).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"].to_string(),
            r#"{"type":"skiff-ipam","subnet":"10.244.1.0/24","dataDir":"/var/lib/skiff/c/nodes/1/ipam"}"#
        );
    }
}
