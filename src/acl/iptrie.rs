//! A binary prefix tree over IPv4 or IPv6 addresses: a lookup walks at most 32 or 128
//! nodes whatever the number of prefixes, collecting the rules stored on the way.

/// Marks "no child" and "no rule list".
const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    child: [u32; 2],
    /// Index into `IpTrie::lists`, or `NONE`.
    list: u32,
}

const EMPTY: Node = Node {
    child: [NONE, NONE],
    list: NONE,
};

/// Prefixes of one family (`BITS` = 32 or 128), addresses left-aligned in a `u128`.
#[derive(Debug)]
pub struct IpTrie<const BITS: u8> {
    nodes: Vec<Node>,
    /// Ascending rule numbers stored at one node.
    lists: Vec<Vec<u32>>,
}

impl<const BITS: u8> Default for IpTrie<BITS> {
    fn default() -> Self {
        IpTrie {
            nodes: vec![EMPTY],
            lists: Vec::new(),
        }
    }
}

/// Bit `i` (0 = most significant) of a `BITS`-wide address held in the low bits of `addr`.
fn bit<const BITS: u8>(addr: u128, i: u8) -> usize {
    ((addr >> (BITS - 1 - i)) & 1) as usize
}

impl<const BITS: u8> IpTrie<BITS> {
    /// Adds `addr/len` for `rule`; rules must be added in ascending order. `len` above
    /// `BITS` is clamped.
    pub fn insert(&mut self, addr: u128, len: u8, rule: u32) {
        let len = len.min(BITS);
        let mut at = 0usize;
        for i in 0..len {
            let b = bit::<BITS>(addr, i);
            let next = self.nodes[at].child[b];
            at = if next == NONE {
                let new = self.nodes.len();
                self.nodes.push(EMPTY);
                self.nodes[at].child[b] = new as u32;
                new
            } else {
                next as usize
            };
        }
        let list = match self.nodes[at].list {
            NONE => {
                self.nodes[at].list = self.lists.len() as u32;
                self.lists.push(Vec::new());
                self.lists.last_mut()
            }
            l => self.lists.get_mut(l as usize),
        };
        if let Some(list) = list {
            if list.last() != Some(&rule) {
                list.push(rule);
            }
        }
    }

    /// Calls `visit` with each rule list on the path of `addr`, threading the bound as
    /// `DomainIndex::lookup` does.
    pub fn lookup(
        &self,
        addr: u128,
        mut bound: u32,
        mut visit: impl FnMut(&[u32], u32) -> u32,
    ) -> u32 {
        let mut at = 0usize;
        let mut i = 0u8;
        loop {
            let node = self.nodes[at];
            if node.list != NONE {
                bound = visit(&self.lists[node.list as usize], bound);
            }
            if i == BITS {
                return bound;
            }
            let next = node.child[bit::<BITS>(addr, i)];
            if next == NONE {
                return bound;
            }
            at = next as usize;
            i += 1;
        }
    }

    /// Whether some prefix holds `addr`.
    pub fn contains(&self, addr: u128) -> bool {
        self.lookup(addr, u32::MAX, |l, b| if l.is_empty() { b } else { 0 }) == 0
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(s: &str) -> u128 {
        u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()))
    }

    fn v6(s: &str) -> u128 {
        u128::from(s.parse::<Ipv6Addr>().unwrap())
    }

    fn all_hits<const B: u8>(t: &IpTrie<B>, a: u128) -> Vec<u32> {
        let mut out = Vec::new();
        t.lookup(a, u32::MAX, |l, b| {
            out.extend_from_slice(l);
            b
        });
        out.sort();
        out
    }

    #[test]
    fn nested_prefixes_collect_every_rule() {
        let mut t = IpTrie::<32>::default();
        t.insert(v4("0.0.0.0"), 0, 0);
        t.insert(v4("192.168.1.0"), 24, 1);
        t.insert(v4("192.168.0.0"), 16, 2);
        t.insert(v4("192.168.1.100"), 32, 3);
        t.insert(v4("192.168.1.100"), 32, 3);
        assert_eq!(all_hits(&t, v4("192.168.1.100")), vec![0, 1, 2, 3]);
        assert_eq!(all_hits(&t, v4("192.168.2.1")), vec![0, 2]);
        assert_eq!(all_hits(&t, v4("10.0.0.1")), vec![0]);
    }

    #[test]
    fn ipv6_prefixes() {
        let mut t = IpTrie::<128>::default();
        t.insert(v6("2606:4700::"), 44, 7);
        t.insert(v6("::1"), 128, 8);
        assert!(t.contains(v6("2606:4700::1")));
        assert!(t.contains(v6("2606:4700:f:ffff::1")));
        assert!(!t.contains(v6("2606:4700:10::1")));
        assert!(!t.contains(v6("2606:4701::1")));
        assert!(t.contains(v6("::1")));
        assert!(!t.contains(v6("::2")));
        assert!(IpTrie::<128>::default().is_empty());
    }
}
