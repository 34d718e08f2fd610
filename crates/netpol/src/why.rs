//! `skiff netpol why`: the verdict for one connection and the policies and rules behind it, computed by the
//! same model the data plane is rendered from (built for all pods of the cluster).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::{Decision, Direction, Model, Protocol};

/// `PORT[/PROTO]` (protocol case-insensitive, TCP when absent).
pub fn parse_port(s: &str) -> Result<(u16, Protocol), String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, Some(proto.to_ascii_uppercase())),
        None => (s, None),
    };
    let port: u16 =
        port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            format!("invalid port {port:?}: must be a number between 1 and 65535")
        })?;
    let protocol = Protocol::parse(proto.as_deref()).ok_or_else(|| {
        format!(
            "invalid protocol {:?}: must be TCP, UDP or SCTP",
            proto.unwrap_or_default()
        )
    })?;
    Ok((port, protocol))
}

fn name(model: &Model, ip: Ipv4Addr) -> String {
    match model.pod_names.get(&ip) {
        Some(n) => format!("{n} ({ip})"),
        None => ip.to_string(),
    }
}

fn describe(model: &Model, d: Direction, end: &str, decision: &Decision, out: &mut String) {
    let dir = d.as_str();
    let keys = |v: &[usize]| {
        v.iter()
            .map(|&i| model.policies[i].key())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ =
        match decision {
            Decision::NotIsolated => {
                writeln!(
            out,
            "  {dir} of {end}: not isolated (no NetworkPolicy with policyType {} selects it)",
            if d == Direction::Ingress { "Ingress" } else { "Egress" }
        )
            }
            Decision::Allowed { policy, rule } => writeln!(
                out,
                "  {dir} of {end}: allowed by {} ({dir}[{rule}])",
                model.policies[*policy].key()
            ),
            Decision::Denied { isolating } => writeln!(
                out,
                "  {dir} of {end}: denied: isolated by {} and no rule of them admits it",
                keys(isolating)
            ),
        };
}

/// A person-readable verdict: first line `FROM → TO PROTO/PORT: ALLOWED|DENIED`, then one line per direction.
pub fn explain(
    model: &Model,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: Protocol,
    port: u16,
) -> String {
    let v = model.evaluate(src, dst, protocol, port);
    let (from, to) = (name(model, src), name(model, dst));
    let mut out = format!(
        "{from} → {to} {protocol}/{port}: {}\n",
        if v.allowed() { "ALLOWED" } else { "DENIED" }
    );
    describe(model, Direction::Egress, &from, &v.egress, &mut out);
    describe(model, Direction::Ingress, &to, &v.ingress, &mut out);
    if src == dst {
        out.push_str("  note: a pod reaching its own address never leaves its network namespace, so nothing polices it; through a Service (hairpin) the verdict above applies\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_upstream_spells_them() {
        assert_eq!(parse_port("80"), Ok((80, Protocol::Tcp)));
        assert_eq!(parse_port("53/udp"), Ok((53, Protocol::Udp)));
        assert_eq!(parse_port("9/SCTP"), Ok((9, Protocol::Sctp)));
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").is_err());
        assert!(parse_port("80/icmp")
            .unwrap_err()
            .contains("TCP, UDP or SCTP"));
    }
}
