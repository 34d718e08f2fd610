//! The pure answer function: `(Snapshot, query) → response`. It cannot fail; every request yields a response
//! message (or a request to forward, which the I/O shell performs).
//!
//! Semantics follow the Kubernetes DNS-Based Service Discovery specification 1.1.0 and, where it is silent,
//! CoreDNS's `kubernetes` plugin (`pods insecure`, default `ttl 5`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::model::{Endpoint, Protocol, Service, ServiceKind, Snapshot};

/// The DNS schema version this server implements (`dns-version.<zone>` TXT).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// Largest UDP payload we advertise in our own EDNS OPT record (the DNS flag day 2020 value).
pub const SERVER_UDP_PAYLOAD: u16 = 1232;

/// CNAME chains inside the zone are followed at most this far (ExternalName → ExternalName → ...).
const MAX_CHASE: usize = 8;

/// What the I/O shell must do with a computed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Send `message` as is.
    None,
    /// The name is outside what we are authoritative for: forward the whole query upstream.
    Query,
    /// The answer ends in a CNAME to a name outside the zone (ExternalName): resolve `target` (same type)
    /// upstream and append its answer records and rcode, as CoreDNS's upstream lookup does.
    Target(Name),
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub message: Message,
    pub forward: Forward,
}

/// Compute the response to `request` from `snapshot`.
pub fn answer(snapshot: &Snapshot, request: &Message) -> Answer {
    let mut resp = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    resp.metadata = Metadata::response_from_request(&request.metadata);
    resp.metadata.recursion_available = true;
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(SERVER_UDP_PAYLOAD);
        ours.set_dnssec_ok(edns.flags().dnssec_ok);
        resp.set_edns(ours);
    }
    let done = |mut resp: Message, code: ResponseCode| {
        resp.metadata.response_code = code;
        Answer {
            message: resp,
            forward: Forward::None,
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return done(resp, ResponseCode::FormErr);
    }
    if request.metadata.op_code != OpCode::Query {
        return done(resp, ResponseCode::NotImp);
    }
    let [query] = request.queries.as_slice() else {
        return done(resp, ResponseCode::FormErr);
    };
    resp.add_query(query.clone());

    let qname = query.name();
    let qtype = query.query_type();
    let lower = qname.to_lowercase();

    if in_zone(snapshot, &lower) {
        if query.query_class() != DNSClass::IN {
            return done(resp, ResponseCode::Refused);
        }
        if !snapshot.synced {
            return done(resp, ResponseCode::ServFail);
        }
        resp.metadata.authoritative = true;
        return zone_answer(snapshot, resp, qname, lower, qtype);
    }
    if query.query_class() == DNSClass::IN && qtype == RecordType::PTR {
        if let Some(ip) = reverse_ip(&lower) {
            let targets = snapshot.ptr_targets(&ip);
            if !targets.is_empty() {
                resp.metadata.authoritative = true;
                for t in targets {
                    if let Ok(name) = Name::from_ascii(&t) {
                        resp.add_answer(Record::from_rdata(
                            qname.clone(),
                            snapshot.ttl,
                            RData::PTR(PTR(name)),
                        ));
                    }
                }
                return done(resp, ResponseCode::NoError);
            }
        }
    }
    // Everything else (including unknown reverse names: CoreDNS's `fallthrough in-addr.arpa ip6.arpa`) goes
    // to the upstream resolvers.
    Answer {
        message: resp,
        forward: Forward::Query,
    }
}

fn in_zone(snapshot: &Snapshot, lower: &Name) -> bool {
    let zl = &snapshot.zone_labels;
    let n = lower.num_labels() as usize;
    if n < zl.len() {
        return false;
    }
    lower
        .iter()
        .skip(n - zl.len())
        .zip(zl.iter())
        .all(|(a, b)| a == &b[..])
}

/// The address named by a full-length `in-addr.arpa` / `ip6.arpa` name.
fn reverse_ip(lower: &Name) -> Option<IpAddr> {
    let net = lower.parse_arpa_name().ok()?;
    match net.addr() {
        IpAddr::V4(a) if net.prefix_len() == 32 => Some(IpAddr::V4(a)),
        IpAddr::V6(a) if net.prefix_len() == 128 => Some(IpAddr::V6(a)),
        _ => None,
    }
}

/// Outcome of looking a name up inside the zone.
enum Lookup {
    /// The name exists; these records (possibly none: NODATA) answer the type.
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name is an alias.
    Cname(Name),
    NxDomain,
}

fn zone_answer(
    snapshot: &Snapshot,
    mut resp: Message,
    qname: &Name,
    qlower: Name,
    qtype: RecordType,
) -> Answer {
    let mut name = qname.clone();
    let mut lower = qlower;
    let mut seen: Vec<Name> = Vec::new();
    loop {
        match lookup(snapshot, &name, &lower, qtype) {
            Lookup::Found {
                answers,
                additionals,
            } => {
                let empty = answers.is_empty() && resp.answers.is_empty();
                resp.add_answers(answers);
                resp.add_additionals(additionals);
                if empty {
                    resp.add_authority(soa_record(snapshot));
                }
                resp.metadata.response_code = ResponseCode::NoError;
                break;
            }
            Lookup::NxDomain => {
                resp.add_authority(soa_record(snapshot));
                resp.metadata.response_code = ResponseCode::NXDomain;
                break;
            }
            Lookup::Cname(target) => {
                resp.add_answer(Record::from_rdata(
                    name.clone(),
                    snapshot.ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                if qtype == RecordType::CNAME {
                    break;
                }
                let target_lower = target.to_lowercase();
                if !in_zone(snapshot, &target_lower) {
                    return Answer {
                        message: resp,
                        forward: Forward::Target(target),
                    };
                }
                if seen.len() >= MAX_CHASE || seen.contains(&target_lower) {
                    // A CNAME loop inside the zone: stop with what we have, as a resolver would.
                    break;
                }
                seen.push(target_lower.clone());
                name = target;
                lower = target_lower;
            }
        }
    }
    Answer {
        message: resp,
        forward: Forward::None,
    }
}

/// `<zone> SOA ns.dns.<zone> hostmaster.<zone> <serial> 7200 1800 86400 <ttl>` as CoreDNS.
pub fn soa_record(snapshot: &Snapshot) -> Record {
    let zone = snapshot.zone.clone();
    let mname = prepend(&zone, &["ns", "dns"]);
    let rname = prepend(&zone, &["hostmaster"]);
    Record::from_rdata(
        zone,
        snapshot.ttl,
        RData::SOA(SOA::new(
            mname,
            rname,
            snapshot.serial,
            7200,
            1800,
            86400,
            snapshot.ttl,
        )),
    )
}

/// `labels` (leftmost first) prepended to `base`.
fn prepend(base: &Name, labels: &[&str]) -> Name {
    let mut name = base.clone();
    for l in labels.iter().rev() {
        name = match name.prepend_label(*l) {
            Ok(n) => n,
            Err(_) => return base.clone(),
        };
    }
    name
}

fn service_name(snapshot: &Snapshot, svc: &Service) -> Name {
    prepend(&snapshot.zone, &[&svc.name, &svc.namespace, "svc"])
}

fn endpoint_name(snapshot: &Snapshot, svc: &Service, ep: &Endpoint) -> Name {
    prepend(
        &snapshot.zone,
        &[&ep.label(), &svc.name, &svc.namespace, "svc"],
    )
}

fn addr_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(a) => Record::from_rdata(owner.clone(), ttl, RData::A(A(a))),
        IpAddr::V6(a) => Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(a))),
    }
}

fn family_matches(ip: &IpAddr, qtype: RecordType) -> bool {
    matches!(
        (ip, qtype),
        (IpAddr::V4(_), RecordType::A) | (IpAddr::V6(_), RecordType::AAAA)
    )
}

fn nodata() -> Lookup {
    Lookup::Found {
        answers: Vec::new(),
        additionals: Vec::new(),
    }
}

fn label_str(l: &[u8]) -> Option<&str> {
    std::str::from_utf8(l).ok()
}

/// `name` as asked (owner of answers), `lower` the same lower-cased (what is matched).
fn lookup(snapshot: &Snapshot, name: &Name, lower: &Name, qtype: RecordType) -> Lookup {
    let n = lower.num_labels() as usize;
    let rel_len = n - snapshot.zone_labels.len().min(n);
    // Labels below the zone, rightmost first ("svc", "<ns>", "<svc>", ...).
    let mut rel: Vec<&str> = Vec::with_capacity(rel_len);
    for l in lower.iter().take(rel_len) {
        match label_str(l) {
            Some(s) => rel.push(s),
            None => return Lookup::NxDomain,
        }
    }
    rel.reverse();
    let ttl = snapshot.ttl;
    match rel.as_slice() {
        [] => match qtype {
            RecordType::SOA => Lookup::Found {
                answers: vec![soa_record(snapshot)],
                additionals: Vec::new(),
            },
            RecordType::NS => {
                let ns_name = prepend(&snapshot.zone, &["ns", "dns"]);
                Lookup::Found {
                    answers: vec![Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::NS(NS(ns_name.clone())),
                    )],
                    additionals: snapshot
                        .dns_ips
                        .iter()
                        .map(|ip| addr_record(&ns_name, ttl, *ip))
                        .collect(),
                }
            }
            _ => nodata(),
        },
        ["dns-version"] => match qtype {
            RecordType::TXT => Lookup::Found {
                answers: vec![Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
                )],
                additionals: Vec::new(),
            },
            _ => nodata(),
        },
        ["dns"] => nodata(),
        ["dns", "ns"] => Lookup::Found {
            answers: snapshot
                .dns_ips
                .iter()
                .filter(|ip| family_matches(ip, qtype))
                .map(|ip| addr_record(name, ttl, *ip))
                .collect(),
            additionals: Vec::new(),
        },
        ["svc"] | ["pod"] => nodata(),
        ["svc", ns] | ["pod", ns] => {
            if snapshot.namespace_exists(ns) {
                nodata()
            } else {
                Lookup::NxDomain
            }
        }
        ["pod", ns, ip] => pod_lookup(snapshot, name, ns, ip, qtype),
        ["svc", ns, svc] => match snapshot.service(ns, svc) {
            None => Lookup::NxDomain,
            Some(svc) => service_lookup(snapshot, name, svc, qtype, None),
        },
        ["svc", ns, svc, endpoint] => match snapshot.service(ns, svc) {
            None => Lookup::NxDomain,
            Some(svc) => endpoint_lookup(snapshot, name, svc, endpoint, qtype),
        },
        ["svc", ns, svc, proto, port] => {
            let (Some(proto), Some(port)) = (proto.strip_prefix('_'), port.strip_prefix('_'))
            else {
                return Lookup::NxDomain;
            };
            let Some(proto) = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .find(|p| p.label() == proto)
            else {
                return Lookup::NxDomain;
            };
            match snapshot.service(ns, svc) {
                None => Lookup::NxDomain,
                Some(svc) => service_lookup(snapshot, name, svc, qtype, Some((port, proto))),
            }
        }
        _ => Lookup::NxDomain,
    }
}

/// `a-b-c-d.<ns>.pod.<zone>` (CoreDNS `pods insecure`: any well-formed address in an existing namespace).
fn pod_lookup(
    snapshot: &Snapshot,
    name: &Name,
    ns: &str,
    label: &str,
    qtype: RecordType,
) -> Lookup {
    if !snapshot.namespace_exists(ns) {
        return Lookup::NxDomain;
    }
    let ip = match Ipv4Addr::from_str(&label.replace('-', "."))
        .map(IpAddr::V4)
        .or_else(|_| Ipv6Addr::from_str(&label.replace('-', ":")).map(IpAddr::V6))
    {
        Ok(ip) => ip,
        Err(_) => return Lookup::NxDomain,
    };
    Lookup::Found {
        answers: if family_matches(&ip, qtype) {
            vec![addr_record(name, snapshot.ttl, ip)]
        } else {
            Vec::new()
        },
        additionals: Vec::new(),
    }
}

/// SRV weights as CoreDNS: records of equal priority share 100 (floored).
fn srv_weight(count: usize) -> u16 {
    if count == 0 {
        return 100;
    }
    (100 / count) as u16
}

fn service_lookup(
    snapshot: &Snapshot,
    name: &Name,
    svc: &Service,
    qtype: RecordType,
    port_filter: Option<(&str, Protocol)>,
) -> Lookup {
    let ttl = snapshot.ttl;
    let port_ok = |p: &crate::model::Port| match port_filter {
        None => true,
        Some((pname, proto)) => !p.name.is_empty() && &*p.name == pname && p.protocol == proto,
    };
    match &svc.kind {
        ServiceKind::ExternalName(target) => {
            if port_filter.is_some() {
                return Lookup::NxDomain;
            }
            match Name::from_ascii(target.as_ref()) {
                Ok(mut t) => {
                    t.set_fqdn(true);
                    Lookup::Cname(t)
                }
                Err(_) => Lookup::NxDomain,
            }
        }
        ServiceKind::ClusterIp(ips) => {
            let ports: Vec<_> = svc.ports.iter().filter(|p| port_ok(p)).collect();
            if port_filter.is_some() && ports.is_empty() {
                return Lookup::NxDomain;
            }
            let target = service_name(snapshot, svc);
            match qtype {
                RecordType::A | RecordType::AAAA => Lookup::Found {
                    answers: ips
                        .iter()
                        .filter(|ip| family_matches(ip, qtype))
                        .map(|ip| addr_record(name, ttl, *ip))
                        .collect(),
                    additionals: Vec::new(),
                },
                RecordType::SRV => {
                    let weight = srv_weight(ports.len());
                    Lookup::Found {
                        answers: ports
                            .iter()
                            .map(|p| {
                                Record::from_rdata(
                                    name.clone(),
                                    ttl,
                                    RData::SRV(SRV::new(0, weight, p.port, target.clone())),
                                )
                            })
                            .collect(),
                        additionals: if ports.is_empty() {
                            Vec::new()
                        } else {
                            ips.iter()
                                .map(|ip| addr_record(&target, ttl, *ip))
                                .collect()
                        },
                    }
                }
                _ => nodata(),
            }
        }
        ServiceKind::Headless => {
            // (endpoint, port) pairs that match.
            let mut pairs: Vec<(&Endpoint, u16)> = Vec::new();
            for ep in &svc.endpoints {
                for p in ep.ports.iter().filter(|p| port_ok(p)) {
                    pairs.push((ep, p.port));
                }
            }
            if svc.endpoints.is_empty() || (port_filter.is_some() && pairs.is_empty()) {
                return Lookup::NxDomain;
            }
            match qtype {
                RecordType::A | RecordType::AAAA => Lookup::Found {
                    answers: svc
                        .endpoints
                        .iter()
                        .filter(|ep| {
                            family_matches(&ep.ip, qtype)
                                && (port_filter.is_none()
                                    || pairs.iter().any(|(e, _)| e.ip == ep.ip))
                        })
                        .map(|ep| addr_record(name, ttl, ep.ip))
                        .collect(),
                    additionals: Vec::new(),
                },
                RecordType::SRV => {
                    let weight = srv_weight(pairs.len());
                    let mut answers = Vec::new();
                    let mut additionals: Vec<Record> = Vec::new();
                    for (ep, port) in &pairs {
                        let target = endpoint_name(snapshot, svc, ep);
                        answers.push(Record::from_rdata(
                            name.clone(),
                            ttl,
                            RData::SRV(SRV::new(0, weight, *port, target.clone())),
                        ));
                        let glue = addr_record(&target, ttl, ep.ip);
                        if !additionals.contains(&glue) {
                            additionals.push(glue);
                        }
                    }
                    Lookup::Found {
                        answers,
                        additionals,
                    }
                }
                _ => nodata(),
            }
        }
    }
}

fn endpoint_lookup(
    snapshot: &Snapshot,
    name: &Name,
    svc: &Service,
    label: &str,
    qtype: RecordType,
) -> Lookup {
    if matches!(svc.kind, ServiceKind::ExternalName(_)) {
        return Lookup::NxDomain;
    }
    let matching: Vec<&Endpoint> = svc
        .endpoints
        .iter()
        .filter(|ep| ep.label() == label)
        .collect();
    if matching.is_empty() {
        return Lookup::NxDomain;
    }
    Lookup::Found {
        answers: matching
            .iter()
            .filter(|ep| family_matches(&ep.ip, qtype))
            .map(|ep| addr_record(name, snapshot.ttl, ep.ip))
            .collect(),
        additionals: Vec::new(),
    }
}

/// A query message for `name`/`qtype` (used by the forwarder for ExternalName targets and by tests).
pub fn query_message(id: u16, name: Name, qtype: RecordType) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, qtype));
    m
}
