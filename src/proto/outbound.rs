//! The client side of the proxy outbounds' handshakes, sans-IO: SOCKS5 CONNECT (RFC 1928,
//! with RFC 1929 username/password) and HTTP CONNECT, as the reference server speaks them
//! to an upstream proxy before a relay's bytes flow.
//!
//! The owner connects to the proxy, sends what [`Handshake::start`] returns, then feeds
//! every byte it reads to [`Handshake::received`] until that says [`Step::Done`] (the bytes
//! after the proxy's answer belong to the target) or [`Step::Failed`] (the reference's
//! error text). Nothing here panics on what a proxy sends.

use std::net::IpAddr;

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
}

impl Handshake {
    /// SOCKS5 CONNECT to `host`:`port`: an IP literal goes as an address, anything else as
    /// a domain for the proxy to resolve. `None` when the name is too long for SOCKS5.
    pub fn socks5(host: &str, port: u16, auth: Option<(String, String)>) -> Option<Handshake> {
        let mut request = vec![5, 1, 0];
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                request.push(1);
                request.extend(ip.octets());
            }
            Ok(IpAddr::V6(ip)) => {
                request.push(4);
                request.extend(ip.octets());
            }
            Err(_) => {
                let len = u8::try_from(host.len()).ok().filter(|&l| l > 0)?;
                request.push(3);
                request.push(len);
                request.extend(host.as_bytes());
            }
        }
        request.extend(port.to_be_bytes());
        let auth = auth.filter(|(u, p)| !u.is_empty() && !p.is_empty());
        Some(Handshake {
            state: State::Method,
            buf: Vec::new(),
            auth,
            request,
        })
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
