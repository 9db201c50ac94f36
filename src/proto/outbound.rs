//! The client side of the proxy outbounds' handshakes, sans-IO: SOCKS5 CONNECT and UDP
//! ASSOCIATE (RFC 1928, with RFC 1929 username/password) and HTTP CONNECT, as the reference
//! server speaks them to an upstream proxy before a relay's bytes flow; and the SOCKS5 UDP
//! request header ([`socks5_udp_wrap`], [`socks5_udp_unwrap`]) of an association's
//! datagrams.
//!
//! The owner connects to the proxy, sends what [`Handshake::start`] returns, then feeds
//! every byte it reads to [`Handshake::received`] until that says [`Step::Done`] (the bytes
//! after the proxy's answer belong to the target) or [`Step::Failed`] (the reference's
//! error text). Nothing here panics on what a proxy sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;

/// The longest proxy answer read: an HTTP CONNECT response head, or a SOCKS5 reply.
const MAX_ANSWER: usize = 16 * 1024;

/// What the owner does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes, then read.
    Send(Vec<u8>),
    /// Read more.
    Recv,
    /// The tunnel is up; `leftover` came from the target after the proxy's answer.
    Done { leftover: Vec<u8> },
    /// The proxy refused or spoke nonsense: the reason.
    Failed(String),
}

#[derive(Debug)]
enum State {
    /// SOCKS5: the method choice is awaited.
    Method,
    /// SOCKS5: the username/password answer is awaited.
    Auth,
    /// SOCKS5: the CONNECT reply is awaited.
    Reply,
    /// HTTP: the CONNECT response head is awaited.
    Http,
    Over,
}

/// One handshake with one proxy, for one target.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    /// Bytes read and not yet used.
    buf: Vec<u8>,
    /// SOCKS5 username and password (both non-empty), offered as method 02.
    auth: Option<(String, String)>,
    /// SOCKS5: the CONNECT request, sent once a method is agreed. HTTP: the request.
    request: Vec<u8>,
    /// SOCKS5: the reply's BND.ADDR and BND.PORT, once it came as an IP address (for UDP
    /// ASSOCIATE: where the association's datagrams go).
    bound: Option<SocketAddr>,
}

impl Handshake {
    /// SOCKS5 CONNECT to `host`:`port`: an IP literal goes as an address, anything else as
    /// a domain for the proxy to resolve. `None` when the name is too long for SOCKS5.
    pub fn socks5(host: &str, port: u16, auth: Option<(String, String)>) -> Option<Handshake> {
        let mut request = vec![5, 1, 0];
        push_socks5_addr(&mut request, host, port)?;
        Some(Self::socks5_request(request, auth))
    }

    /// SOCKS5 UDP ASSOCIATE with DST `0.0.0.0:0`, as the reference asks; once
    /// [`Step::Done`], [`Self::bound`] is the relay to send the datagrams to.
    pub fn socks5_udp(auth: Option<(String, String)>) -> Handshake {
        Self::socks5_request(vec![5, 3, 0, 1, 0, 0, 0, 0, 0, 0], auth)
    }

    fn socks5_request(request: Vec<u8>, auth: Option<(String, String)>) -> Handshake {
        let auth = auth.filter(|(u, p)| !u.is_empty() && !p.is_empty());
        Handshake {
            state: State::Method,
            buf: Vec::new(),
            auth,
            request,
            bound: None,
        }
    }

    /// The SOCKS5 reply's bound address, if the handshake is done and it was an IP address.
    pub fn bound(&self) -> Option<SocketAddr> {
        self.bound
    }

    /// HTTP CONNECT to `host`:`port`, with Basic proxy credentials when given.
    pub fn http(host: &str, port: u16, auth: Option<(String, String)>) -> Handshake {
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let mut request = format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\
             User-Agent: Go-http-client/1.1\r\nProxy-Connection: Keep-Alive\r\n"
        );
        if let Some((user, pass)) = auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        request.push_str("\r\n");
        Handshake {
            state: State::Http,
            buf: Vec::new(),
            auth: None,
            request: request.into_bytes(),
            bound: None,
        }
    }

    /// The first bytes to send once connected to the proxy.
    pub fn start(&mut self) -> Step {
        match self.state {
            State::Method if self.auth.is_some() => Step::Send(vec![5, 2, 0, 2]),
            State::Method => Step::Send(vec![5, 1, 0]),
            State::Http => Step::Send(std::mem::take(&mut self.request)),
            _ => Step::Failed("handshake already started".into()),
        }
    }

    /// Bytes read from the proxy.
    pub fn received(&mut self, data: &[u8]) -> Step {
        self.buf.extend_from_slice(data);
        let step = match self.state {
            State::Method => self.method(),
            State::Auth => self.auth_answer(),
            State::Reply => self.reply(),
            State::Http => self.http_answer(),
            State::Over => Step::Failed("handshake over".into()),
        };
        match step {
            Step::Recv if self.buf.len() > MAX_ANSWER => self.fail("proxy answer too long".into()),
            Step::Failed(why) => self.fail(why),
            step => step,
        }
    }

    fn fail(&mut self, why: String) -> Step {
        self.state = State::Over;
        self.buf = Vec::new();
        Step::Failed(why)
    }

    fn method(&mut self) -> Step {
        let [ver, method, ..] = self.buf[..] else {
            return Step::Recv;
        };
        if ver != 5 {
            return Step::Failed(format!("not a SOCKS5 proxy (version {ver})"));
        }
        self.buf.drain(..2);
        match (method, &self.auth) {
            (0, _) => {
                self.state = State::Reply;
                Step::Send(std::mem::take(&mut self.request))
            }
            (2, Some((user, pass))) => {
                let (Ok(ul), Ok(pl)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
                    return Step::Failed("SOCKS5 username or password too long".into());
                };
                let mut sub = vec![1, ul];
                sub.extend(user.as_bytes());
                sub.push(pl);
                sub.extend(pass.as_bytes());
                self.state = State::Auth;
                Step::Send(sub)
            }
            (m, _) => Step::Failed(format!("unsupported SOCKS5 authentication method: {m}")),
        }
    }

    fn auth_answer(&mut self) -> Step {
        let [_, status, ..] = self.buf[..] else {
            return Step::Recv;
        };
        if status != 0 {
            return Step::Failed("SOCKS5 authentication failed".into());
        }
        self.buf.drain(..2);
        self.state = State::Reply;
        Step::Send(std::mem::take(&mut self.request))
    }

    fn reply(&mut self) -> Step {
        let [ver, rep, _, atyp, ..] = self.buf[..] else {
            return Step::Recv;
        };
        if ver != 5 {
            return Step::Failed(format!("not a SOCKS5 reply (version {ver})"));
        }
        if rep != 0 {
            return Step::Failed(format!(
                "SOCKS5 request failed: {} ({rep})",
                reply_text(rep)
            ));
        }
        let addr_len = match atyp {
            1 => 4,
            4 => 16,
            3 => match self.buf.get(4) {
                Some(&n) => 1 + usize::from(n),
                None => return Step::Recv,
            },
            t => return Step::Failed(format!("SOCKS5 reply with address type {t}")),
        };
        let len = 4 + addr_len + 2;
        if self.buf.len() < len {
            return Step::Recv;
        }
        self.bound = parse_socks5_addr(&self.buf[3..len]).map(|(addr, _)| addr);
        self.state = State::Over;
        let leftover = self.buf.split_off(len);
        self.buf = Vec::new();
        Step::Done { leftover }
    }

    fn http_answer(&mut self) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&self.buf) {
            Ok(httparse::Status::Partial) => Step::Recv,
            Ok(httparse::Status::Complete(len)) => match resp.code {
                Some(200) => {
                    self.state = State::Over;
                    let leftover = self.buf.split_off(len);
                    self.buf = Vec::new();
                    Step::Done { leftover }
                }
                code => {
                    let code = code.map_or_else(String::new, |c| c.to_string());
                    Step::Failed(format!("HTTP request failed: {code}"))
                }
            },
            Err(e) => Step::Failed(format!("HTTP proxy answer: {e}")),
        }
    }
}

/// Appends ATYP, DST.ADDR and DST.PORT for `host`:`port`: an IP literal as an address,
/// anything else as a domain. `None` when the name is empty or too long for SOCKS5.
fn push_socks5_addr(out: &mut Vec<u8>, host: &str, port: u16) -> Option<()> {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            out.push(1);
            out.extend(ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            out.push(4);
            out.extend(ip.octets());
        }
        Err(_) => {
            let len = u8::try_from(host.len()).ok().filter(|&l| l > 0)?;
            out.push(3);
            out.push(len);
            out.extend(host.as_bytes());
        }
    }
    out.extend(port.to_be_bytes());
    Some(())
}

/// ATYP, an IP address and a port at the start of `buf`, and the bytes they took. `None`
/// for a domain, an unknown type or too few bytes.
fn parse_socks5_addr(buf: &[u8]) -> Option<(SocketAddr, usize)> {
    let (ip, len) = match *buf.first()? {
        1 => {
            let o: [u8; 4] = buf.get(1..5)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(o)), 5)
        }
        4 => {
            let o: [u8; 16] = buf.get(1..17)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(o)), 17)
        }
        _ => return None,
    };
    let port = buf.get(len..len + 2)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    Some((SocketAddr::new(ip, port), len + 2))
}

/// A datagram for a SOCKS5 association: `00 00 | FRAG 00 | ATYP DST.ADDR DST.PORT`, then
/// `payload`; the address encoded as for CONNECT. `None` when the name does not fit.
pub fn socks5_udp_wrap(host: &str, port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(3 + 1 + 16 + 2 + payload.len());
    out.extend([0, 0, 0]);
    push_socks5_addr(&mut out, host, port)?;
    out.extend_from_slice(payload);
    Some(out)
}

/// The source and payload of a datagram from a SOCKS5 association. `None` (to be dropped)
/// for a fragment, a domain source or a malformed header: fragments are not reassembled,
/// as in the reference.
pub fn socks5_udp_unwrap(datagram: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let [0, 0, 0, ref rest @ ..] = datagram[..] else {
        return None;
    };
    let (from, used) = parse_socks5_addr(rest)?;
    Some((from, &rest[used..]))
}

/// RFC 1928's text for a reply code, as the reference prints it.
fn reply_text(rep: u8) -> &'static str {
    match rep {
        1 => "General SOCKS server failure",
        2 => "Connection not allowed by ruleset",
        3 => "Network unreachable",
        4 => "Host unreachable",
        5 => "Connection refused",
        6 => "TTL expired",
        7 => "Command not supported",
        8 => "Address type not supported",
        _ => "undefined",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(step: Step) -> Vec<u8> {
        match step {
            Step::Send(b) => b,
            other => panic!("expected bytes to send, got {other:?}"),
        }
    }

    #[test]
    fn socks5_without_auth_asks_for_a_domain_and_keeps_what_follows_the_reply() {
        let mut h = Handshake::socks5("example.com", 443, None).expect("a short name");
        assert_eq!(sent(h.start()), [5, 1, 0]);
        let req = sent(h.received(&[5, 0]));
        assert_eq!(req[..5], [5, 1, 0, 3, 11]);
        assert_eq!(&req[5..16], b"example.com");
        assert_eq!(req[16..], [1, 187]);
        // The reply arrives in two pieces, with the target's first bytes after it.
        assert_eq!(h.received(&[5, 0, 0, 1, 10]), Step::Recv);
        let done = h.received(&[0, 0, 1, 0x04, 0x38, b'h', b'i']);
        assert_eq!(
            done,
            Step::Done {
                leftover: b"hi".to_vec()
            }
        );
    }

    #[test]
    fn socks5_ip_literals_go_as_addresses() {
        let mut v4 = Handshake::socks5("192.0.2.1", 80, None).expect("v4");
        v4.start();
        assert_eq!(
            sent(v4.received(&[5, 0])),
            [5, 1, 0, 1, 192, 0, 2, 1, 0, 80]
        );
        let mut v6 = Handshake::socks5("::1", 80, None).expect("v6");
        v6.start();
        let req = sent(v6.received(&[5, 0]));
        assert_eq!(req[3], 4);
        assert_eq!(req.len(), 4 + 16 + 2);
    }

    #[test]
    fn socks5_offers_username_password_only_with_both() {
        let mut h = Handshake::socks5("a.b", 1, Some(("u".into(), "p".into()))).expect("name");
        assert_eq!(sent(h.start()), [5, 2, 0, 2]);
        assert_eq!(sent(h.received(&[5, 2])), [1, 1, b'u', 1, b'p']);
        assert_eq!(sent(h.received(&[1, 0]))[..4], [5, 1, 0, 3]);
        let mut empty = Handshake::socks5("a.b", 1, Some(("u".into(), String::new()))).unwrap();
        assert_eq!(sent(empty.start()), [5, 1, 0]);
    }

    #[test]
    fn socks5_failures_carry_the_references_words() {
        let mut h = Handshake::socks5("a.b", 1, Some(("u".into(), "p".into()))).unwrap();
        h.start();
        h.received(&[5, 2]);
        assert_eq!(
            h.received(&[1, 1]),
            Step::Failed("SOCKS5 authentication failed".into())
        );
        let mut h = Handshake::socks5("a.b", 1, None).unwrap();
        h.start();
        assert_eq!(
            h.received(&[5, 0xff]),
            Step::Failed("unsupported SOCKS5 authentication method: 255".into())
        );
        let mut h = Handshake::socks5("a.b", 1, None).unwrap();
        h.start();
        h.received(&[5, 0]);
        assert_eq!(
            h.received(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]),
            Step::Failed("SOCKS5 request failed: Connection refused (5)".into())
        );
        assert!(Handshake::socks5(&"x".repeat(256), 1, None).is_none());
    }

    #[test]
    fn socks5_udp_associate_learns_the_relay_address() {
        let mut h = Handshake::socks5_udp(None);
        assert_eq!(sent(h.start()), [5, 1, 0]);
        assert_eq!(sent(h.received(&[5, 0])), [5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            h.received(&[5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]),
            Step::Done { leftover: vec![] }
        );
        assert_eq!(h.bound(), Some("127.0.0.1:8080".parse().unwrap()));
        let mut h = Handshake::socks5_udp(None);
        h.start();
        h.received(&[5, 0]);
        assert_eq!(
            h.received(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]),
            Step::Failed("SOCKS5 request failed: Command not supported (7)".into())
        );
        assert_eq!(h.bound(), None);
    }

    #[test]
    fn socks5_udp_datagrams_carry_their_address() {
        let wrapped = socks5_udp_wrap("example.com", 53, b"q").unwrap();
        assert_eq!(wrapped[..5], [0, 0, 0, 3, 11]);
        assert_eq!(&wrapped[5..16], b"example.com");
        assert_eq!(wrapped[16..], [0, 53, b'q']);
        let v6 = socks5_udp_wrap("::1", 53, b"q").unwrap();
        assert_eq!((v6[3], v6.len()), (4, 3 + 1 + 16 + 2 + 1));
        let reply = socks5_udp_wrap("192.0.2.7", 5353, b"answer").unwrap();
        assert_eq!(
            socks5_udp_unwrap(&reply),
            Some(("192.0.2.7:5353".parse().unwrap(), &b"answer"[..]))
        );
        // A fragment, a domain source, a short header: dropped.
        let mut frag = reply.clone();
        frag[2] = 1;
        assert_eq!(socks5_udp_unwrap(&frag), None);
        assert_eq!(socks5_udp_unwrap(&wrapped), None);
        assert_eq!(socks5_udp_unwrap(&reply[..6]), None);
        assert_eq!(socks5_udp_unwrap(&[]), None);
        assert!(socks5_udp_wrap(&"x".repeat(256), 1, b"").is_none());
    }

    #[test]
    fn http_connect_needs_exactly_200_and_keeps_early_bytes() {
        let mut h = Handshake::http("::1", 8080, Some(("u".into(), "p".into())));
        let req = String::from_utf8(sent(h.start())).expect("text");
        assert!(req.starts_with("CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n"));
        assert!(req.contains("Proxy-Authorization: Basic dTpw\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
        assert_eq!(
            h.received(b"HTTP/1.1 200 Connection established\r\n"),
            Step::Recv
        );
        assert_eq!(
            h.received(b"\r\nSSH-2.0"),
            Step::Done {
                leftover: b"SSH-2.0".to_vec()
            }
        );
        let mut h = Handshake::http("example.com", 443, None);
        h.start();
        assert_eq!(
            h.received(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
            Step::Failed("HTTP request failed: 407".into())
        );
    }

    #[test]
    fn garbage_and_endless_answers_fail_without_panicking() {
        let mut h = Handshake::http("a.b", 1, None);
        h.start();
        assert!(matches!(
            h.received(b"\x00\x01\x02\r\n\r\n"),
            Step::Failed(_)
        ));
        let mut h = Handshake::http("a.b", 1, None);
        h.start();
        let mut last = Step::Recv;
        for _ in 0..20 {
            last = h.received(&[b'X'; 1024]);
            if last != Step::Recv {
                break;
            }
        }
        assert!(matches!(last, Step::Failed(_)), "{last:?}");
        let mut h = Handshake::socks5("a.b", 1, None).unwrap();
        h.start();
        h.received(&[5, 0]);
        assert!(matches!(h.received(&[5, 0, 0, 9]), Step::Failed(_)));
    }
}
