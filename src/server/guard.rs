//! Outbound policy: which destinations the relay may reach.
//!
//! By default a client may not make the server connect to itself or its neighbours:
//! loopback, link-local (169.254.0.0/16 holds cloud metadata services; fe80::/10) and
//! unspecified addresses are refused. The check runs on resolved addresses, so a domain
//! that resolves to 127.0.0.1 is refused too, and for every UDP destination (the fix of
//! GHSA-vgrc-hq28-p3xp in the reference server).

use std::net::IpAddr;

/// `outboundGuard` in the server config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboundGuard {
    pub allow_loopback: bool,
    pub allow_link_local: bool,
}

/// Why a destination was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Loopback,
    LinkLocal,
    Unspecified,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Loopback => "destination is a loopback address (outboundGuard.allowLoopback)",
            Refusal::LinkLocal => {
                "destination is a link-local address (outboundGuard.allowLinkLocal)"
            }
            Refusal::Unspecified => "destination is an unspecified address",
        })
    }
}

impl OutboundGuard {
    /// Accept or refuse one resolved destination address.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_unspecified() {
            return Err(Refusal::Unspecified);
        }
        if ip.is_loopback() && !self.allow_loopback {
            return Err(Refusal::Loopback);
        }
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if link_local && !self.allow_link_local {
            return Err(Refusal::LinkLocal);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_by_default() {
        let g = OutboundGuard::default();
        assert_eq!(g.check(ip("127.0.0.1")), Err(Refusal::Loopback));
        assert_eq!(g.check(ip("127.8.9.10")), Err(Refusal::Loopback));
        assert_eq!(g.check(ip("::1")), Err(Refusal::Loopback));
        assert_eq!(g.check(ip("::ffff:127.0.0.1")), Err(Refusal::Loopback));
        assert_eq!(g.check(ip("169.254.169.254")), Err(Refusal::LinkLocal));
        assert_eq!(g.check(ip("fe80::1")), Err(Refusal::LinkLocal));
        assert_eq!(g.check(ip("febf::1")), Err(Refusal::LinkLocal));
        assert_eq!(g.check(ip("0.0.0.0")), Err(Refusal::Unspecified));
        assert_eq!(g.check(ip("::")), Err(Refusal::Unspecified));
        assert_eq!(g.check(ip("93.184.216.34")), Ok(()));
        assert_eq!(g.check(ip("fec0::1")), Ok(()));
    }

    #[test]
    fn allowances_lift_each_class() {
        let g = OutboundGuard {
            allow_loopback: true,
            allow_link_local: false,
        };
        assert_eq!(g.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(g.check(ip("169.254.1.1")), Err(Refusal::LinkLocal));
        let g = OutboundGuard {
            allow_loopback: false,
            allow_link_local: true,
        };
        assert_eq!(g.check(ip("169.254.1.1")), Ok(()));
        assert_eq!(g.check(ip("0.0.0.0")), Err(Refusal::Unspecified));
    }
}
