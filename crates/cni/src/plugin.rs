//! The `skiff-cni` plugin: point-to-point routed pod networking (as the reference ptp plugin and Calico do).
//!
//! ADD: an address from the built-in IPAM, a veth pair whose pod end is CNI_IFNAME in the pod's namespace with
//! `<podIP>/32`, routes `<gateway>/32 scope link` and `default via <gateway>` in the pod, and on the host end
//! (`skf<hash of the container id>`) the gateway as `/32` plus the route `<podIP>/32 dev <host end>`. Traffic
//! from a pod is therefore always routed by the node, which is what lets the overlay and host-gw routes work.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};
use serde::Deserialize;
use serde_json::Value;

use crate::ipam::{self, IpamConfig, Range, Store};
use crate::nl::{self, NlError, V4Route};
use crate::types::{
    code, version_info, version_supported, CniError, CniResult, Interface, IpConfig, Route,
};

/// The plugin's `type`.
pub const PLUGIN_TYPE: &str = "skiff-cni";
/// MTU when the configuration names none.
pub const DEFAULT_MTU: u32 = 1500;

/// The network configuration skiff-cni accepts (one entry of a conflist's `plugins`, with `name` and
/// `cniVersion` injected by the runtime).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The raw `ipam` section: `skiff-ipam` (or no type) is the built-in allocator, any other type is an IPAM
    /// plugin executed from CNI_PATH as the spec's delegation describes (e.g. the reference host-local).
    #[serde(default)]
    pub ipam: Value,
    /// The built-in allocator's configuration (filled by [`parse_config`]).
    #[serde(skip)]
    pub builtin_ipam: Option<IpamConfig>,
    /// The delegated IPAM plugin's type (filled by [`parse_config`]).
    #[serde(skip)]
    pub delegate_ipam: Option<String>,
    /// The configuration exactly as received: delegated IPAM plugins get the same stdin.
    #[serde(skip)]
    pub raw: Vec<u8>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Vec<(String, String)>,
    pub path: Option<String>,
}

impl Env {
    /// Read the environment; malformed CNI_ARGS and a missing CNI_COMMAND are spec errors (code 4).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = non_empty("CNI_COMMAND").ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "required env variable CNI_COMMAND missing",
            )
        })?;
        let mut args = Vec::new();
        for pair in non_empty("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("invalid CNI_ARGS pair \"{pair}\""),
                )
            })?;
            args.push((k.to_string(), v.to_string()));
        }
        Ok(Env {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS"),
            ifname: non_empty("CNI_IFNAME"),
            args,
            path: non_empty("CNI_PATH"),
        })
    }

    fn require<'a>(&'a self, value: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
        value.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("required env variable {name} missing"),
            )
        })
    }
}

/// The host-side veth name for a container: `skf` + 12 hex digits of a hash of the container id and ifname
/// (15 characters, the kernel's limit), stable so DEL finds it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: tiny, stable across releases (std's hasher is not).
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("skf{:012x}", hash & 0xffff_ffff_ffff)
}

/// Parse and validate stdin: JSON syntax errors are code 6, an unsupported version code 1, a configuration
/// that does not fit skiff-cni's schema code 7.
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "failed to decode network configuration",
        )
        .with_details(e)
    })?;
    let version = value
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "network configuration has no cniVersion",
            )
        })?;
    if !version_supported(version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions: config is \"{version}\", plugin supports {:?}",
                crate::types::SUPPORTED_VERSIONS
            ),
        ));
    }
    let conf: NetConf = serde_json::from_value(value).map_err(|e| {
        CniError::new(code::INVALID_CONFIG, "invalid network configuration").with_details(e)
    })?;
    if conf.name.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "network configuration has an empty name",
        ));
    }
    let mut conf = conf;
    conf.raw = stdin.to_vec();
    match conf.ipam.get("type").and_then(Value::as_str) {
        Some(kind) if kind != "skiff-ipam" => {
            if kind.is_empty() || kind.contains('/') {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("invalid ipam type \"{kind}\""),
                ));
            }
            conf.delegate_ipam = Some(kind.to_string());
        }
        _ => {
            if conf.ipam.is_null() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "network configuration has no ipam section",
                ));
            }
            let builtin: IpamConfig = serde_json::from_value(conf.ipam.clone()).map_err(|e| {
                CniError::new(code::INVALID_CONFIG, "invalid IPAM configuration").with_details(e)
            })?;
            Range::from_config(&builtin).map_err(|e| {
                CniError::new(code::INVALID_CONFIG, "invalid IPAM configuration").with_details(e)
            })?;
            conf.builtin_ipam = Some(builtin);
        }
    }
    if conf.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "mtu must be between 68 and 65535",
        ));
    }
    Ok(conf)
}

/// Entry point of the plugin executable: reads the CNI environment and stdin, writes the result or error
/// object to stdout, and returns the process exit code.
pub fn plugin_main() -> i32 {
    let env = Env::from_vars(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match (env, read) {
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(CniError::new(code::IO_FAILURE, "reading stdin").with_details(e)),
        (Ok(env), Ok(_)) => run(&env, &stdin),
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(Some(value)) => {
            let _ = writeln!(stdout, "{value}");
            0
        }
        Ok(None) => 0,
        Err(mut err) => {
            // The error carries the configuration's version when it has one we understand.
            if let Some(v) = serde_json::from_slice::<Value>(&stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .filter(|v| version_supported(v))
            {
                err.cni_version = v;
            }
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string(&err).unwrap_or_default()
            );
            1
        }
    }
}

/// One invocation, given its environment and stdin. `Ok(None)` means success with no output (DEL, CHECK, GC).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(version_info())),
        "ADD" => {
            let conf = parse_config(stdin)?;
            let result = add(env, &conf)?;
            let rendered = serde_json::to_value(result.for_version(&conf.cni_version))
                .map_err(|e| CniError::new(code::IO_FAILURE, "encoding result").with_details(e))?;
            Ok(Some(rendered))
        }
        "DEL" => {
            let conf = parse_config(stdin)?;
            del(env, &conf)?;
            Ok(None)
        }
        "CHECK" => {
            let conf = parse_config(stdin)?;
            check(env, &conf)?;
            Ok(None)
        }
        "STATUS" => {
            // Ready as soon as the configuration is valid: IPAM state is local files.
            parse_config(stdin)?;
            Ok(None)
        }
        "GC" => {
            let conf = parse_config(stdin)?;
            gc(env, &conf)?;
            Ok(None)
        }
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND: {other}"),
        )),
    }
}

fn store(conf: &NetConf) -> Store {
    let data_dir = conf
        .builtin_ipam
        .as_ref()
        .and_then(|i| i.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(ipam::DEFAULT_DATA_DIR));
    Store::new(&data_dir, &conf.name)
}

/// Execute the delegated IPAM plugin with the same environment (CNI_COMMAND overridden) and stdin, as the
/// spec's "Delegated plugin protocol" says; returns its stdout on success.
fn delegate(env: &Env, conf: &NetConf, command: &str) -> Result<Vec<u8>, CniError> {
    use std::process::{Command, Stdio};
    let kind = conf.delegate_ipam.as_deref().unwrap_or_default();
    let path = env.path.as_deref().unwrap_or_default();
    let binary = std::env::split_paths(path)
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("failed to find IPAM plugin \"{kind}\" in CNI_PATH \"{path}\""),
            )
        })?;
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(code::IO_FAILURE, format!("executing IPAM plugin {kind}")).with_details(e)
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&conf.raw).map_err(|e| {
            CniError::new(code::IO_FAILURE, format!("writing to IPAM plugin {kind}"))
                .with_details(e)
        })?;
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(code::IO_FAILURE, format!("waiting for IPAM plugin {kind}")).with_details(e)
    })?;
    if !out.status.success() {
        // The delegate's own error object is passed through, as chained plugins do.
        return Err(
            serde_json::from_slice::<CniError>(&out.stdout).unwrap_or_else(|_| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("IPAM plugin {kind} failed: {}", out.status),
                )
            }),
        );
    }
    Ok(out.stdout)
}

/// Get an address for the container: (pod IP, gateway).
fn ipam_add(
    env: &Env,
    conf: &NetConf,
    container_id: &str,
    ifname: &str,
) -> Result<(Ipv4Addr, Ipv4Addr), CniError> {
    if let Some(builtin) = &conf.builtin_ipam {
        let range = Range::from_config(builtin)
            .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
        let ip = store(conf)
            .allocate(&range, container_id, ifname)
            .map_err(ipam_err)?;
        return Ok((ip, range.gateway));
    }
    let out = delegate(env, conf, "ADD")?;
    let result: CniResult = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "failed to decode the IPAM plugin's result",
        )
        .with_details(e)
    })?;
    let ip = result.ips.iter().find_map(|ip| match ip.address {
        ipnet::IpNet::V4(net) => Some((net, ip.gateway)),
        ipnet::IpNet::V6(_) => None,
    });
    let Some((net, gateway)) = ip else {
        let _ = delegate(env, conf, "DEL");
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "the IPAM plugin returned no IPv4 address",
        ));
    };
    let gateway = match gateway {
        Some(IpAddr::V4(gw)) => gw,
        _ => Ipv4Addr::from(u32::from(net.network()) + 1),
    };
    Ok((net.addr(), gateway))
}

fn ipam_del(env: &Env, conf: &NetConf, container_id: &str, ifname: &str) -> Result<(), CniError> {
    if conf.builtin_ipam.is_some() {
        store(conf)
            .release(container_id, ifname)
            .map_err(ipam_err)?;
        return Ok(());
    }
    delegate(env, conf, "DEL").map(|_| ())
}

fn ipam_err(e: ipam::IpamError) -> CniError {
    match e {
        ipam::IpamError::Exhausted { .. } => CniError::new(code::NO_ADDRESSES, e.to_string()),
        ipam::IpamError::Config(_) => CniError::new(code::INVALID_CONFIG, e.to_string()),
        ipam::IpamError::Io { .. } => {
            CniError::new(code::IO_FAILURE, "IPAM store failure").with_details(e)
        }
    }
}

fn nl_err(msg: &str) -> impl FnOnce(NlError) -> CniError + '_ {
    move |e| CniError::new(code::NETLINK_FAILURE, msg).with_details(e)
}

fn add(env: &Env, conf: &NetConf) -> Result<CniResult, CniError> {
    let container_id = env
        .require(&env.container_id, "CNI_CONTAINERID")?
        .to_string();
    let netns = env.require(&env.netns, "CNI_NETNS")?.to_string();
    let ifname = env.require(&env.ifname, "CNI_IFNAME")?.to_string();
    if ifname.len() > 15 || ifname.contains('/') {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_IFNAME \"{ifname}\""),
        ));
    }
    if !Path::new(&netns).exists() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("failed to open netns \"{netns}\": no such file"),
        ));
    }
    let (pod_ip, gateway) = ipam_add(env, conf, &container_id, &ifname)?;
    let mtu = conf.mtu.unwrap_or(DEFAULT_MTU);
    let host_name = host_veth_name(&container_id, &ifname);
    match wire(&netns, &ifname, &host_name, pod_ip, gateway, mtu) {
        Ok((host_mac, pod_mac)) => {
            let mut result = CniResult {
                cni_version: conf.cni_version.clone(),
                interfaces: vec![
                    Interface {
                        name: host_name,
                        mac: host_mac,
                        mtu: Some(mtu),
                        sandbox: String::new(),
                    },
                    Interface {
                        name: ifname,
                        mac: pod_mac,
                        mtu: Some(mtu),
                        sandbox: netns,
                    },
                ],
                ips: vec![IpConfig {
                    version: None,
                    address: ipnet::IpNet::V4(ipnet::Ipv4Net::new(pod_ip, 32).map_err(|e| {
                        CniError::new(code::IO_FAILURE, "building address").with_details(e)
                    })?),
                    gateway: Some(IpAddr::V4(gateway)),
                    interface: Some(1),
                }],
                routes: vec![Route {
                    dst: "0.0.0.0/0"
                        .parse()
                        .map_err(|e| CniError::new(code::IO_FAILURE, "route").with_details(e))?,
                    gw: Some(IpAddr::V4(gateway)),
                }],
                dns: Default::default(),
            };
            chain_prev_result(&mut result, conf);
            Ok(result)
        }
        Err(e) => {
            // Undo: nothing of a failed ADD may stay behind (the runtime will not DEL after a failed ADD).
            let _ = delete_host_veth(&host_name);
            let _ = ipam_del(env, conf, &container_id, &ifname);
            Err(e)
        }
    }
}

/// As a chained plugin, keep what earlier plugins reported: their interfaces and IPs come first.
fn chain_prev_result(result: &mut CniResult, conf: &NetConf) {
    let Some(prev) = conf
        .prev_result
        .clone()
        .and_then(|v| serde_json::from_value::<CniResult>(v).ok())
    else {
        return;
    };
    let offset = prev.interfaces.len();
    let mut merged = prev;
    for ip in &mut result.ips {
        ip.interface = ip.interface.map(|i| i + offset);
    }
    merged.interfaces.append(&mut result.interfaces);
    merged.ips.append(&mut result.ips);
    merged.routes.append(&mut result.routes);
    merged.cni_version = result.cni_version.clone();
    *result = merged;
}

/// Create and configure the veth pair; returns (host MAC, pod MAC).
fn wire(
    netns: &str,
    ifname: &str,
    host_name: &str,
    pod_ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<(String, String), CniError> {
    let netns_file = std::fs::File::open(netns).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!("failed to open netns \"{netns}\""),
        )
        .with_details(e)
    })?;
    let (ifname_s, host_s) = (ifname.to_string(), host_name.to_string());
    let host_mac = nl::run_in_netns(None, move |h| async move {
        use std::os::fd::AsRawFd;
        // A host end left by a crashed earlier ADD of the same container would make the add fail forever.
        if let Some(old) = nl::link_by_name(&h, &host_s).await? {
            h.link()
                .del(old.header.index)
                .execute()
                .await
                .map_err(nl::nl("deleting stale host veth"))?;
        }
        // The pod end is created directly inside the pod's namespace under its final name: no rename, no
        // window in which it is visible on the host.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname_s.clone())
            .mtu(mtu)
            .setns_by_fd(netns_file.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host_s.clone())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link()
            .add(veth)
            .execute()
            .await
            .map_err(nl::nl(format!("creating veth {host_s} <-> {ifname_s}")))?;
        let link = nl::link_by_name(&h, &host_s)
            .await?
            .ok_or_else(|| NlError::Other(format!("veth {host_s} vanished after creation")))?;
        let index = link.header.index;
        // The gateway on every host end (as ptp): the pod ARPs for it and the host end answers.
        nl::ensure_address(&h, index, gateway, 32).await?;
        nl::set_up(&h, index).await?;
        nl::replace_route(
            &h,
            &V4Route {
                dst: ipnet::Ipv4Net::new(pod_ip, 32).map_err(|e| NlError::Other(e.to_string()))?,
                gateway: None,
                oif: Some(index),
                onlink: false,
                scope_link: true,
                protocol: nl::PROTO_BOOT,
            },
        )
        .await?;
        // The node routes between pods, overlay and the outside.
        nl::sysctl("net/ipv4/ip_forward", "1")?;
        Ok(link_mac_string(&link))
    })
    .map_err(|e| {
        if e.errno() == Some(libc::EEXIST) {
            CniError::new(
                code::INVALID_ENV,
                format!("interface {ifname} already exists in netns {netns}"),
            )
            .with_details(e)
        } else {
            nl_err("configuring host side")(e)
        }
    })?;

    let ifname_s = ifname.to_string();
    let pod_mac = nl::run_in_netns(Some(PathBuf::from(netns)), move |h| async move {
        let link = nl::link_by_name(&h, &ifname_s)
            .await?
            .ok_or_else(|| NlError::Other(format!("{ifname_s} missing in pod netns")))?;
        let index = link.header.index;
        if let Some(lo) = nl::link_by_name(&h, "lo").await? {
            nl::set_up(&h, lo.header.index).await?;
        }
        nl::ensure_address(&h, index, pod_ip, 32).await?;
        nl::set_up(&h, index).await?;
        nl::replace_route(
            &h,
            &V4Route {
                dst: ipnet::Ipv4Net::new(gateway, 32).map_err(|e| NlError::Other(e.to_string()))?,
                gateway: None,
                oif: Some(index),
                onlink: false,
                scope_link: true,
                protocol: nl::PROTO_BOOT,
            },
        )
        .await?;
        nl::replace_route(
            &h,
            &V4Route {
                dst: ipnet::Ipv4Net::default(),
                gateway: Some(gateway),
                oif: Some(index),
                onlink: false,
                scope_link: false,
                protocol: nl::PROTO_BOOT,
            },
        )
        .await?;
        Ok(link_mac_string(&link))
    })
    .map_err(nl_err("configuring pod side"))?;
    Ok((host_mac, pod_mac))
}

fn link_mac_string(link: &rtnetlink::packet_route::link::LinkMessage) -> String {
    nl::link_mac(link)
        .map(|m| nl::format_mac(&m))
        .unwrap_or_default()
}

fn delete_host_veth(host_name: &str) -> Result<(), NlError> {
    let name = host_name.to_string();
    nl::run_in_netns(None, move |h| async move {
        if let Some(link) = nl::link_by_name(&h, &name).await? {
            match h.link().del(link.header.index).execute().await {
                Ok(()) => {}
                // Deleted concurrently (e.g. the pod netns went away): that is the goal anyway.
                Err(e) if nl::nl("")(e.clone()).errno() == Some(libc::ENODEV) => {}
                Err(e) => return Err(nl::nl(format!("deleting {name}"))(e)),
            }
        }
        Ok(())
    })
}

/// DEL: release the address and remove the veth pair; everything already gone is success.
fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let container_id = env.require(&env.container_id, "CNI_CONTAINERID")?;
    let ifname = env.require(&env.ifname, "CNI_IFNAME")?;
    // Deleting the host end destroys the pod end too, whether or not the pod's netns still exists.
    delete_host_veth(&host_veth_name(container_id, ifname)).map_err(nl_err("deleting veth"))?;
    ipam_del(env, conf, container_id, ifname)
}

/// CHECK: the container's address is allocated, its interface carries it, the host end and route exist.
fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let container_id = env
        .require(&env.container_id, "CNI_CONTAINERID")?
        .to_string();
    let netns = env.require(&env.netns, "CNI_NETNS")?.to_string();
    let ifname = env.require(&env.ifname, "CNI_IFNAME")?.to_string();
    let prev: CniResult = conf
        .prev_result
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK requires prevResult"))
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| {
                CniError::new(code::DECODE_FAILURE, "failed to decode prevResult").with_details(e)
            })
        })?;
    let ip = if conf.builtin_ipam.is_some() {
        store(conf)
            .find(&container_id, &ifname)
            .map_err(ipam_err)?
            .ok_or_else(|| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("unknown container {container_id}"),
                )
            })?
    } else {
        // The delegate checks its own allocation (it gets prevResult too).
        delegate(env, conf, "CHECK")?;
        prev.pod_ipv4()
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "prevResult has no IPv4 address"))?
    };
    if prev.pod_ipv4() != Some(ip) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "prevResult address {:?} differs from the allocated {ip}",
                prev.pod_ipv4()
            ),
        ));
    }
    let host = host_veth_name(&container_id, &ifname);
    let host_ok = nl::run_in_netns(None, move |h| async move {
        let Some(link) = nl::link_by_name(&h, &host).await? else {
            return Ok(Err(format!("host veth {host} is missing")));
        };
        let routes = nl::routes_v4(&h).await?;
        let want = ipnet::Ipv4Net::new(ip, 32).map_err(|e| NlError::Other(e.to_string()))?;
        if !routes
            .iter()
            .any(|(r, _)| r.dst == want && r.oif == Some(link.header.index))
        {
            return Ok(Err(format!("route {want} dev {host} is missing")));
        }
        Ok(Ok(()))
    })
    .map_err(nl_err("checking host side"))?;
    host_ok.map_err(|m| CniError::new(code::IO_FAILURE, m))?;
    if !Path::new(&netns).exists() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("failed to open netns \"{netns}\""),
        ));
    }
    let ifn = ifname.clone();
    let pod_ok = nl::run_in_netns(Some(PathBuf::from(&netns)), move |h| async move {
        let Some(link) = nl::link_by_name(&h, &ifn).await? else {
            return Ok(Err(format!("interface {ifn} is missing in the container")));
        };
        if !nl::addresses(&h, link.header.index)
            .await?
            .contains(&(ip, 32))
        {
            return Ok(Err(format!("interface {ifn} does not carry {ip}/32")));
        }
        Ok(Ok(()))
    })
    .map_err(nl_err("checking pod side"))?;
    pod_ok.map_err(|m| CniError::new(code::IO_FAILURE, m))
}

/// GC (CNI 1.1): release addresses of attachments the runtime no longer knows.
fn gc(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    if conf.delegate_ipam.is_some() {
        return delegate(env, conf, "GC").map(|_| ());
    }
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC requires cni.dev/valid-attachments",
        ));
    };
    let valid: BTreeSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let Some(builtin) = &conf.builtin_ipam else {
        return Ok(());
    };
    let range = Range::from_config(builtin)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    for (ip, id, ifname) in store(conf).gc(range.subnet, &valid).map_err(ipam_err)? {
        // A crash after wiring but before the runtime cached the result leaves the host end too.
        tracing::info!(%ip, container = %id, "GC released a stale attachment");
        delete_host_veth(&host_veth_name(&id, &ifname)).map_err(nl_err("deleting stale veth"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn veth_names_are_stable_and_fit() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert!(a.starts_with("skf"));
    }

    #[test]
    fn env_errors() {
        assert_eq!(env(&[]).unwrap_err().code, code::INVALID_ENV);
        assert_eq!(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_ARGS", "IgnoreUnknown=1;broken")
            ])
            .unwrap_err()
            .msg,
            "invalid CNI_ARGS pair \"broken\""
        );
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
        ])
        .unwrap();
        assert_eq!(e.args[1], ("K8S_POD_NAME".to_string(), "web".to_string()));
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni","ipam":{"subnet":"10.1.0.0/24"}}"#;
        let err = run(
            &env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap(),
            conf,
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (4, "required env variable CNI_CONTAINERID missing")
        );
        let err = run(&env(&[("CNI_COMMAND", "FROB")]).unwrap(), conf).unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (4, "unknown CNI_COMMAND: FROB")
        );
    }

    #[test]
    fn config_errors_have_spec_codes() {
        let code_of = |s: &str| parse_config(s.as_bytes()).unwrap_err().code;
        assert_eq!(code_of("{not json"), code::DECODE_FAILURE);
        assert_eq!(
            code_of(r#"{"cniVersion":"0.2.0","name":"n","type":"skiff-cni"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(
                r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni","ipam":{"subnet":"10.1.0.0/31"}}"#
            ),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(
                r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni","ipam":{"type":"skiff-ipam","subnet":"10.1.0.0/24","bogus":1}}"#
            ),
            code::INVALID_CONFIG
        );
        let delegated = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(delegated.delegate_ipam.as_deref(), Some("host-local"));
        let ok = parse_config(
            br#"{"cniVersion":"0.4.0","name":"n","type":"skiff-cni","mtu":1450,"ipam":{"type":"skiff-ipam","subnet":"10.1.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.mtu, ok.builtin_ipam.as_ref().unwrap().subnet.to_string()),
            (Some(1450), "10.1.0.0/24".to_string())
        );
    }

    #[test]
    fn version_command() {
        let out = run(
            &env(&[("CNI_COMMAND", "VERSION")]).unwrap(),
            b"{\"cniVersion\":\"1.0.0\"}",
        )
        .unwrap();
        assert_eq!(
            out.unwrap().to_string(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
    }
}
