//! Wire-format edges (pure): decoding requests defensively and encoding responses within a size limit.

use hickory_proto::op::{Message, ResponseCode};

/// What to do with a received datagram / TCP frame.
#[derive(Debug)]
pub enum Parsed {
    Query(Box<Message>),
    /// Undecodable but with a query header: answer this FORMERR.
    Reply(Vec<u8>),
    /// Too short, or a response (never answer responses: that is how reflection loops start).
    Drop,
}

pub fn parse_request(bytes: &[u8]) -> Parsed {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Parsed::Drop;
    }
    match Message::from_vec(bytes) {
        Ok(m) => Parsed::Query(Box::new(m)),
        Err(_) => Parsed::Reply(header_only_reply(bytes, ResponseCode::FormErr)),
    }
}

/// A 12-byte response header echoing `request`'s id, opcode and RD, with `rcode` and no sections.
pub fn header_only_reply(request: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let id = [
        request.first().copied().unwrap_or(0),
        request.get(1).copied().unwrap_or(0),
    ];
    let flags = request.get(2).copied().unwrap_or(0);
    // QR=1, opcode and RD copied.
    let b2 = 0x80 | (flags & 0x78) | (flags & 0x01);
    let b3 = 0x80 | (u16::from(rcode) as u8 & 0x0f); // RA=1
    vec![id[0], id[1], b2, b3, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// The UDP payload limit a request allows: its EDNS size (at least 512), else 512.
pub fn udp_limit(request: &Message) -> usize {
    match &request.edns {
        Some(e) => usize::from(e.max_payload()).max(512),
        None => 512,
    }
}

/// Encode `message`; if it exceeds `limit`, send the question (and OPT) only with TC set, so the client
/// retries over TCP.
pub fn encode(message: &Message, limit: usize) -> Vec<u8> {
    match message.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => match message.truncate().to_vec() {
            Ok(bytes) => bytes,
            Err(_) => servfail_for(message),
        },
        Err(_) => servfail_for(message),
    }
}

fn servfail_for(message: &Message) -> Vec<u8> {
    let mut m = Message::response(message.metadata.id, message.metadata.op_code);
    m.metadata.recursion_desired = message.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = ResponseCode::ServFail;
    m.to_vec().unwrap_or_default()
}
