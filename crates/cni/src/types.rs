//! CNI wire types: the result object, the error object and the codes of the CNI specification
//! (https://github.com/containernetworking/cni/blob/main/SPEC.md), shared by the plugin and the runtime side.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version this implementation speaks natively.
pub const CNI_VERSION: &str = "1.0.0";
/// Versions this plugin accepts in a network configuration (results are rendered in the requested one).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Error codes of the CNI specification ("Error" section); 100+ are plugin-specific.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific: the IPAM range has no free address.
    pub const NO_ADDRESSES: u32 = 100;
    /// Plugin-specific: a kernel (netlink) operation failed.
    pub const NETLINK_FAILURE: u32 = 101;
}

/// The CNI error object, as a plugin prints it on stdout with a non-zero exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: CNI_VERSION.to_string(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl std::fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }
}

/// An interface the plugin created or configured (`interfaces` in the result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside a container; empty for host-side interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An IP configuration (`ips` in the result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Only in results of version 0.x ("4" or "6").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: ipnet::IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: ipnet::IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// The CNI success result of ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// The pod's IPv4 address: the first IPv4 entry of `ips` (what kubelet reports as `status.podIP`).
    pub fn pod_ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.ips.iter().find_map(|ip| match ip.address {
            ipnet::IpNet::V4(net) => Some(net.addr()),
            ipnet::IpNet::V6(_) => None,
        })
    }

    /// The same result rendered for `version`: 0.x results carry `version` on each IP, 1.x results do not.
    pub fn for_version(&self, version: &str) -> CniResult {
        let mut out = self.clone();
        out.cni_version = version.to_string();
        let legacy = version.starts_with("0.");
        // `interfaces[].mtu` exists only since CNI 1.1.0.
        if legacy || version == "1.0.0" {
            for iface in &mut out.interfaces {
                iface.mtu = None;
            }
        }
        for ip in &mut out.ips {
            ip.version = if legacy {
                Some(
                    if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    }
                    .to_string(),
                )
            } else {
                None
            };
        }
        out
    }
}

/// Whether `version` is one this plugin accepts.
pub fn version_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// The VERSION command's answer.
pub fn version_info() -> Value {
    serde_json::json!({ "cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_renders_per_version() {
        let result = CniResult {
            cni_version: CNI_VERSION.into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: None,
                sandbox: "/var/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.2/32".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        };
        assert_eq!(
            serde_json::to_string(&result.for_version("1.0.0")).unwrap(),
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.1.2/32","gateway":"10.244.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]}"#
        );
        assert_eq!(
            serde_json::to_string(&result.for_version("0.4.0")).unwrap(),
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","address":"10.244.1.2/32","gateway":"10.244.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]}"#
        );
        assert_eq!(result.pod_ipv4(), Some("10.244.1.2".parse().unwrap()));
        let mut with_mtu = result.clone();
        with_mtu.interfaces[0].mtu = Some(1450);
        assert_eq!(with_mtu.for_version("1.0.0").interfaces[0].mtu, None);
        assert_eq!(with_mtu.for_version("1.1.0").interfaces[0].mtu, Some(1450));
    }

    #[test]
    fn error_object_shape() {
        let err = CniError::new(code::INVALID_ENV, "required env variable CNI_NETNS missing");
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"cniVersion":"1.0.0","code":4,"msg":"required env variable CNI_NETNS missing"}"#
        );
    }
}
