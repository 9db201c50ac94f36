//! Port sets: the first rule of a group that applies to a (protocol, port), answered by a
//! binary search; and the reference's PortUnion syntax (`80,443,8000-9000`).

use super::parse::ProtoPort;
use super::Protocol;

/// For one protocol: ports cut into intervals, each with the first rule covering it.
#[derive(Debug, Default)]
struct PortMap {
    /// Interval `i` is `starts[i] ..= starts[i + 1] - 1` (the last runs to 65535).
    starts: Vec<u16>,
    /// The first rule covering interval `i`, or `u32::MAX`.
    first: Vec<u32>,
}

impl PortMap {
    fn build(rules: &[(u32, u16, u16)]) -> PortMap {
        let mut starts: Vec<u16> = vec![0];
        for &(_, lo, hi) in rules {
            starts.push(lo);
            if let Some(next) = hi.checked_add(1) {
                starts.push(next);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let n = starts.len();
        let mut first = vec![u32::MAX; n];
        // `next[i]`: the first interval at or after `i` not yet given a rule (union-find
        // with path halving), so each interval is painted once: O(n log n) in all.
        let mut next: Vec<usize> = (0..=n).collect();
        fn find(next: &mut [usize], mut i: usize) -> usize {
            while next[i] != i {
                next[i] = next[next[i]];
                i = next[i];
            }
            i
        }
        // Rules arrive in ascending order, so the first to paint an interval is its first.
        for &(rule, lo, hi) in rules {
            let from = starts.partition_point(|&s| s < lo);
            let to = starts.partition_point(|&s| s <= hi);
            let mut i = find(&mut next, from);
            while i < to {
                first[i] = rule;
                next[i] = i + 1;
                i = find(&mut next, i + 1);
            }
        }
        PortMap { starts, first }
    }

    fn first(&self, port: u16) -> u32 {
        let i = self.starts.partition_point(|&s| s <= port);
        i.checked_sub(1)
            .and_then(|i| self.first.get(i))
            .copied()
            .unwrap_or(u32::MAX)
    }
}

/// A group of rules (in ascending order) asked "which is the first that applies to this
/// protocol and port?" in O(log n).
#[derive(Debug, Default)]
pub struct PortIndex {
    tcp: PortMap,
    udp: PortMap,
}

impl PortIndex {
    /// Builds from `(rule, filter)` pairs in ascending rule order.
    pub fn build(rules: &[(u32, ProtoPort)]) -> PortIndex {
        let of = |tcp: bool| -> Vec<(u32, u16, u16)> {
            rules
                .iter()
                .filter(|(_, pp)| if tcp { pp.tcp } else { pp.udp })
                .map(|&(r, pp)| (r, pp.lo, pp.hi))
                .collect()
        };
        PortIndex {
            tcp: PortMap::build(&of(true)),
            udp: PortMap::build(&of(false)),
        }
    }

    /// The first rule applying to `proto`/`port`, or `u32::MAX`.
    pub fn first(&self, proto: Protocol, port: u16) -> u32 {
        match proto {
            Protocol::Tcp => self.tcp.first(port),
            Protocol::Udp => self.udp.first(port),
        }
    }
}

/// A set of ports in the reference's PortUnion syntax: comma-separated `N` or `A-B` items
/// (a reversed range is swapped), or `all` / `*` for every port. Kept sorted and merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortUnion(Vec<(u16, u16)>);

impl PortUnion {
    /// Parses the syntax; `None` for anything else (spaces, empty items, `1234-`, ...).
    pub fn parse(s: &str) -> Option<PortUnion> {
        if s == "all" || s == "*" {
            return Some(PortUnion(vec![(0, u16::MAX)]));
        }
        let port = |p: &str| -> Option<u16> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
                return None;
            }
            p.parse().ok()
        };
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let (a, b) = match item.split_once('-') {
                None => {
                    let p = port(item)?;
                    (p, p)
                }
                Some((a, b)) => (port(a)?, port(b)?),
            };
            ranges.push((a.min(b), a.max(b)));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Some(PortUnion(merged))
    }

    /// The merged ranges, ascending, inclusive.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Whether `port` is in the set (binary search).
    pub fn contains(&self, port: u16) -> bool {
        let i = self.0.partition_point(|&(a, _)| a <= port);
        i > 0 && self.0[i - 1].1 >= port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(tcp: bool, udp: bool, lo: u16, hi: u16) -> ProtoPort {
        ProtoPort {
            tcp,
            udp,
            lo,
            hi,
            zero_start: false,
        }
    }

    #[test]
    fn first_rule_per_port_and_protocol() {
        let ix = PortIndex::build(&[
            (2, pp(true, false, 80, 80)),
            (5, pp(true, true, 0, u16::MAX)),
            (7, pp(false, true, 443, 443)),
        ]);
        assert_eq!(ix.first(Protocol::Tcp, 80), 2);
        assert_eq!(ix.first(Protocol::Tcp, 81), 5);
        assert_eq!(ix.first(Protocol::Udp, 80), 5);
        assert_eq!(ix.first(Protocol::Udp, 443), 5);
        let ix = PortIndex::build(&[
            (0, pp(true, false, 6881, 6889)),
            (3, pp(true, false, 6885, 65535)),
        ]);
        assert_eq!(ix.first(Protocol::Tcp, 6880), u32::MAX);
        assert_eq!(ix.first(Protocol::Tcp, 6881), 0);
        assert_eq!(ix.first(Protocol::Tcp, 6889), 0);
        assert_eq!(ix.first(Protocol::Tcp, 6890), 3);
        assert_eq!(ix.first(Protocol::Tcp, 65535), 3);
        assert_eq!(ix.first(Protocol::Udp, 6885), u32::MAX);
        assert_eq!(PortIndex::default().first(Protocol::Tcp, 1), u32::MAX);
    }

    #[test]
    fn port_union_reference_vectors() {
        let r = |s: &str| PortUnion::parse(s).map(|u| u.0);
        assert_eq!(r("all"), Some(vec![(0, 65535)]));
        assert_eq!(r("*"), Some(vec![(0, 65535)]));
        assert_eq!(r("1234"), Some(vec![(1234, 1234)]));
        assert_eq!(
            r("5678,1234,9012"),
            Some(vec![(1234, 1234), (5678, 5678), (9012, 9012)])
        );
        assert_eq!(r("1234-1240"), Some(vec![(1234, 1240)]));
        assert_eq!(r("1240-1234"), Some(vec![(1234, 1240)]));
        assert_eq!(
            r("5678,1200-1236,9100-9012,1234-1240"),
            Some(vec![(1200, 1240), (5678, 5678), (9012, 9100)])
        );
        assert_eq!(
            r("5678,1200-1236,65531-65535,65532-65534,9100-9012,1234-1240"),
            Some(vec![
                (1200, 1240),
                (5678, 5678),
                (9012, 9100),
                (65531, 65535)
            ])
        );
        assert_eq!(r("1-2,3"), Some(vec![(1, 3)]));
        for bad in [
            "",
            "1234-",
            "1234-ggez",
            "233,",
            "1234-1240-1250",
            "-,,",
            "http",
            "65536",
            " 80",
        ] {
            assert_eq!(r(bad), None, "{bad}");
        }
        let u = PortUnion::parse("80,443,8000-9000").unwrap();
        assert!(u.contains(80) && u.contains(8500) && u.contains(9000));
        assert!(!u.contains(81) && !u.contains(0) && !u.contains(9001));
    }
}
