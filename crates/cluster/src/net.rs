//! Kernel side of the embedded cluster: the host bridge, node network namespaces with their veths, host
//! routes, and their removal. Everything through rtnetlink; namespace switches happen only on threads this
//! module creates (never on a tokio worker).

use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::layout::{Layout, NodeLayout};
use crate::Error;

pub const NETNS_DIR: &str = "/run/netns";

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A netlink handle in the calling thread's current network namespace; the connection task runs on the
/// current tokio runtime (the socket stays bound to the namespace it was created in).
pub fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(io_err("opening a netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // The kernel answers ENODEV for a name that does not exist.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, Error> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
        Err(e) => Err(nl(format!("deleting link {name}"))(e)),
    }
}

/// Creates the host bridge with address `.1` of the node network and brings it up.
pub async fn create_bridge(handle: &Handle, layout: &Layout) -> Result<u32, Error> {
    create_named_bridge(
        handle,
        &layout.bridge,
        layout.bridge_ip,
        layout.node_network.prefix_len(),
    )
    .await
}

/// Creates bridge `name` with address `ip/prefix` and brings it up.
pub async fn create_named_bridge(
    handle: &Handle,
    name: &str,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<u32, Error> {
    if link_index(handle, name).await?.is_none() {
        handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(nl(format!("creating bridge {name}")))?;
    }
    let index = link_index(handle, name)
        .await?
        .ok_or_else(|| Error::Other(format!("bridge {name} vanished after creation")))?;
    let addr_res = handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await;
    match addr_res {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(nl(format!("adding {ip} to {name}"))(e)),
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {name} up")))?;
    Ok(index)
}

/// Enslaves a node's host veth end to the bridge and brings it up.
pub async fn attach_to_bridge(handle: &Handle, veth: &str, bridge_index: u32) -> Result<(), Error> {
    let index = link_index(handle, veth)
        .await?
        .ok_or_else(|| Error::Other(format!("veth {veth} not found in the host")))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("attaching {veth} to the bridge")))
}

/// `ip route replace <dst> via <gw>` in the caller's namespace.
pub async fn replace_route(handle: &Handle, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), Error> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .gateway(gw)
        .build();
    handle
        .route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("route {dst} via {gw}")))
}

pub fn write_sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    fs::write(&path, value).map_err(io_err(format!("writing {}", path.display())))
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes /run/netns a shared mount point as iproute2 does, so that a namespace unmounted here is also
/// unmounted in mount namespaces copied from ours (pods'), and thus really freed.
fn prepare_netns_dir() -> Result<(), Error> {
    fs::create_dir_all(NETNS_DIR).map_err(io_err(format!("creating {NETNS_DIR}")))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, NETNS_DIR, None::<&str>, shared, None::<&str>).is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        what: format!("bind-mounting {NETNS_DIR}"),
        source: e.into(),
    })?;
    mount(None::<&str>, NETNS_DIR, None::<&str>, shared, None::<&str>).map_err(|e| Error::Io {
        what: format!("making {NETNS_DIR} shared"),
        source: e.into(),
    })?;
    Ok(())
}

/// Names of the network namespaces under /run/netns that start with `prefix`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Unmounts and removes a named network namespace (the kernel frees it once no process is left in it).
pub fn delete_netns(name: &str) -> Result<(), Error> {
    let path = netns_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::Io {
                what: format!("unmounting {}", path.display()),
                source: e.into(),
            })
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            what: format!("removing {}", path.display()),
            source: e,
        }),
    }
}

/// Creates node `node`'s network namespace and wires it: `lo` up, a veth pair whose `eth0` end stays
/// inside with the node IP and a default route via the bridge, and whose other end is moved to the host
/// namespace (the caller enslaves it to the bridge). Runs on a fresh OS thread because it unshares.
pub fn create_node_netns(layout: &Layout, node: &NodeLayout) -> Result<(), Error> {
    prepare_netns_dir()?;
    let layout = layout.clone();
    let node = node.clone();
    std::thread::Builder::new()
        .name(format!("netns-{}", node.name))
        .spawn(move || node_thread(&layout, &node))
        .map_err(io_err("spawning a thread"))?
        .join()
        .map_err(|_| Error::Other("node namespace thread panicked".into()))?
}

fn node_thread(layout: &Layout, node: &NodeLayout) -> Result<(), Error> {
    let host_ns =
        File::open("/proc/thread-self/ns/net").map_err(io_err("opening the host netns"))?;
    let path = netns_path(&node.netns);
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
        what: "unshare(CLONE_NEWNET)".into(),
        source: e.into(),
    })?;
    mount(
        Some("/proc/thread-self/ns/net"),
        &path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        what: format!("bind-mounting {}", path.display()),
        source: e.into(),
    })?;
    // From here on this thread is inside the node's namespace: /proc/sys/net is the node's.
    write_sysctl("net.ipv4.ip_forward", "1")?;
    // Pod traffic can come back over another interface (overlay, host routes): strict rp_filter drops it.
    write_sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    write_sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("building a runtime"))?;
    rt.block_on(async {
        let handle = connect()?;
        if let Some(lo) = link_index(&handle, "lo").await? {
            handle
                .link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(nl("setting lo up"))?;
        }
        handle
            .link()
            .add(LinkVeth::new("eth0", &node.host_veth).build())
            .execute()
            .await
            .map_err(nl(format!("creating veth eth0/{}", node.host_veth)))?;
        let peer = link_index(&handle, &node.host_veth)
            .await?
            .ok_or_else(|| Error::Other(format!("veth peer {} missing", node.host_veth)))?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer)
                    .setns_by_fd(host_ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("moving {} to the host", node.host_veth)))?;
        let eth0 = link_index(&handle, "eth0")
            .await?
            .ok_or_else(|| Error::Other("eth0 missing".into()))?;
        handle
            .address()
            .add(
                eth0,
                IpAddr::V4(node.ip),
                layout.node_subnet(node).prefix_len(),
            )
            .execute()
            .await
            .map_err(nl(format!("adding {} to eth0", node.ip)))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(nl("setting eth0 up"))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(layout.node_gateway(node))
            .build();
        handle
            .route()
            .add(default)
            .execute()
            .await
            .map_err(nl(format!(
                "default route via {}",
                layout.node_gateway(node)
            )))?;
        Ok(())
    })
}
