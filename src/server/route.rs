//! Where each relayed request goes: the compiled ACL (`acl`) and the outbounds it names
//! (`outbounds`), as the reference's pipeline applies them (resolver, ACL, outbound).
//!
//! Without an ACL the first outbound takes everything (the built-in direct one when there
//! are none). The outbound guard (`outboundGuard`) is not here: it applies afterwards to
//! every address a direct outbound would connect to, hijacked or not, so no rule can open
//! loopback or link-local unless the guard allows it.
//!
//! Sans-IO: compiling reads the rule file and the geo databases (downloading those when
//! due), matching does nothing but look up.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::acl::download::{GEOIP_FILE, GEOIP_URL, GEOSITE_FILE, GEOSITE_URL};
use crate::acl::{self, Acl, Decision, GeoDownload, GeoSource, Protocol, Route, Verdict};
use crate::config::{self, DirectMode, OutboundBind, OutboundKind};
use crate::engine::Egress;
use crate::proto::outbound::Handshake;

/// The outbounds and the rules that choose between them. Immutable; shared by the workers
/// and replaced whole on reload.
#[derive(Debug, Default)]
pub struct Router {
    acl: Option<Acl>,
    outbounds: Vec<Outbound>,
}

/// An outbound ready for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Connect from this host.
    Direct(Direct),
    /// Through a SOCKS5 or HTTP CONNECT proxy.
    Proxy(Proxy),
}

/// A proxy outbound: each relay opens a connection of its own to the proxy and asks it for
/// the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    /// The proxy, resolved when the config is loaded.
    pub addr: SocketAddr,
    /// Username and password (SOCKS5 method 02, or HTTP Basic).
    pub auth: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Socks5,
    Http,
}

/// A direct outbound: the families it uses and how its sockets are set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Direct {
    pub mode: DirectMode,
    pub bind: OutboundBind,
    pub fast_open: bool,
}

/// The built-in `direct` (mode auto, no binding).
static BUILTIN_DIRECT: Outbound = Outbound::Direct(Direct {
    mode: DirectMode::Auto,
    bind: OutboundBind::Any,
    fast_open: false,
});

/// What to do with one request, once routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way<'a> {
    /// The built-in `reject`.
    Reject,
    /// Through this outbound; `hijack`: to this IP instead of the requested host (same
    /// port).
    Out {
        outbound: &'a Outbound,
        hijack: Option<IpAddr>,
    },
}

impl Router {
    /// Compiles `acl` (if any) against `outbounds`, first downloading the geo files its
    /// rules need if they are due (this blocks; see `acl::download`). Errors name the file
    /// (or `acl.inline`), the rule's line and the reason; warnings are logged.
    pub fn new(
        acl: Option<&config::Acl>,
        outbounds: &[config::Outbound],
    ) -> Result<Router, String> {
        let names: Vec<&str> = outbounds.iter().map(|o| o.name.as_str()).collect();
        let acl = match acl {
            None => None,
            Some(a) => {
                // Unset paths mean geoip.dat / geosite.dat in the working directory, as in
                // the reference; fetched only if a rule needs them.
                let cwd = std::env::current_dir().unwrap_or_default();
                let mut geo = GeoDownload {
                    geoip: GeoSource::new(
                        a.geoip.as_deref(),
                        &cwd,
                        GEOIP_FILE,
                        a.geoip_url.as_deref().unwrap_or(GEOIP_URL),
                    ),
                    geosite: GeoSource::new(
                        a.geosite.as_deref(),
                        &cwd,
                        GEOSITE_FILE,
                        a.geosite_url.as_deref().unwrap_or(GEOSITE_URL),
                    ),
                    interval: a.geo_update_interval,
                };
                let compiled = match &a.rules {
                    config::AclRules::File(path) => Acl::from_file(path, &names, &mut geo),
                    config::AclRules::Inline(rules) => Acl::from_inline(rules, &names, &mut geo),
                }
                .map_err(|e| format!("acl: {e}"))?;
                for w in compiled.warnings() {
                    tracing::warn!("acl: {w}");
                }
                Some(compiled)
            }
        };
        let outbounds = outbounds
            .iter()
            .map(|o| {
                Ok(match &o.kind {
                    OutboundKind::Direct(d) => Outbound::Direct(Direct {
                        mode: d.mode,
                        bind: d.bind.clone(),
                        fast_open: d.fast_open,
                    }),
                    OutboundKind::Socks5(s) => Outbound::Proxy(Proxy {
                        kind: ProxyKind::Socks5,
                        addr: proxy_addr(&o.name, s.addr.as_str())?,
                        auth: s.auth.clone(),
                    }),
                    OutboundKind::Http(h) if h.tls => {
                        return Err(format!(
                            "outbounds: {}: https proxies are not supported yet (use http://)",
                            o.name
                        ))
                    }
                    OutboundKind::Http(h) => Outbound::Proxy(Proxy {
                        kind: ProxyKind::Http,
                        addr: proxy_addr(&o.name, (h.host.as_str(), h.port))?,
                        auth: h.auth.clone(),
                    }),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Router { acl, outbounds })
    }

    /// The number of ACL rules (0 without an ACL).
    pub fn rules(&self) -> usize {
        self.acl.as_ref().map_or(0, Acl::len)
    }

    /// The decision before the host is resolved, or `NeedsAddresses`.
    pub fn route_unresolved(&self, host: &acl::Host, proto: Protocol, port: u16) -> Verdict {
        match &self.acl {
            Some(acl) => acl.route_unresolved(host, proto, port),
            None => Verdict::Decided(self.default_decision()),
        }
    }

    /// The decision with the host's addresses known (set on `host`).
    pub fn route(&self, host: &acl::Host, proto: Protocol, port: u16) -> Decision {
        match &self.acl {
            Some(acl) => acl.route(host, proto, port),
            None => self.default_decision(),
        }
    }

    fn default_decision(&self) -> Decision {
        Decision {
            route: if self.outbounds.is_empty() {
                Route::Direct
            } else {
                Route::Outbound(0)
            },
            hijack: None,
            line: None,
        }
    }

    /// What a decision means.
    pub fn way(&self, d: &Decision) -> Way<'_> {
        let outbound = match d.route {
            Route::Reject => return Way::Reject,
            Route::Direct => &BUILTIN_DIRECT,
            Route::Outbound(i) => self.outbounds.get(i).unwrap_or(&BUILTIN_DIRECT),
        };
        Way::Out {
            outbound,
            hijack: d.hijack,
        }
    }
}

/// A proxy's address: an IP literal, or a name resolved now (at start-up and on reload).
fn proxy_addr(
    name: &str,
    addr: impl ToSocketAddrs + std::fmt::Debug,
) -> Result<SocketAddr, String> {
    let err = |why: String| format!("outbounds: {name}: proxy address {addr:?}: {why}");
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

impl Proxy {
    /// The handshake asking the proxy for `host`:`port` (a name goes as a name, for the
    /// proxy to resolve); `None` when the name cannot be asked for (too long for SOCKS5).
    pub fn handshake(&self, host: &str, port: u16) -> Option<Handshake> {
        match self.kind {
            ProxyKind::Socks5 => Handshake::socks5(host, port, self.auth.clone()),
            ProxyKind::Http => Some(Handshake::http(host, port, self.auth.clone())),
        }
    }
}

/// `addrs` in the order `mode` tries them: `auto` keeps the resolver's order, `46`/`64` put
/// one family first, `4`/`6` keep one family only.
fn order(mode: DirectMode, addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, &'static str> {
    let v4 = addrs.iter().copied().filter(SocketAddr::is_ipv4);
    let v6 = addrs.iter().copied().filter(SocketAddr::is_ipv6);
    let out: Vec<SocketAddr> = match mode {
        DirectMode::Auto => addrs.to_vec(),
        DirectMode::Prefer4 => v4.chain(v6).collect(),
        DirectMode::Prefer6 => v6.chain(v4).collect(),
        DirectMode::Only4 => v4.collect(),
        DirectMode::Only6 => v6.collect(),
    };
    if out.is_empty() {
        return Err(match mode {
            DirectMode::Only4 => "no IPv4 address available",
            DirectMode::Only6 => "no IPv6 address available",
            _ => "no IPv4 or IPv6 address available",
        });
    }
    Ok(out)
}

impl Direct {
    /// The addresses a connect tries, in order, from a lookup's answer (or an IP literal), as
    /// `mode` allows (see [`order`]).
    pub fn candidates(&self, addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, &'static str> {
        order(self.mode, addrs)
    }

    /// [`Direct::candidates`] for a UDP datagram: there `auto` sends to IPv4 when there is
    /// one, as the reference does (and as the session's socket, bound to `bindIPv4` first,
    /// expects).
    pub fn udp_candidates(&self, addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, &'static str> {
        let mode = match self.mode {
            DirectMode::Auto => DirectMode::Prefer4,
            other => other,
        };
        order(mode, addrs)
    }

    /// Mode `auto` dials both families at once, as the reference does: with addresses of
    /// both in `candidates`, the index of the other family's first one, to connect beside
    /// the first. Not when fast open is used (`payload`, as for [`Direct::egress`]): its
    /// connect completes before any SYN is answered.
    pub fn racer(&self, candidates: &[SocketAddr], payload: bool) -> Option<usize> {
        if self.mode != DirectMode::Auto || (self.fast_open && payload) {
            return None;
        }
        let first = candidates.first()?;
        candidates
            .iter()
            .position(|a| a.is_ipv4() != first.is_ipv4())
    }

    /// How a socket toward `dest` is set up. `payload`: the connect will carry data at once
    /// (fast open is used only then, so a target that speaks first is not kept waiting).
    pub fn egress(&self, dest: IpAddr, payload: bool) -> Egress {
        let (bind, device) = match &self.bind {
            OutboundBind::Any => (None, None),
            OutboundBind::Addresses { v4, v6 } => (
                match dest {
                    IpAddr::V4(_) => v4.map(IpAddr::V4),
                    IpAddr::V6(_) => v6.map(IpAddr::V6),
                },
                None,
            ),
            OutboundBind::Device(dev) => (None, Some(Arc::from(dev.as_str()))),
        };
        Egress {
            bind,
            device,
            fast_open: self.fast_open && payload,
        }
    }

    /// How a UDP session's socket is set up (one socket for all its destinations): bound to
    /// the IPv4 bind address if there is one (the reference's `auto` prefers IPv4), else to
    /// the IPv6 one; dual-stack and unbound otherwise.
    pub fn udp_egress(&self) -> Egress {
        let (bind, device) = match &self.bind {
            OutboundBind::Any => (None, None),
            OutboundBind::Addresses { v4, v6 } => (v4.map(IpAddr::V4).or(v6.map(IpAddr::V6)), None),
            OutboundBind::Device(dev) => (None, Some(Arc::from(dev.as_str()))),
        };
        Egress {
            bind,
            device,
            fast_open: false,
        }
    }
}
