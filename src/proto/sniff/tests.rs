//! The official sniffer's test vectors (S1–S12 of the reference), plus ClientHellos from
//! rustls, QUIC v2, malformed heads and hellos, incremental feeding and garbage.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::{Rng, SeedableRng};
use rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
use rustls::quic::Version;
use rustls::Side;

use super::*;
use crate::proto::varint;

/// S7: a TLS 1.2/1.3 ClientHello record for ipinfo.io.
const S7_TLS: &str = "FgMBARcBAAETAwPJL2jlt1OAo+Rslkjv/aqKiTthKMaCKg2Gvd+uALDbDCDdY+UIk8ouadEB9fC3j52Y1i7SJZqGIgBRIS6kKieYrAAoEwITAcAswCvAMMAvwCTAI8AowCfACsAJwBTAEwCdAJwAPQA8ADUALwEAAKIAAAAOAAwAAAlpcGluZm8uaW8ABQAFAQAAAAAAKwAJCAMEAwMDAgMBAA0AGgAYCAQIBQgGBAEFAQIBBAMFAwIDAgIGAQYDACMAAAAKAAgABgAdABcAGAAQAAsACQhodHRwLzEuMQAzACYAJAAdACBguQbqNJNyamYxYcrBFpBP7pWv5TgZsP9gwGtMYNKVBQAxAAAAFwAA/wEAAQAALQACAQE=";

/// S11: a QUIC v1 client Initial for www.notion.so.
pub(crate) const S11_QUIC: &str = "ygAAAAEIwugWgPS7ulYAAES8hY891uwgGE9GG4CPOLd+nsDe28raso24lCSFmlFwYQG1uF39ikbL13/R9ZTghYmTl+jEbr6F9TxxRiOgpTmKRmh6aKZiIiVfy5pVRckovaI8lq0WRoW9xoFNTyYtQP8TVJ3bLCK+zUqpquEQSyWf7CE43ywayyMpE9UlIoPXFWCoopXLM1SvzdQ+17P51N9KR7m4emti4DWWTBLMQOvrwd2HEEkbiZdRO1wf6ZXJlIat5dN0R/6uod60OFPO+u+awvq67MoMReC7+5I/xWI+xx6o4JpnZNn6YPG8Gqi8hS6doNcAAdtD8h5eMLuHCCgkpX3QVjjfWtcOhtw9xKjU43HhUPwzUTv+JDLgwuTQCTmlfYlb3B+pk4b2I9si0tJ0SBuYaZ2VQPtZbj2hpGXw3gn11pbN8xsbKkQL50+Scd4dGJxWQlGaJHeaU5WOCkxLXc635z8m5XO/CBHVYPGp4pfwfwNUgbe5WF+3MaUIlDB8dMfsnrO0BmZPo379jVx0SFLTAiS8wAdHib1WNEY8qKYnTWuiyxYg1GZEhJt0nXmI+8f0eJq42DgHBWC+Rf5rRBr/Sf25o3mFAmTUaul0Woo9/CIrpT73B63N91xd9A77i4ru995YG8l9Hen+eLtpDU9Q9376nwMDYBzeYG9U/Rn0Urbm6q4hmAgV/xlNJ2rAyDS+yLnwqD6I0PRy8bZJEttcidb/SkOyrpgMiAzWeT+SO+c/k+Y8H0UTRa05faZUrhuUaym9wAcaIVRA6nFI+fejfjVp+7afFv+kWn3vCqQEij+CRHuxkltrixZMD2rfYj6NUW7TTYBtPRtuV/V0ZIDjRR26vr4K+0D84+l3c0mA/l6nmpP5kkco3nmpdjtQN6sGXL7+5o0nnsftX5d6/n5mLyEpP+AEDl1zk3iqkS62RsITwql6DMMoGbSDdUpMclCIeM0vlo3CkxGMO7QA9ruVeNddkL3EWMivl+uxO43sXEEqYQHVl4N75y63t05GOf7/gm9Kb/BJ8MpG9ViEkVYaskQCzi3D8bVpzo8FfTj8te8B6c3ikc/cm7r8k0ZcZpr+YiLGDYq+0ilHxpqJfmq8dPkSvxdzLcUSvy7+LMQ/TTobRSF7L4JhtDKck0+00vl9H35Tkh9N+MsVtpKdWyoqZ4XaK2Nx1M6AieczXpdFc0y7lYPoUfF4IeW8WzeVUclol5ElYjkyFz/lDOGAe1bF2g5AYaGWCPiGleVZknNdD5ihB8W8Mfkt1pEwq2S97AHrppqkf/VoIfZzeqH8wUFw8fDDrZIpnoa0rW7HfwIQaqJhPCyB9Z6TVbV4x9UWmaHfVAcinCK/7o10dtaj3rvEqcUC/iPceGq3Tqv/p9GGNJ+Ci2JBjXqNxYr893Llk75VdPD9pM6y1SM0P80oXNy32VMtafkFFST8GpvvqWcxUJ93kzaY8RmU1g3XFOImSU2utU6+FUQ2Pn5uLwcfT2cTYfTpPGh+WXjSbZ6trqdEMEsLHybuPo2UN4WpVLXVQma3kSaHQggcLlEip8GhEUAy/xCb2eKqhI4HkDpDjwDnDVKufWlnRaOHf58cc8Woi+WT8JTOkHC+nBEG6fKRPHDG08U5yayIQIjI";

pub(crate) fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("test vector is base64")
}

fn found(host: &str) -> TcpSniff {
    TcpSniff::Found(host.to_owned())
}

/// Feeds `stream` one byte more at a time, as a caller that reads single bytes would; every
/// strict prefix must ask for more unless the answer is already final.
fn byte_by_byte(stream: &[u8]) -> TcpSniff {
    let mut s = TcpSniffer::new();
    let mut last = s.sniff(&[]);
    for n in 1..=stream.len() {
        if last != TcpSniff::NeedMore {
            break;
        }
        last = s.sniff(&stream[..n]);
    }
    last
}

fn sniffer(rewrite_domain: bool, tcp: Option<&str>, udp: Option<&str>) -> Sniffer {
    let ports = |p: Option<&str>| p.map(|p| PortSet::parse(p).unwrap());
    Sniffer::new(None, rewrite_domain, ports(tcp), ports(udp))
}

// --- Which requests are sniffed (S1–S4) ---

#[test]
fn s1_only_ip_literals_are_sniffed_without_rewrite_domain() {
    let s = sniffer(false, None, None);
    assert!(s.wants("1.1.1.1", Transport::Tcp, 80));
    assert!(!s.wants("example.com", Transport::Tcp, 443));
    assert!(s.wants("::1", Transport::Udp, 443));
    assert!(s.wants("[2001:db8::1]", Transport::Tcp, 443));
}

#[test]
fn s2_rewrite_domain_sniffs_domains_too() {
    assert!(sniffer(true, None, None).wants("example.com", Transport::Tcp, 443));
}

#[test]
fn s3_tcp_port_list_limits_tcp_requests_only() {
    let s = sniffer(true, Some("80"), None);
    assert!(s.wants("google.com", Transport::Tcp, 80));
    assert!(!s.wants("google.com", Transport::Tcp, 443));
    assert!(s.wants("google.com", Transport::Udp, 443));
}

#[test]
fn s4_udp_port_list_limits_udp_sessions_only() {
    let s = sniffer(true, Some("80"), Some("443"));
    assert!(s.wants("google.com", Transport::Udp, 443));
    assert!(!s.wants("google.com", Transport::Udp, 80));
}

#[test]
fn internal_hosts_are_never_sniffed() {
    assert!(!sniffer(true, None, None).wants("@SpeedTest", Transport::Tcp, 0));
}

// --- TCP (S5–S10) ---

#[test]
fn s5_http_post_host_header() {
    let stream = b"POST /hello HTTP/1.1\r\nHost: example.com\r\nUser-Agent: mamamiya\r\n\
        Content-Length: 27\r\nConnection: keep-alive\r\n\r\nparam1=value1&param2=value2";
    assert_eq!(tcp(stream), found("example.com"));
    assert_eq!(join_host_port("example.com", 80), "example.com:80");
    assert_eq!(byte_by_byte(stream), found("example.com"));
}

#[test]
fn s6_host_header_port_is_dropped_and_request_port_kept() {
    let stream =
        b"GET / HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: test-agent\r\nAccept: */*\r\n\r\n";
    assert_eq!(tcp(stream), found("example.com"));
    assert_eq!(join_host_port("example.com", 10086), "example.com:10086");
    assert_eq!(byte_by_byte(stream), found("example.com"));
}

#[test]
fn s7_tls_client_hello_sni() {
    let record = b64(S7_TLS);
    assert_eq!(tcp(&record), found("ipinfo.io"));
    // Every strict prefix waits for the rest of the record.
    for n in 0..record.len() {
        assert_eq!(tcp(&record[..n]), TcpSniff::NeedMore, "prefix {n}");
    }
    assert_eq!(byte_by_byte(&record), found("ipinfo.io"));
}

#[test]
fn s8_letters_that_are_not_http_give_nothing() {
    let text = b"Wait It's All Ohio? Always Has Been.";
    // The official mock stream ends here (EOF), which the caller reads as Nothing; without the
    // end the line may still be completed.
    assert_eq!(tcp(text), TcpSniff::NeedMore);
    let mut line = text.to_vec();
    line.extend_from_slice(b"\r\n");
    assert_eq!(tcp(&line), TcpSniff::Nothing);
}

#[test]
fn s9_unknown_first_bytes_decide_after_three() {
    assert_eq!(tcp(&[1, 2]), TcpSniff::NeedMore);
    assert_eq!(tcp(&[1, 2, 3]), TcpSniff::Nothing);
    assert_eq!(tcp(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), TcpSniff::Nothing);
}

#[test]
fn s10_silence_asks_for_more_until_the_callers_timeout() {
    assert_eq!(tcp(&[]), TcpSniff::NeedMore);
    assert_eq!(tcp(b"GE"), TcpSniff::NeedMore);
    assert_eq!(tcp(b"GET / HTTP/1.1\r\nHost: a"), TcpSniff::NeedMore);
    assert_eq!(tcp(&[0x16, 0x03]), TcpSniff::NeedMore);
    assert_eq!(tcp(&[0x16, 0x03, 0x01, 0x01]), TcpSniff::NeedMore);
    let s = |t| Sniffer::new(t, false, None, None).timeout();
    assert_eq!(s(None), DEFAULT_TIMEOUT);
    assert_eq!(s(Some(Duration::ZERO)), Duration::from_secs(4));
    assert_eq!(s(Some(Duration::from_secs(1))), Duration::from_secs(1));
}

#[test]
fn a_decided_sniffer_keeps_its_answer() {
    let mut s = TcpSniffer::new();
    assert_eq!(s.sniff(&[9, 9, 9]), TcpSniff::Nothing);
    assert_eq!(
        s.sniff(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        TcpSniff::Nothing
    );
}

// --- HTTP heads ---

#[test]
fn absolute_form_uri_wins_over_host_header() {
    let stream = b"GET http://example.org:8080/x?y HTTP/1.1\r\nHost: other.example\r\n\r\n";
    assert_eq!(tcp(stream), found("example.org"));
    assert_eq!(byte_by_byte(stream), found("example.org"));
}

#[test]
fn absolute_form_without_host_falls_back_to_host_header() {
    let stream = b"GET http:///x HTTP/1.1\r\nHost: fallback.example\r\n\r\n";
    assert_eq!(tcp(stream), found("fallback.example"));
}

#[test]
fn connect_authority_names_the_host() {
    assert_eq!(
        tcp(b"CONNECT example.net:443 HTTP/1.1\r\n\r\n"),
        found("example.net")
    );
}

#[test]
fn ipv6_literal_host_loses_brackets_and_port() {
    let stream = b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n";
    assert_eq!(tcp(stream), found("::1"));
    assert_eq!(join_host_port("::1", 8080), "[::1]:8080");
}

#[test]
fn header_names_are_case_insensitive_and_values_trimmed() {
    assert_eq!(
        tcp(b"GET / HTTP/1.1\nhOsT:   example.com  \n\n"),
        found("example.com")
    );
}

#[test]
fn continuation_line_continues_the_host_header() {
    assert_eq!(
        tcp(b"GET / HTTP/1.1\r\nHost:\r\n example.com\r\n\r\n"),
        found("example.com")
    );
}

#[test]
fn head_without_host_gives_nothing() {
    assert_eq!(tcp(b"GET / HTTP/1.1\r\n\r\n"), TcpSniff::Nothing);
    assert_eq!(
        tcp(b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n"),
        TcpSniff::Nothing
    );
}

#[test]
fn heads_go_refuses_give_nothing() {
    let refused: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length:\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTrailer: Host, Content-Length\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad\x01Name: x\r\nHost: a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x7f.example\r\n\r\n",
        b"GET / HTTP/3\r\nHost: a.example\r\n\r\n",
        b"GET example.com/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"GET http://bad host/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"GET http://a.example:8x/ HTTP/1.1\r\n\r\n",
        b"GET http://%41.example/ HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a.example\r\n\r\n",
    ];
    for head in refused {
        assert_eq!(tcp(head), TcpSniff::Nothing, "{}", head.escape_ascii());
    }
}

#[test]
fn a_bad_line_ends_sniffing_before_the_head_is_complete() {
    assert_eq!(tcp(b"GET / HTTP/9.99\r\n"), TcpSniff::Nothing);
    assert_eq!(tcp(b"GET / HTTP/1.1\r\nNoColon\r\n"), TcpSniff::Nothing);
    // A header line is checked once the next line shows it does not continue.
    assert_eq!(tcp(b"GET / HTTP/1.1\r\nX:\x01\r\n"), TcpSniff::NeedMore);
    assert_eq!(tcp(b"GET / HTTP/1.1\r\nX:\x01\r\nY"), TcpSniff::Nothing);
}

#[test]
fn heads_go_accepts_give_their_host() {
    let accepted: &[(&[u8], &str)] = &[
        // Transfer-Encoding is ignored below HTTP/1.1.
        (b"GET / HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\n\r\n", "a.example"),
        (b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: Chunked\r\nContent-Length: x\r\n\r\n", "a.example"),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length:  5\r\n\r\n", "a.example"),
        // A name with a space before the colon is accepted and ignored.
        (b"GET / HTTP/1.1\r\nHost : b.example\r\nHost: a.example\r\n\r\n", "a.example"),
        (b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n", "a.example"),
        (b"OPTIONS http://user:pw@a.example/ HTTP/2.0\r\n\r\n", "a.example"),
        (b"GET http://[fe80::1%25eth0]:81/ HTTP/1.1\r\n\r\n", "fe80::1%eth0"),
        (b"GET http://caf%C3%A9.example/ HTTP/1.1\r\n\r\n", "caf\u{e9}.example"),
        (b"GET mailto:someone HTTP/1.1\r\nHost: a.example\r\n\r\n", "a.example"),
    ];
    for (head, host) in accepted {
        assert_eq!(tcp(head), found(host), "{}", head.escape_ascii());
    }
}

#[test]
fn http_head_must_end_within_the_limit() {
    let mut head = b"GET / HTTP/1.1\r\nHost: a.example\r\n".to_vec();
    let filler = b"X-Filler: 0123456789012345678901234567890123456789\r\n";
    while head.len() + filler.len() + 100 <= MAX_TCP_SNIFF_LEN {
        head.extend_from_slice(filler);
    }
    let mut fits = head.clone();
    fits.resize(MAX_TCP_SNIFF_LEN - 4, b'x');
    fits.extend_from_slice(b":\r\n\r\n");
    assert_eq!(fits.len(), MAX_TCP_SNIFF_LEN + 1);
    // The final LF is past the limit.
    assert_eq!(tcp(&fits), TcpSniff::Nothing);
    fits.remove(MAX_TCP_SNIFF_LEN - 5);
    assert_eq!(tcp(&fits), found("a.example"));

    let mut endless = head;
    endless.resize(MAX_TCP_SNIFF_LEN - 1, b'y');
    assert_eq!(tcp(&endless), TcpSniff::NeedMore);
    endless.push(b'y');
    assert_eq!(tcp(&endless), TcpSniff::Nothing);
}

#[test]
fn long_head_fed_in_small_pieces_gives_its_host() {
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'a', 200_000));
    head.extend_from_slice(b": b\r\nHost: a.example\r\n\r\n");
    let mut s = TcpSniffer::new();
    let mut answer = TcpSniff::NeedMore;
    for end in (1..=head.len()).step_by(7).chain([head.len()]) {
        answer = s.sniff(&head[..end]);
        if answer != TcpSniff::NeedMore {
            break;
        }
    }
    assert_eq!(answer, found("a.example"));
}

// --- TLS records ---

/// A ClientHello handshake message with these extensions.
fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x11; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend([0x01, 0x00]); // null compression
    let mut exts = Vec::new();
    for (ty, data) in extensions {
        exts.extend(ty.to_be_bytes());
        exts.extend(u16::try_from(data.len()).unwrap().to_be_bytes());
        exts.extend(data);
    }
    body.extend(u16::try_from(exts.len()).unwrap().to_be_bytes());
    body.extend(exts);
    let mut msg = vec![0x01];
    msg.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

fn server_name(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (ty, name) in names {
        list.push(*ty);
        list.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
        list.extend(*name);
    }
    let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    data.extend(list);
    (0, data)
}

fn record(msg: &[u8]) -> Vec<u8> {
    let mut r = vec![0x16, 0x03, 0x01];
    r.extend(u16::try_from(msg.len()).unwrap().to_be_bytes());
    r.extend(msg);
    r
}

fn rustls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    Arc::new(config)
}

fn rustls_name(name: &str) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap()
}

#[test]
fn rustls_client_hello_record_gives_its_sni() {
    let mut conn =
        rustls::ClientConnection::new(rustls_config(), rustls_name("relay.example.org")).unwrap();
    let mut stream = Vec::new();
    conn.write_tls(&mut stream).unwrap();
    assert_eq!(tcp(&stream), found("relay.example.org"));
    assert_eq!(byte_by_byte(&stream), found("relay.example.org"));
}

#[test]
fn client_hello_without_sni_gives_nothing() {
    // rustls sends no server_name for an IP address.
    let mut conn =
        rustls::ClientConnection::new(rustls_config(), rustls_name("192.0.2.1")).unwrap();
    let mut stream = Vec::new();
    conn.write_tls(&mut stream).unwrap();
    assert_eq!(tcp(&stream), TcpSniff::Nothing);
    assert_eq!(tcp(&record(&client_hello(&[]))), TcpSniff::Nothing);
    assert_eq!(
        tcp(&record(&client_hello(&[server_name(&[(0, b"")])]))),
        TcpSniff::Nothing
    );
    // A name of another type is skipped.
    assert_eq!(
        tcp(&record(&client_hello(&[server_name(&[(1, b"x.example")])]))),
        TcpSniff::Nothing
    );
}

#[test]
fn hand_built_client_hello_gives_its_sni() {
    let hello = client_hello(&[
        (0x1234, vec![1, 2, 3]), // unknown: skipped unread
        server_name(&[(1, b"other"), (0, b"x.example")]),
        (43, vec![2, 0x03, 0x04]),
    ]);
    assert_eq!(tcp(&record(&hello)), found("x.example"));
    // The official sniffer takes an application_data record and any handshake type byte.
    let mut rec = record(&hello);
    rec[0] = 0x17;
    rec[5] = 0x02;
    assert_eq!(tcp(&rec), found("x.example"));
}

#[test]
fn client_hellos_go_refuses_give_nothing() {
    let sni = || server_name(&[(0, b"x.example")]);
    let refused = [
        client_hello(&[server_name(&[(0, b"x.example.")])]),
        client_hello(&[server_name(&[(0, b"a.example"), (0, b"b.example")])]),
        client_hello(&[server_name(&[(0, &[0xff, 0xfe])])]),
        client_hello(&[sni(), sni()]),
        client_hello(&[sni(), (0x1234, vec![]), (0x1234, vec![])]),
        client_hello(&[sni(), (23, vec![0])]), // extended_master_secret with data
        client_hello(&[sni(), (10, vec![0, 0])]), // empty supported_groups
        client_hello(&[sni(), (10, vec![0, 1, 0])]), // odd supported_groups
        client_hello(&[sni(), (16, vec![0, 1, 0])]), // empty ALPN protocol
        client_hello(&[sni(), (43, vec![0])]), // empty supported_versions
        client_hello(&[sni(), (51, vec![0, 4, 0, 29, 0, 0])]), // empty key share
        client_hello(&[(41, vec![0, 7, 0, 1, b'x', 0, 0, 0, 0, 0, 2, 1, 9]), sni()]), // PSK not last
    ];
    for hello in &refused {
        assert_eq!(tcp(&record(hello)), TcpSniff::Nothing, "{hello:02x?}");
    }
    // The same PSK extension is fine in last place.
    let ok = client_hello(&[sni(), (41, vec![0, 7, 0, 1, b'x', 0, 0, 0, 0, 0, 2, 1, 9])]);
    assert_eq!(tcp(&record(&ok)), found("x.example"));
}

#[test]
fn client_hello_over_two_records_gives_nothing() {
    let hello = b64(S7_TLS)[5..].to_vec();
    let (a, b) = hello.split_at(100);
    let mut stream = record(a);
    stream.extend(record(b));
    assert_eq!(tcp(&stream), TcpSniff::Nothing);
}

#[test]
fn tls_record_needs_version_3_and_minor_at_most_9() {
    let mut rec = b64(S7_TLS);
    rec[2] = 0x0a;
    assert_eq!(tcp(&rec), TcpSniff::Nothing);
    rec[2] = 0x01;
    rec[1] = 0x02;
    assert_eq!(tcp(&rec), TcpSniff::Nothing);
}

// --- QUIC (S11, S12) ---

#[test]
fn s11_quic_v1_initial_sni() {
    assert_eq!(
        quic_initial_sni(&b64(S11_QUIC)).as_deref(),
        Some("www.notion.so")
    );
}

#[test]
fn s12_non_quic_datagram_gives_nothing() {
    assert_eq!(quic_initial_sni(b"oh my sweet summer child"), None);
    assert_eq!(quic_initial_sni(&[]), None);
}

#[test]
fn truncated_quic_initial_gives_nothing() {
    let d = b64(S11_QUIC);
    for n in 0..d.len() {
        assert_eq!(quic_initial_sni(&d[..n]), None, "prefix {n}");
    }
    // Bytes after the packet (a coalesced packet, or padding) are not read.
    let mut longer = d.clone();
    longer.extend([0xab; 40]);
    assert_eq!(quic_initial_sni(&longer).as_deref(), Some("www.notion.so"));
}

#[test]
fn tampered_quic_initial_gives_nothing() {
    let d = b64(S11_QUIC);
    for i in (0..d.len()).step_by(13) {
        let mut t = d.clone();
        t[i] ^= 0x04;
        // Flipping a bit of the type byte's packet-number-length or reserved bits changes
        // the header, which authentication covers.
        assert_eq!(quic_initial_sni(&t), None, "byte {i}");
    }
}

/// The ClientHello rustls's QUIC client sends first, for `name`.
fn rustls_quic_hello(name: &str, version: Version) -> Vec<u8> {
    let mut conn = rustls::quic::ClientConnection::new(
        rustls_config(),
        version,
        rustls_name(name),
        vec![0x01, 0x02, 0x40, 0x64], // max_idle_timeout = 100
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_hs(&mut hello);
    assert_eq!(hello.first(), Some(&0x01));
    hello
}

fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x06];
    varint::encode(offset, &mut f).unwrap();
    varint::encode(data.len() as u64, &mut f).unwrap();
    f.extend(data);
    f
}

/// A client Initial carrying `frames` (padded to 1200 bytes), protected for `version`, with
/// the wire version and long-header type bits given separately so tests can mismatch them.
fn seal_initial(version: Version, wire_version: u32, type_bits: u8, frames: &[u8]) -> Vec<u8> {
    let dcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
    let keys = TLS13_AES_128_GCM_SHA256
        .tls13()
        .unwrap()
        .quic_suite()
        .unwrap()
        .keys(&dcid, Side::Client, version);
    let pn: u32 = 2;
    let mut packet = vec![0xc0 | (type_bits << 4) | 0x03]; // 4-byte packet number
    packet.extend(wire_version.to_be_bytes());
    packet.push(dcid.len() as u8);
    packet.extend(dcid);
    packet.push(0); // empty SCID
    packet.push(0); // no token
    let mut payload = frames.to_vec();
    let header_len = packet.len() + 2 + 4;
    payload.resize(payload.len().max(1200 - header_len - 16), 0); // PADDING
    let length = 4 + payload.len() + 16;
    packet.extend((0x4000 | u16::try_from(length).unwrap()).to_be_bytes());
    let pn_offset = packet.len();
    packet.extend(pn.to_be_bytes());
    let tag = keys
        .local
        .packet
        .encrypt_in_place(u64::from(pn), &packet, &mut payload)
        .unwrap();
    packet.extend(payload);
    packet.extend(tag.as_ref());
    let sample: Vec<u8> = packet[pn_offset + 4..pn_offset + 20].to_vec();
    let (head, rest) = packet.split_at_mut(pn_offset);
    keys.local
        .header
        .encrypt_in_place(&sample, &mut head[0], &mut rest[..4])
        .unwrap();
    packet
}

#[test]
fn quic_v2_initial_round_trip() {
    let hello = rustls_quic_hello("v2.example.net", Version::V2);
    let frames = [&[0x01u8][..], &crypto_frame(0, &hello)].concat(); // PING, CRYPTO
    let packet = seal_initial(Version::V2, 0x6b33_43cf, 0b01, &frames);
    assert_eq!(quic_initial_sni(&packet).as_deref(), Some("v2.example.net"));
    // A v2 packet must use the v2 salt and labels...
    let wrong_keys = seal_initial(Version::V1, 0x6b33_43cf, 0b01, &frames);
    assert_eq!(quic_initial_sni(&wrong_keys), None);
    // ...and the v2 Initial type bits (0b00 is Retry in v2, which has no token field).
    let wrong_type = seal_initial(Version::V2, 0x6b33_43cf, 0b00, &frames);
    assert_eq!(quic_initial_sni(&wrong_type), None);
}

#[test]
fn quic_v1_initial_round_trip() {
    let hello = rustls_quic_hello("v1.example.net", Version::V1);
    let packet = seal_initial(Version::V1, 1, 0b00, &crypto_frame(0, &hello));
    assert_eq!(quic_initial_sni(&packet).as_deref(), Some("v1.example.net"));
    // Other versions are not read.
    let draft = seal_initial(
        Version::V1Draft,
        0xff00_001d,
        0b00,
        &crypto_frame(0, &hello),
    );
    assert_eq!(quic_initial_sni(&draft), None);
}

#[test]
fn crypto_frames_are_joined_by_offset() {
    let hello = rustls_quic_hello("split.example", Version::V1);
    let (a, b) = hello.split_at(50);
    let frames = [crypto_frame(50, b), vec![0x00, 0x00], crypto_frame(0, a)].concat();
    let packet = seal_initial(Version::V1, 1, 0b00, &frames);
    assert_eq!(quic_initial_sni(&packet).as_deref(), Some("split.example"));

    // A gap, a missing start, an ACK frame, or half a ClientHello give nothing.
    let gap = [crypto_frame(0, a), crypto_frame(51, b)].concat();
    let late = [crypto_frame(1, a), crypto_frame(51, b)].concat();
    let ack = [crypto_frame(0, &hello), vec![0x02, 0, 0, 0, 0]].concat();
    let half = crypto_frame(0, a);
    for frames in [gap, late, ack, half] {
        let packet = seal_initial(Version::V1, 1, 0b00, &frames);
        assert_eq!(quic_initial_sni(&packet), None);
    }
}

#[test]
fn oversized_crypto_frame_gives_nothing() {
    // The length alone is refused, before any data would be read.
    let mut frames = vec![0x06, 0x00];
    varint::encode(MAX_CRYPTO_LEN as u64 + 1, &mut frames).unwrap();
    let packet = seal_initial(Version::V1, 1, 0b00, &frames);
    assert_eq!(quic_initial_sni(&packet), None);
}

// --- Garbage ---

#[test]
fn garbage_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seeds = [
        b64(S7_TLS),
        b64(S11_QUIC),
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    ];
    for round in 0..3000 {
        let mut data = if round % 2 == 0 {
            let len = rng.gen_range(0..1500);
            (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()
        } else {
            seeds[round % seeds.len()].clone()
        };
        if let Some(first) = data.first_mut() {
            if round % 3 == 0 {
                *first = [0x16, b'G', 0xc0][round % 9 / 3];
            }
        }
        for _ in 0..rng.gen_range(0..4) {
            if !data.is_empty() {
                let i = rng.gen_range(0..data.len());
                data[i] = rng.gen();
            }
        }
        let whole = tcp(&data);
        let mut s = TcpSniffer::new();
        let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
        let first = s.sniff(&data[..split]);
        let second = s.sniff(&data);
        // An answer on a prefix is final: the whole stream gives the same one.
        assert!(first == TcpSniff::NeedMore || first == whole);
        assert_eq!(second, whole);
        let _ = quic_initial_sni(&data);
    }
}
