//! Endpoint moves straight over netlink: a `Diff` that only changes elements and dispatch chains
//! (`Diff::moves_endpoints_only`) encoded as one nf_tables batch, the same kernel transaction `nft -f` would
//! send for its script. Spawning `nft` costs ~25 ms per run (start-up and its cache dump of the whole table), far
//! above the kernel's own work (< 1 ms for element updates), so the hot path of an endpoint change skips it.
//! Anything else (new or deleted services, affinity, full syncs) still goes through `nft -f`.
//!
//! `encode` is pure (unit-tested byte layouts; the kernel tests compare `nft list` after a netlink batch with the
//! same change applied by `nft -f`); `apply` does the socket I/O.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;

use crate::model::Protocol;
use crate::nft::{
    Diff, Dispatch, Element, SetName, MAP_NO_ENDPOINT_NODEPORTS, MAP_NO_ENDPOINT_SERVICES,
    MAP_SERVICE_IPS, MAP_SERVICE_NODEPORTS, SET_CLUSTER_IPS,
};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot encode for netlink: {0}")]
    Encode(String),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("nf_tables rejected message {index} of the batch: {source}")]
    Kernel {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

// linux/netfilter/nfnetlink.h, nf_tables.h (values are ABI).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_IPV4: u8 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_REG_1: u32 = 1;
/// The second 32-bit word of register 1, where the port of an `ip . port` value lands.
const NFT_REG32_01: u32 = 9;
const NF_DROP: i32 = 0;
const NFT_GOTO: i32 = -4;

/// Largest batch sent in one `send` (kept well inside the default socket buffer); bigger moves use `nft -f`.
pub const MAX_BATCH_BYTES: usize = 128 * 1024;

/// An encoded batch and the number of acknowledgements the kernel will send for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub messages: usize,
}

struct Writer {
    buf: Vec<u8>,
    seq: u32,
    messages: usize,
}

impl Writer {
    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Starts a message; returns its offset for `end_msg`.
    fn begin_msg(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched at the end
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.seq += 1;
        // struct nfgenmsg
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    fn end_msg(&mut self, at: usize) {
        self.align();
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// An nf_tables operation (acknowledged).
    fn op(&mut self, op: u16, extra_flags: u16) -> usize {
        self.messages += 1;
        self.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | op,
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
            NFPROTO_IPV4,
            0,
        )
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.align();
    }

    fn attr_str(&mut self, kind: u16, s: &str) {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(kind, &b);
    }

    fn attr_be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Writer)) {
        let elem = self.nest(NFTA_LIST_ELEM);
        self.attr_str(NFTA_EXPR_NAME, name);
        let data = self.nest(NFTA_EXPR_DATA);
        body(self);
        self.end_nest(data);
        self.end_nest(elem);
    }
}

fn bad(what: &str, text: &str) -> NetlinkError {
    NetlinkError::Encode(format!("{what} {text:?}"))
}

fn ip(text: &str) -> Result<[u8; 4], NetlinkError> {
    text.trim()
        .parse::<Ipv4Addr>()
        .map(|a| a.octets())
        .map_err(|_| bad("IPv4 address", text))
}

fn proto(text: &str) -> Result<[u8; 4], NetlinkError> {
    let p = match text.trim() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return Err(bad("protocol", text)),
    };
    Ok([protocol_number(p), 0, 0, 0])
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn port(text: &str) -> Result<[u8; 4], NetlinkError> {
    let p: u16 = text.trim().parse().map_err(|_| bad("port", text))?;
    let b = p.to_be_bytes();
    Ok([b[0], b[1], 0, 0])
}

/// Parses one field of a concatenation into its 32-bit register slot.
type FieldParser = fn(&str) -> Result<[u8; 4], NetlinkError>;

/// Concatenations: each field padded to 32 bits, as the kernel lays out registers.
fn concat<const N: usize>(text: &str, fields: [FieldParser; N]) -> Result<Vec<u8>, NetlinkError> {
    let parts: Vec<&str> = text.split(" . ").collect();
    if parts.len() != N {
        return Err(bad("key", text));
    }
    let mut out = Vec::with_capacity(4 * N);
    for (part, field) in parts.iter().zip(fields) {
        out.extend_from_slice(&field(part)?);
    }
    Ok(out)
}

/// The key bytes of an element, by the type of its set.
fn key_bytes(e: &Element) -> Result<Vec<u8>, NetlinkError> {
    match e.set {
        SetName::Endpoints(_) => {
            // `numgen` writes a host-order u32 into the register.
            let k: u32 = e.key.trim().parse().map_err(|_| bad("index", &e.key))?;
            Ok(k.to_ne_bytes().to_vec())
        }
        SetName::Shared(SET_CLUSTER_IPS) => Ok(ip(&e.key)?.to_vec()),
        SetName::Shared(MAP_SERVICE_IPS) | SetName::Shared(MAP_NO_ENDPOINT_SERVICES) => {
            concat(&e.key, [ip, proto, port])
        }
        SetName::Shared(MAP_SERVICE_NODEPORTS) | SetName::Shared(MAP_NO_ENDPOINT_NODEPORTS) => {
            concat(&e.key, [proto, port])
        }
        SetName::Shared(other) => Err(bad("set", other)),
    }
}

fn write_data(w: &mut Writer, e: &Element, data: &str) -> Result<(), NetlinkError> {
    let outer = w.nest(NFTA_SET_ELEM_DATA);
    if let SetName::Endpoints(_) = e.set {
        let v = concat(data, [ip, port])?;
        w.attr(NFTA_DATA_VALUE, &v);
    } else {
        let verdict = w.nest(NFTA_DATA_VERDICT);
        match data.split_once(' ') {
            Some(("goto", chain)) => {
                w.attr_be32(NFTA_VERDICT_CODE, NFT_GOTO as u32);
                w.attr_str(NFTA_VERDICT_CHAIN, chain.trim());
            }
            None if data == "drop" => w.attr_be32(NFTA_VERDICT_CODE, NF_DROP as u32),
            _ => return Err(bad("verdict", data)),
        }
        w.end_nest(verdict);
    }
    w.end_nest(outer);
    Ok(())
}

fn write_elements(
    w: &mut Writer,
    table: &str,
    op: u16,
    elements: &[Element],
) -> Result<(), NetlinkError> {
    let mut sets: Vec<SetName> = elements.iter().map(|e| e.set).collect();
    sets.sort();
    sets.dedup();
    for set in sets {
        let of_set: Vec<&Element> = elements.iter().filter(|e| e.set == set).collect();
        for chunk in of_set.chunks(1000) {
            let flags = if op == NFT_MSG_NEWSETELEM {
                NLM_F_CREATE
            } else {
                0
            };
            let msg = w.op(op, flags);
            w.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            w.attr_str(NFTA_SET_ELEM_LIST_SET, &set.to_string());
            let list = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in chunk {
                let elem = w.nest(NFTA_LIST_ELEM);
                let key = w.nest(NFTA_SET_ELEM_KEY);
                w.attr(NFTA_DATA_VALUE, &key_bytes(e)?);
                w.end_nest(key);
                if let (NFT_MSG_NEWSETELEM, Some(data)) = (op, &e.data) {
                    write_data(w, e, data)?;
                }
                w.end_nest(elem);
            }
            w.end_nest(list);
            w.end_msg(msg);
        }
    }
    Ok(())
}

/// `meta l4proto P dnat ip to numgen random mod N offset K map @endpoints-S`, expression by expression as
/// nft itself emits it (so `nft list` shows the same rule).
fn write_dispatch_rule(w: &mut Writer, table: &str, chain: &str, d: &Dispatch) {
    let msg = w.op(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
    w.attr_str(NFTA_RULE_TABLE, table);
    w.attr_str(NFTA_RULE_CHAIN, chain);
    let exprs = w.nest(NFTA_RULE_EXPRESSIONS);
    w.expr("meta", |w| {
        w.attr_be32(2, 16); // NFTA_META_KEY = NFT_META_L4PROTO
        w.attr_be32(1, NFT_REG_1); // NFTA_META_DREG
    });
    w.expr("cmp", |w| {
        w.attr_be32(1, NFT_REG_1); // NFTA_CMP_SREG
        w.attr_be32(2, 0); // NFTA_CMP_OP = NFT_CMP_EQ
        let data = w.nest(3); // NFTA_CMP_DATA
        w.attr(NFTA_DATA_VALUE, &[protocol_number(d.protocol)]);
        w.end_nest(data);
    });
    w.expr("numgen", |w| {
        w.attr_be32(1, NFT_REG_1); // NFTA_NG_DREG
        w.attr_be32(2, d.modulus); // NFTA_NG_MODULUS
        w.attr_be32(3, 1); // NFTA_NG_TYPE = NFT_NG_RANDOM
        w.attr_be32(4, d.offset); // NFTA_NG_OFFSET
    });
    w.expr("lookup", |w| {
        w.attr_str(1, &SetName::Endpoints(d.shard).to_string()); // NFTA_LOOKUP_SET
        w.attr_be32(2, NFT_REG_1); // NFTA_LOOKUP_SREG
        w.attr_be32(3, NFT_REG_1); // NFTA_LOOKUP_DREG
    });
    w.expr("nat", |w| {
        w.attr_be32(1, 1); // NFTA_NAT_TYPE = NFT_NAT_DNAT
        w.attr_be32(2, NFPROTO_IPV4 as u32); // NFTA_NAT_FAMILY
        w.attr_be32(3, NFT_REG_1); // NFTA_NAT_REG_ADDR_MIN
        w.attr_be32(5, NFT_REG32_01); // NFTA_NAT_REG_PROTO_MIN
    });
    w.end_nest(exprs);
    w.end_msg(msg);
}

/// Encode an endpoint move (`Diff::moves_endpoints_only`) for table `ip <table>`, in the order of
/// `Diff::script`: rewritten dispatch chains, then element deletions, then additions.
pub fn encode(diff: &Diff, table: &str) -> Result<Batch, NetlinkError> {
    if !diff.moves_endpoints_only() {
        return Err(NetlinkError::Encode(
            "the change creates or deletes objects".into(),
        ));
    }
    let mut w = Writer {
        buf: Vec::new(),
        seq: 1,
        messages: 0,
    };
    let begin = w.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
    w.end_msg(begin);
    for c in &diff.changed_chains {
        let Some(d) = &c.dispatch else {
            return Err(bad("chain without dispatch", &c.name));
        };
        // DELRULE with only table and chain deletes every rule of the chain (`flush chain`).
        let msg = w.op(NFT_MSG_DELRULE, 0);
        w.attr_str(NFTA_RULE_TABLE, table);
        w.attr_str(NFTA_RULE_CHAIN, &c.name);
        w.end_msg(msg);
        write_dispatch_rule(&mut w, table, &c.name, d);
    }
    write_elements(&mut w, table, NFT_MSG_DELSETELEM, &diff.deleted_elements)?;
    write_elements(&mut w, table, NFT_MSG_NEWSETELEM, &diff.added_elements)?;
    let end = w.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
    w.end_msg(end);
    Ok(Batch {
        bytes: w.buf,
        messages: w.messages,
    })
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace. Keep it: closing one costs the kernel
/// an RCU grace period (measured 6–14 ms), more than the transaction itself.
pub fn open_socket() -> Result<std::os::fd::OwnedFd, NetlinkError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `raw` is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(fd)
}

/// Send a batch on a socket from `open_socket` and wait for every acknowledgement. Blocking; the kernel applies
/// all of it or nothing. After an error the socket may hold unread replies: open a new one.
pub fn apply(fd: &std::os::fd::OwnedFd, batch: &Batch) -> Result<(), NetlinkError> {
    use std::os::fd::AsRawFd;
    // SAFETY: the buffer is valid for its length; netlink sockets take the whole datagram or fail.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            batch.bytes.as_ptr().cast(),
            batch.bytes.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut acked = 0;
    let mut first_error: Option<NetlinkError> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while acked < batch.messages {
        // SAFETY: receiving into our own buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        for (seq, errno) in acks(&buf[..n as usize]) {
            acked += 1;
            if errno != 0 && first_error.is_none() {
                first_error = Some(NetlinkError::Kernel {
                    // Sequence numbers start at 1 with the batch header.
                    index: seq.saturating_sub(2) as usize,
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// (sequence number, errno) of each NLMSG_ERROR message (errno 0: acknowledged) in a received datagram.
fn acks(mut data: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        if len < 16 || len > data.len() {
            break;
        }
        if kind == NLMSG_ERROR && len >= 20 {
            let err = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
            out.push((seq, -err));
        }
        data = &data[(len + 3) & !3..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Chain;

    fn el(set: SetName, key: &str, data: Option<&str>) -> Element {
        Element {
            set,
            key: key.into(),
            data: data.map(String::from),
        }
    }

    #[test]
    fn keys_are_laid_out_as_kernel_registers() {
        let k = key_bytes(&el(
            SetName::Shared(MAP_SERVICE_IPS),
            "10.96.0.10 . udp . 53",
            None,
        ))
        .unwrap();
        assert_eq!(k, [10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0]);
        let k = key_bytes(&el(
            SetName::Shared(MAP_SERVICE_NODEPORTS),
            "sctp . 31399",
            None,
        ))
        .unwrap();
        assert_eq!(k, [132, 0, 0, 0, 0x7a, 0xa7, 0, 0]);
        let k = key_bytes(&el(SetName::Endpoints(3), "320", None)).unwrap();
        assert_eq!(k, 320u32.to_ne_bytes());
        let k = key_bytes(&el(SetName::Shared(SET_CLUSTER_IPS), "10.96.0.1", None)).unwrap();
        assert_eq!(k, [10, 96, 0, 1]);
    }

    #[test]
    fn malformed_element_text_is_an_error_not_a_panic() {
        for (set, key) in [
            (SetName::Shared(MAP_SERVICE_IPS), "10.96.0.10 . tcp"),
            (SetName::Shared(MAP_SERVICE_IPS), "10.96.0.300 . tcp . 80"),
            (SetName::Shared(MAP_SERVICE_NODEPORTS), "icmp . 80"),
            (SetName::Endpoints(0), "-1"),
            (SetName::Shared("unknown"), "1.2.3.4"),
        ] {
            assert!(key_bytes(&el(set, key, None)).is_err(), "{key}");
        }
    }

    #[test]
    fn batch_counts_acknowledged_messages_and_refuses_structural_changes() {
        let chain = Chain {
            name: "svc-a".into(),
            rules: vec!["rule".into()],
            dispatch: Some(Dispatch {
                protocol: Protocol::Tcp,
                modulus: 2,
                offset: 4096,
                shard: 1,
            }),
        };
        let diff = Diff {
            changed_chains: vec![chain.clone()],
            deleted_elements: vec![el(SetName::Endpoints(1), "4097", None)],
            added_elements: vec![
                el(SetName::Endpoints(1), "4097", Some("10.244.1.9 . 8080")),
                el(
                    SetName::Shared(MAP_SERVICE_IPS),
                    "10.96.0.1 . tcp . 80",
                    Some("goto svc-a"),
                ),
            ],
            ..Diff::default()
        };
        let batch = encode(&diff, "t").unwrap();
        // flush + rule, one delete message, one add message per set.
        assert_eq!(batch.messages, 5);
        // Every message length adds up to the whole buffer, 4-byte aligned.
        let mut at = 0;
        let mut count = 0;
        while at < batch.bytes.len() {
            let len = u32::from_ne_bytes(batch.bytes[at..at + 4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            at += len;
            count += 1;
        }
        assert_eq!((at, count), (batch.bytes.len(), 7));
        let structural = Diff {
            new_chains: vec![chain],
            ..Diff::default()
        };
        assert!(encode(&structural, "t").is_err());
    }

    #[test]
    fn acks_parse_errors_and_successes() {
        let mut d = Vec::new();
        for (seq, err) in [(2u32, 0i32), (3, -17)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&err.to_ne_bytes());
            d.extend_from_slice(&[0u8; 16]);
        }
        assert_eq!(acks(&d), vec![(2, 0), (3, 17)]);
    }
}
