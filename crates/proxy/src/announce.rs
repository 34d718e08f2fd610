//! LoadBalancer addresses on the node network, as MetalLB's L2 mode: the node named in the Service's
//! `skiff.dev/loadbalancer-node` annotation adds the address as a /32 on its uplink (the interface holding the
//! node IP), so the kernel answers ARP for it; the address is removed when no longer assigned here.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::apply::Runner;

pub struct Announcer {
    runner: Runner,
    node_ip: IpAddr,
    current: BTreeSet<IpAddr>,
}

/// The interface carrying `ip` in `ip -o addr show` output.
pub fn interface_of(ip_o_addr: &str, ip: IpAddr) -> Option<String> {
    for line in ip_o_addr.lines() {
        let mut f = line.split_whitespace();
        let (_, Some(dev), Some(_family), Some(addr)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if addr
            .split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
            == Some(ip)
        {
            return Some(
                dev.trim_end_matches(':')
                    .split('@')
                    .next()
                    .unwrap_or(dev)
                    .to_string(),
            );
        }
    }
    None
}

impl Announcer {
    pub fn new(runner: Runner, node_ip: IpAddr) -> Announcer {
        Announcer {
            runner,
            node_ip,
            current: BTreeSet::new(),
        }
    }

    /// Make the announced addresses equal `wanted`. Failures are logged and retried on the next call.
    pub async fn reconcile(&mut self, wanted: &[IpAddr]) {
        let wanted: BTreeSet<IpAddr> = wanted.iter().copied().collect();
        if wanted == self.current {
            return;
        }
        let dev = match self.runner.ip(&["-o", "addr", "show"]).await {
            Ok(out) => interface_of(&out, self.node_ip),
            Err(e) => {
                tracing::warn!(error = %e, "listing addresses");
                return;
            }
        };
        let Some(dev) = dev else {
            tracing::warn!(node_ip = %self.node_ip, "no interface holds the node IP; cannot announce LoadBalancer addresses");
            return;
        };
        for ip in self
            .current
            .difference(&wanted)
            .copied()
            .collect::<Vec<_>>()
        {
            let cidr = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
            match self.runner.ip(&["addr", "del", &cidr, "dev", &dev]).await {
                Ok(_) => {
                    self.current.remove(&ip);
                    tracing::info!(%ip, %dev, "LoadBalancer address withdrawn");
                }
                Err(e) => tracing::warn!(%ip, error = %e, "removing LoadBalancer address"),
            }
        }
        for ip in wanted
            .difference(&self.current)
            .copied()
            .collect::<Vec<_>>()
        {
            let cidr = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
            match self
                .runner
                .ip(&["addr", "replace", &cidr, "dev", &dev])
                .await
            {
                Ok(_) => {
                    self.current.insert(ip);
                    tracing::info!(%ip, %dev, "LoadBalancer address announced");
                }
                Err(e) => tracing::warn!(%ip, error = %e, "adding LoadBalancer address"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_uplink_of_node_ip() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet 172.30.0.2/24 brd 172.30.0.255 scope global eth0\\       valid_lft forever\n";
        assert_eq!(
            interface_of(out, "172.30.0.2".parse().unwrap()).as_deref(),
            Some("eth0")
        );
        assert_eq!(interface_of(out, "172.30.0.9".parse().unwrap()), None);
    }
}
