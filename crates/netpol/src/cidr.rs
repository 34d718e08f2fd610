//! IPv4 address ranges for `ipBlock`: a CIDR minus its `except` CIDRs, unions of blocks, and their text as
//! nftables interval-set elements. Pure; bad input yields no range (an `ipBlock` that matches nothing).

use std::fmt;
use std::net::Ipv4Addr;

/// An inclusive range of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub first: u32,
    pub last: u32,
}

impl Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.first <= ip && ip <= self.last
    }
}

impl fmt::Display for Range {
    /// A single address, a prefix (`10.0.0.0/8`) when the range is one, else `first-last`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (Ipv4Addr::from(self.first), Ipv4Addr::from(self.last));
        if self.first == self.last {
            return write!(f, "{a}");
        }
        let size = u64::from(self.last - self.first) + 1;
        if size.is_power_of_two() && u64::from(self.first) % size == 0 {
            let len = 32 - size.trailing_zeros();
            return write!(f, "{a}/{len}");
        }
        write!(f, "{a}-{b}")
    }
}

/// Parse `a.b.c.d/len` (a host address inside the prefix is accepted, as Go's ParseCIDR does) into a range.
/// IPv6 and malformed CIDRs give None: the data plane is IPv4 only.
pub fn parse_v4(cidr: &str) -> Option<Range> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let first = u32::from(addr) & mask;
    Some(Range {
        first,
        last: first | !mask,
    })
}

/// Sort and merge overlapping or adjacent ranges (interval sets reject overlaps).
pub fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if prev.last == u32::MAX || r.first <= prev.last + 1 => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// `block` minus every range of `except` (normalized input or not), as sorted disjoint ranges.
pub fn subtract(block: Range, except: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut next = Some(block.first);
    for e in normalize(except.to_vec()) {
        let Some(start) = next else { break };
        if e.last < start || e.first > block.last {
            continue;
        }
        if e.first > start {
            out.push(Range {
                first: start,
                last: e.first - 1,
            });
        }
        next = e.last.checked_add(1).filter(|n| *n <= block.last);
    }
    if let Some(start) = next {
        if start <= block.last {
            out.push(Range {
                first: start,
                last: block.last,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        parse_v4(s).unwrap()
    }

    #[test]
    fn parses_and_prints_prefixes_and_ranges() {
        assert_eq!(r("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(r("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(r("10.0.0.7/32").to_string(), "10.0.0.7");
        assert_eq!(parse_v4("10.0.0.0/33"), None);
        assert_eq!(parse_v4("fd00::/8"), None);
        assert_eq!(parse_v4("10.0.0.0"), None);
        let odd = Range {
            first: u32::from(Ipv4Addr::new(10, 0, 0, 1)),
            last: u32::from(Ipv4Addr::new(10, 0, 0, 6)),
        };
        assert_eq!(odd.to_string(), "10.0.0.1-10.0.0.6");
    }

    #[test]
    fn except_carves_holes() {
        let got = subtract(r("10.0.0.0/24"), &[r("10.0.0.128/25"), r("10.0.0.0/32")]);
        let text: Vec<String> = got.iter().map(|r| r.to_string()).collect();
        assert_eq!(text, ["10.0.0.1-10.0.0.127"]);
        assert!(subtract(r("10.0.0.0/24"), &[r("10.0.0.0/16")]).is_empty());
        let all = subtract(r("0.0.0.0/0"), &[r("255.255.255.255/32")]);
        assert_eq!(all[0].to_string(), "0.0.0.0-255.255.255.254");
        assert_eq!(
            subtract(r("10.0.0.0/8"), &[r("11.0.0.0/8")]),
            vec![r("10.0.0.0/8")]
        );
    }

    #[test]
    fn normalize_merges_overlaps_and_neighbours() {
        let got = normalize(vec![
            r("10.0.1.0/24"),
            r("10.0.0.0/24"),
            r("10.0.0.5/32"),
            r("0.0.0.0/0"),
        ]);
        assert_eq!(got, vec![r("0.0.0.0/0")]);
        let got = normalize(vec![r("10.0.1.0/24"), r("10.0.0.0/24"), r("10.0.3.0/24")]);
        assert_eq!(got, vec![r("10.0.0.0/23"), r("10.0.3.0/24")]);
    }
}
