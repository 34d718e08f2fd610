//! Small netlink helpers over rtnetlink, and running netlink work inside another network namespace.
//!
//! A netlink socket belongs to the network namespace of the thread that opened it, so work in a pod's (or a
//! test node's) namespace runs on a dedicated OS thread that `setns`es first and owns its own single-threaded
//! runtime: no tokio worker ever changes namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl NlError {
    /// The errno of a netlink NACK, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => Some(-msg.raw_code()),
            _ => None,
        }
    }
}

pub fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NlError {
    let context = context.into();
    move |source| NlError::Netlink { context, source }
}

pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NlError {
    let context = context.into();
    move |source| NlError::Io { context, source }
}

/// Run `f` with a netlink handle in the network namespace at `netns` (None: the caller's namespace) on a
/// dedicated thread with its own runtime, and wait for it.
pub fn run_in_netns<T, F, Fut>(netns: Option<PathBuf>, f: F) -> Result<T, NlError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NlError>>,
{
    std::thread::spawn(move || {
        if let Some(path) = &netns {
            enter_netns(path)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("building netlink runtime"))?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(io("opening netlink socket"))?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .map_err(|_| NlError::Other("netlink thread panicked".into()))?
}

/// Open a netlink connection whose socket lives in the network namespace at `netns` (None: the caller's),
/// registered with the current tokio runtime; the caller spawns the returned connection task. The socket is
/// created on a short-lived thread that enters the namespace, so the runtime's threads never switch.
pub fn connect_in(
    netns: Option<&Path>,
) -> Result<
    (
        rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
        Handle,
    ),
    NlError,
> {
    let Some(path) = netns.map(Path::to_path_buf) else {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(io("opening netlink socket"))?;
        return Ok((conn, handle));
    };
    let rt = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        enter_netns(&path)?;
        let _guard = rt.enter();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(io("opening netlink socket"))?;
        Ok((conn, handle))
    })
    .join()
    .map_err(|_| NlError::Other("netlink thread panicked".into()))?
}

/// Move the calling thread into the network namespace at `path`. Only for threads this crate owns.
pub fn enter_netns(path: &Path) -> Result<(), NlError> {
    let file =
        std::fs::File::open(path).map_err(io(format!("opening netns {}", path.display())))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NlError::Io {
        context: format!("setns {}", path.display()),
        source: e.into(),
    })
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NlError> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) => {
            let err = nl(format!("getting link {name}"))(e);
            if err.errno() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

pub fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) if mac.len() == 6 => {
            let mut out = [0u8; 6];
            out.copy_from_slice(mac);
            Some(out)
        }
        _ => None,
    })
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// The IPv4 addresses (with prefix) on link `index`.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NlError> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                _ => None,
            })
        })
        .collect())
}

/// Add `ip/prefix` to link `index` unless it is there already.
pub async fn ensure_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), NlError> {
    if addresses(handle, index).await?.contains(&(ip, prefix)) {
        return Ok(());
    }
    handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
        .map_err(nl(format!("adding address {ip}/{prefix}")))
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<(), NlError> {
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting link {index} up")))
}

/// An IPv4 route of the main table as this crate models it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct V4Route {
    pub dst: ipnet::Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub scope_link: bool,
    /// rtm_protocol: who owns the route (lets a syncer remove only its own routes).
    pub protocol: u8,
}

/// rtm_protocol "boot", what `ip route add` uses.
pub const PROTO_BOOT: u8 = 3;

impl V4Route {
    pub fn message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix_len())
            .protocol(rtnetlink::packet_route::route::RouteProtocol::from(
                self.protocol,
            ));
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.onlink {
            b = b.onlink();
        }
        b = b.scope(if self.scope_link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        });
        b.build()
    }
}

/// Decode a kernel route message into the fields this crate cares about (main table, IPv4 only).
pub fn decode_route(msg: &RouteMessage) -> Option<V4Route> {
    if msg.header.address_family != rtnetlink::packet_route::AddressFamily::Inet {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(msg.header.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != u32::from(libc::RT_TABLE_MAIN) {
        return None;
    }
    Some(V4Route {
        dst: ipnet::Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: msg
            .header
            .flags
            .contains(rtnetlink::packet_route::route::RouteFlags::Onlink),
        scope_link: msg.header.scope == RouteScope::Link,
        protocol: u8::from(msg.header.protocol),
    })
}

pub async fn routes_v4(handle: &Handle) -> Result<Vec<(V4Route, RouteMessage)>, NlError> {
    let msgs: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| decode_route(&m).map(|r| (r, m)))
        .collect())
}

/// Add (or replace) a route.
pub async fn replace_route(handle: &Handle, route: &V4Route) -> Result<(), NlError> {
    handle
        .route()
        .add(route.message())
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding route {route:?}")))
}

/// Write a sysctl (path under /proc/sys, e.g. "net/ipv4/ip_forward") of the calling thread's network namespace.
pub fn sysctl(key: &str, value: &str) -> Result<(), NlError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(io(format!("writing {}", path.display())))
}
