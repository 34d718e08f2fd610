//! Host-local style IPAM: addresses from one IPv4 subnet, each allocation a file named after the address under
//! `<dataDir>/<network>/` holding the container id and interface name (the layout of the reference host-local
//! plugin), all changes under an exclusive `flock` on `<dataDir>/<network>/lock`, so concurrent ADDs in several
//! processes never hand out an address twice, and a restart (of anything) keeps every allocation.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

/// Default directory of allocation files, as host-local's.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// Round-robin position, one file per subnet: nodes sharing a filesystem (the embedded cluster) and a network
/// name keep their own positions.
fn last_reserved_file(subnet: Ipv4Net) -> String {
    format!(
        "last_reserved_ip.{}_{}",
        subnet.network(),
        subnet.prefix_len()
    )
}
const LOCK: &str = "lock";

/// The `ipam` section of the skiff-cni configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConfig {
    /// "skiff-ipam" (or absent): the built-in allocator.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub subnet: Ipv4Net,
    /// Defaults to the first address of the subnet.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub range_start: Option<Ipv4Addr>,
    #[serde(default)]
    pub range_end: Option<Ipv4Addr>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// The pure view of one range: which addresses may be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("subnet {0} is too small: it needs room for a gateway and at least one address")]
    TooSmall(Ipv4Net),
    #[error("{what} {addr} is not inside subnet {subnet}")]
    Outside {
        what: &'static str,
        addr: Ipv4Addr,
        subnet: Ipv4Net,
    },
}

impl Range {
    /// Validate a configuration: the gateway defaults to the subnet's first address, the range excludes the
    /// network and broadcast addresses.
    pub fn from_config(cfg: &IpamConfig) -> Result<Range, RangeError> {
        let subnet = cfg.subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(RangeError::TooSmall(subnet));
        }
        let first = u32::from(subnet.network()) + 1;
        let last = u32::from(subnet.broadcast()) - 1;
        let gateway = cfg.gateway.unwrap_or(Ipv4Addr::from(first));
        let check = |what, addr: Ipv4Addr| {
            let n = u32::from(addr);
            if n < first || n > last {
                Err(RangeError::Outside { what, addr, subnet })
            } else {
                Ok(addr)
            }
        };
        check("gateway", gateway)?;
        let start = check(
            "rangeStart",
            cfg.range_start.unwrap_or(Ipv4Addr::from(first)),
        )?;
        let end = check("rangeEnd", cfg.range_end.unwrap_or(Ipv4Addr::from(last)))?;
        Ok(Range {
            subnet,
            gateway,
            start,
            end,
        })
    }

    /// The next free address after `last` (round robin, as host-local: recently released addresses are
    /// reused last), skipping the gateway and everything in `used`; None when the range is full.
    pub fn next_free(&self, used: &BTreeSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (start, end) = (u32::from(self.start), u32::from(self.end));
        if start > end {
            return None;
        }
        let size = u64::from(end - start) + 1;
        let begin = match last.map(u32::from) {
            Some(l) if l >= start && l < end => l + 1,
            _ => start,
        };
        (0..size)
            .map(|i| Ipv4Addr::from(start + ((u64::from(begin - start) + i) % size) as u32))
            .find(|ip| *ip != self.gateway && !used.contains(ip))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid IPAM configuration: {0}")]
    Config(#[from] RangeError),
    #[error("no IP addresses available in range {start}-{end} of {subnet}")]
    Exhausted {
        subnet: Ipv4Net,
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
    #[error("IPAM store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The on-disk allocation store of one network.
pub struct Store {
    dir: PathBuf,
}

/// An exclusive lock on the store, held until dropped.
struct Locked {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl Store {
    pub fn new(data_dir: &Path, network: &str) -> Store {
        Store {
            dir: data_dir.join(network),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Locked, IpamError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(LOCK);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, errno)| IpamError::Io {
                path: path.clone(),
                source: std::io::Error::from(errno),
            },
        )?;
        Ok(Locked { _lock: lock })
    }

    /// Every allocation: address → (container id, ifname).
    fn allocations(&self) -> Result<Vec<(Ipv4Addr, String, String)>, IpamError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let content = fs::read_to_string(&path).map_err(io_err(&path))?;
            let mut lines = content.lines().map(|l| l.trim().to_string());
            let id = lines.next().unwrap_or_default();
            let ifname = lines.next().unwrap_or_default();
            out.push((ip, id, ifname));
        }
        Ok(out)
    }

    /// The address held by (container id, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        self.find_locked(container_id, ifname)
    }

    fn find_locked(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, id, ifn)| id == container_id && ifn == ifname)
            .map(|(ip, _, _)| ip))
    }

    /// Allocate an address for (container id, ifname); an existing allocation of the same pair is returned
    /// again (an ADD retried after a crash must not leak an address).
    pub fn allocate(
        &self,
        range: &Range,
        container_id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        let _lock = self.lock()?;
        if let Some(ip) = self.find_locked(container_id, ifname)? {
            return Ok(ip);
        }
        let used: BTreeSet<Ipv4Addr> = self
            .allocations()?
            .into_iter()
            .map(|(ip, _, _)| ip)
            .collect();
        let last_path = self.dir.join(last_reserved_file(range.subnet));
        let last = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let ip = range.next_free(&used, last).ok_or(IpamError::Exhausted {
            subnet: range.subnet,
            start: range.start,
            end: range.end,
        })?;
        let path = self.dir.join(ip.to_string());
        // create_new: even a foreign writer that ignores the lock cannot make us hand out its address.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // host-local's format: id, "\r\n", ifname.
        file.write_all(format!("{container_id}\r\n{ifname}").as_bytes())
            .map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        fs::write(&last_path, ip.to_string()).map_err(io_err(&last_path))?;
        Ok(ip)
    }

    /// Release what (container id, ifname) holds; nothing held is not an error (DEL is idempotent).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        let ip = self.find_locked(container_id, ifname)?;
        if let Some(ip) = ip {
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(ip)
    }

    /// Release every allocation inside `subnet` whose (container id, ifname) is not in `valid` (the CNI 1.1
    /// GC command). Addresses of other subnets belong to other nodes sharing this directory and are left alone.
    /// Returns what was released: (address, container id, ifname).
    pub fn gc(
        &self,
        subnet: Ipv4Net,
        valid: &BTreeSet<(String, String)>,
    ) -> Result<Vec<(Ipv4Addr, String, String)>, IpamError> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for (ip, id, ifname) in self.allocations()? {
            if subnet.contains(&ip) && !valid.contains(&(id.clone(), ifname.clone())) {
                let path = self.dir.join(ip.to_string());
                fs::remove_file(&path).map_err(io_err(&path))?;
                released.push((ip, id, ifname));
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(subnet: &str) -> IpamConfig {
        IpamConfig {
            kind: None,
            subnet: subnet.parse().unwrap(),
            gateway: None,
            range_start: None,
            range_end: None,
            data_dir: None,
        }
    }

    #[test]
    fn range_excludes_network_broadcast_and_gateway() {
        let range = Range::from_config(&cfg("10.244.1.0/24")).unwrap();
        assert_eq!(range.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(range.start, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(range.end, Ipv4Addr::new(10, 244, 1, 254));
        assert_eq!(
            range.next_free(&BTreeSet::new(), None),
            Some(Ipv4Addr::new(10, 244, 1, 2))
        );
    }

    #[test]
    fn round_robin_after_last_and_wraps() {
        let range = Range::from_config(&cfg("10.0.0.0/29")).unwrap(); // .1 gw, .2-.6 usable
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 0, 0, 2)].into();
        assert_eq!(
            range.next_free(&used, Some(Ipv4Addr::new(10, 0, 0, 4))),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(
            range.next_free(&used, Some(Ipv4Addr::new(10, 0, 0, 6))),
            Some(Ipv4Addr::new(10, 0, 0, 3))
        );
        let full: BTreeSet<_> = (2..=6).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(range.next_free(&full, None), None);
    }

    #[test]
    fn invalid_ranges() {
        assert_eq!(
            Range::from_config(&cfg("10.0.0.0/31")),
            Err(RangeError::TooSmall("10.0.0.0/31".parse().unwrap()))
        );
        let mut c = cfg("10.0.0.0/24");
        c.gateway = Some(Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(
            Range::from_config(&c).unwrap_err().to_string(),
            "gateway 10.0.1.1 is not inside subnet 10.0.0.0/24"
        );
    }

    #[test]
    fn store_allocates_distinct_persists_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let range = Range::from_config(&cfg("10.0.0.0/29")).unwrap();
        let store = Store::new(dir.path(), "net");
        let a = store.allocate(&range, "ctr-a", "eth0").unwrap();
        let b = store.allocate(&range, "ctr-b", "eth0").unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3))
        );
        // Same pair again: the same address.
        assert_eq!(store.allocate(&range, "ctr-a", "eth0").unwrap(), a);
        assert_eq!(
            fs::read_to_string(dir.path().join("net/10.0.0.2")).unwrap(),
            "ctr-a\r\neth0"
        );
        // A fresh Store (a restart) sees the allocations.
        let again = Store::new(dir.path(), "net");
        assert_eq!(again.find("ctr-b", "eth0").unwrap(), Some(b));
        assert_eq!(again.release("ctr-a", "eth0").unwrap(), Some(a));
        assert_eq!(again.release("ctr-a", "eth0").unwrap(), None);
        // Round robin: the released .2 is not reused before the rest of the range.
        assert_eq!(
            again.allocate(&range, "ctr-c", "eth0").unwrap(),
            Ipv4Addr::new(10, 0, 0, 4)
        );
    }

    #[test]
    fn gc_only_touches_its_own_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "net");
        let node1 = Range::from_config(&cfg("10.0.1.0/24")).unwrap();
        let node2 = Range::from_config(&cfg("10.0.2.0/24")).unwrap();
        let a = store.allocate(&node1, "a", "eth0").unwrap();
        let b = store.allocate(&node1, "b", "eth0").unwrap();
        let c = store.allocate(&node2, "c", "eth0").unwrap();
        let valid: BTreeSet<(String, String)> = [("a".to_string(), "eth0".to_string())].into();
        let released = store.gc(node1.subnet, &valid).unwrap();
        assert_eq!(released, vec![(b, "b".to_string(), "eth0".to_string())]);
        assert_eq!(store.find("a", "eth0").unwrap(), Some(a));
        assert_eq!(store.find("c", "eth0").unwrap(), Some(c));
        // Each subnet keeps its own round-robin position.
        assert_eq!(
            fs::read_to_string(dir.path().join("net/last_reserved_ip.10.0.1.0_24")).unwrap(),
            "10.0.1.3"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("net/last_reserved_ip.10.0.2.0_24")).unwrap(),
            "10.0.2.2"
        );
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let range = Range::from_config(&cfg("10.0.0.0/26")).unwrap();
        let path = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (range, path) = (range.clone(), path.clone());
                std::thread::spawn(move || {
                    (0..7)
                        .map(|i| {
                            Store::new(&path, "net")
                                .allocate(&range, &format!("c{t}-{i}"), "eth0")
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: BTreeSet<_> = all.iter().collect();
        assert_eq!(all.len(), 56);
        assert_eq!(distinct.len(), 56);
    }
}
