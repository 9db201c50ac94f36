//! Client config tests: the reference config, every key, share URIs in `server` and on the
//! command line, defaults, errors naming key and file, unknown keys, and hostile input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::*;
use crate::proto::Host;

fn parse(text: &str) -> Result<(ClientConfig, Vec<Warning>), ConfigError> {
    parse_client(text, "client.yaml")
}

fn ok(text: &str) -> ClientConfig {
    let (config, warnings) = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warnings, [], "unexpected warnings");
    config
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn domain(name: &str, port: u16) -> HostPort {
    HostPort {
        host: Host::Domain(name.into()),
        port,
    }
}

fn ip(ip: &str, port: u16) -> HostPort {
    HostPort {
        host: Host::Ip(ip.parse().unwrap()),
        port,
    }
}

/// The error for `text`, which must name `key` in `client.yaml`.
fn fails(text: &str, key: &str) -> ConfigError {
    let e = parse(text).expect_err(text);
    assert_eq!(e.origin, "client.yaml");
    assert_eq!(e.key(), Some(key), "{e}");
    assert!(
        e.to_string().starts_with(&format!("client.yaml: {key}: ")),
        "{e}"
    );
    e
}

/// A server, an auth and a mode: the least a config needs.
const BASE: &str = "server: example.com\nauth: pw\nsocks5: {listen: \"127.0.0.1:1080\"}\n";

const PIN_HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn pin() -> [u8; 32] {
    parse_pin(PIN_HEX).unwrap()
}

/// Reference §8.4, client side.
const MINIMAL: &str = "\
server: 127.0.0.1:8443
auth: testpass
tls: {sni: example.com, insecure: true}
bandwidth: {up: 100 mbps, down: 100 mbps}   # omit to use BBR
socks5: {listen: 127.0.0.1:1080}
";

#[test]
fn minimal_reference_config() {
    let c = ok(MINIMAL);
    assert_eq!(c.server, ip("127.0.0.1", 8443));
    assert_eq!(c.server.to_string(), "127.0.0.1:8443");
    assert_eq!(c.auth, "testpass");
    assert_eq!(
        c.tls,
        ClientTls {
            sni: Some("example.com".into()),
            insecure: true,
            pin_sha256: None,
            ca: None,
        }
    );
    assert_eq!(c.server_name(), "example.com");
    assert_eq!(
        c.bandwidth,
        ClientBandwidth {
            up: Some(12_500_000),
            down: Some(12_500_000),
            disable_loss_compensation: false,
        }
    );
    assert_eq!(
        c.socks5,
        Some(Socks5 {
            listen: addr("127.0.0.1:1080"),
            auth: None,
            disable_udp: false,
        })
    );
    assert_eq!(c.obfs, Obfs::Plain);
    assert_eq!(c.quic, ClientQuic::default());
}

#[test]
fn defaults() {
    let c = ok(BASE);
    assert_eq!(c.server, domain("example.com", 443));
    assert_eq!(c.server_name(), "example.com");
    assert_eq!(c.obfs, Obfs::Plain);
    assert_eq!(c.tls, ClientTls::default());
    assert_eq!(
        c.quic,
        ClientQuic {
            init_stream_receive_window: 8_388_608,
            max_stream_receive_window: 8_388_608,
            init_conn_receive_window: 20_971_520,
            max_conn_receive_window: 67_108_864,
            max_idle_timeout: Duration::from_secs(30),
            keep_alive_period: Duration::from_secs(10),
            disable_path_mtu_discovery: false,
            sockopts: SockOpts::default(),
        }
    );
    assert_eq!(c.quic.keep_alive_interval(), Duration::from_secs(10));
    assert_eq!(c.congestion, Congestion::default());
    assert_eq!(c.bandwidth, ClientBandwidth::default());
    assert!(!c.fast_open && !c.lazy);
    assert_eq!(c.http, None);
    assert_eq!(c.tcp_forwarding, []);
    assert_eq!(c.udp_forwarding, []);
    assert_eq!(
        c.pool,
        Pool {
            max_connections: 4096,
            open_wait_threshold: Duration::from_millis(200),
            stream_open_timeout: Duration::from_secs(10),
        }
    );
    assert_eq!(c.engine, Engine::default());

    // Zero means "default", as in the official client.
    let c = ok(&format!(
        "{BASE}quic: {{initStreamReceiveWindow: 0, maxIdleTimeout: 0, keepAlivePeriod: 0s}}\n\
         bandwidth: {{up: 0, down: 0 mbps}}\npool: {{maxConnections: 0, openWaitThreshold: 0}}\n\
         engine: {{workers: 0, io: auto}}\nudpForwarding: [{{listen: \":53\", remote: \"1.1.1.1:53\", timeout: 0s}}]\n"
    ));
    assert_eq!(c.quic, ClientQuic::default());
    assert_eq!(c.bandwidth, ClientBandwidth::default());
    assert_eq!(c.pool, Pool::default());
    assert_eq!(c.engine, Engine::default());
    assert_eq!(c.udp_forwarding[0].timeout, DEFAULT_UDP_FORWARDING_TIMEOUT);

    // A mode without its optional keys.
    let c = ok("server: h\nauth: a\nhttp: {listen: \":8080\"}\n");
    assert_eq!(
        c.http,
        Some(HttpProxy {
            listen: addr("[::]:8080"),
            auth: None,
            realm: "Hysteria".into(),
        })
    );
    assert_eq!(c.socks5, None);
}

/// Every key the client knows, none at its default.
const FULL: &str = include_str!("testdata/client_full.yaml");

#[test]
fn full_config() {
    let c = ok(FULL);
    let expected = ClientConfig {
        server: domain("hy2.example.com", 8443),
        hop: None,
        auth: "alice:s3cret".into(),
        obfs: Obfs::Salamander {
            password: "cry_me_a_r1ver".into(),
        },
        tls: ClientTls {
            sni: Some("real.example.com".into()),
            insecure: true,
            pin_sha256: Some(pin()),
            ca: Some(PathBuf::from("/etc/quelay/ca.pem")),
        },
        quic: ClientQuic {
            init_stream_receive_window: 16_777_216,
            max_stream_receive_window: 33_554_432,
            init_conn_receive_window: 41_943_040,
            max_conn_receive_window: 83_886_080,
            max_idle_timeout: Duration::from_secs(90),
            keep_alive_period: Duration::from_secs(20),
            disable_path_mtu_discovery: true,
            sockopts: SockOpts {
                bind_interface: Some("eth1".into()),
                fwmark: Some(51820),
            },
        },
        congestion: Congestion {
            kind: CongestionKind::Reno,
            bbr_profile: BbrProfile::Conservative,
        },
        bandwidth: ClientBandwidth {
            up: Some(6_250_000),
            down: Some(25_000_000),
            disable_loss_compensation: true,
        },
        fast_open: true,
        lazy: true,
        socks5: Some(Socks5 {
            listen: addr("127.0.0.1:1080"),
            auth: Some(ProxyAuth {
                username: "user".into(),
                password: "pass".into(),
            }),
            disable_udp: true,
        }),
        http: Some(HttpProxy {
            listen: addr("[::1]:8080"),
            auth: Some(ProxyAuth {
                username: "huser".into(),
                password: "hpass".into(),
            }),
            realm: "quelay proxy".into(),
        }),
        tcp_forwarding: vec![
            TcpForwarding {
                listen: addr("127.0.0.1:6600"),
                remote: ip("127.0.0.1", 22),
            },
            TcpForwarding {
                listen: addr("[::]:6601"),
                remote: ip("2001:db8::1", 443),
            },
        ],
        udp_forwarding: vec![UdpForwarding {
            listen: addr("127.0.0.1:5300"),
            remote: domain("dns.example.net", 53),
            timeout: Duration::from_secs(120),
        }],
        pool: Pool {
            max_connections: 8,
            open_wait_threshold: Duration::from_millis(50),
            stream_open_timeout: Duration::from_secs(5),
        },
        engine: Engine {
            workers: Some(2),
            io: Some(IoKind::Epoll),
        },
    };
    assert_eq!(c, expected);
    assert_eq!(c.server_name(), "real.example.com");
    assert_eq!(c.tcp_forwarding[1].remote.to_string(), "[2001:db8::1]:443");
}

#[test]
fn server_forms() {
    let server = |s: &str| {
        ok(&format!(
            "server: \"{s}\"\nauth: a\nsocks5: {{listen: \":1\"}}"
        ))
        .server
    };
    assert_eq!(server("example.com"), domain("example.com", 443));
    assert_eq!(server("example.com:8443"), domain("example.com", 8443));
    assert_eq!(server(" 192.0.2.7 "), ip("192.0.2.7", 443));
    assert_eq!(server("[2001:db8::1]:8443"), ip("2001:db8::1", 8443));
    assert_eq!(server("[2001:db8::1]"), ip("2001:db8::1", 443));
    // Go's parseServerAddrString: a bare IPv6 address is the host, on port 443.
    assert_eq!(server("2001:db8::1"), ip("2001:db8::1", 443));
    assert_eq!(server("::1").to_string(), "[::1]:443");
    assert_eq!(
        ok("server: \"[::1]\"\nauth: a\nsocks5: {listen: \":1\"}").server_name(),
        "::1"
    );

    // Port hopping: the lowest port is the address, the whole set hops (reference
    // portunion vectors: sorted, merged, a reversed range swapped).
    let hop = |s: &str| {
        ok(&format!(
            "server: \"{s}\"\nauth: a\nsocks5: {{listen: \":1\"}}"
        ))
    };
    let c = hop("example.com:1000-1002");
    assert_eq!(c.server.to_string(), "example.com:1000");
    let h = c.hop.expect("hopping");
    assert_eq!(h.ports, vec![1000, 1001, 1002]);
    assert_eq!(
        (h.min_interval, h.max_interval),
        (DEFAULT_HOP_INTERVAL, DEFAULT_HOP_INTERVAL)
    );
    let c = hop("[::1]:5678,1200-1202,9100-9098,1201");
    assert_eq!(c.server, ip("::1", 1200));
    assert_eq!(
        c.hop.expect("hopping").ports,
        vec![1200, 1201, 1202, 5678, 9098, 9099, 9100]
    );
    assert_eq!(hop("example.com:443").hop, None);
    for bad in [
        "example.com:1234-",
        "example.com:1234-ggez",
        "example.com:233,",
        "h:1-2-3",
        "h:0-5",
    ] {
        fails(
            &format!("server: \"{bad}\"\nauth: a\nsocks5: {{listen: \":1\"}}"),
            "server",
        );
    }
    for bad in [
        "example.com:0",
        "example.com:65536",
        "example.com:http",
        "exa mple.com",
        "a/b:443",
        "[zz]:443",
        "realm://token@rendezvous/realm",
    ] {
        fails(
            &format!("server: \"{bad}\"\nauth: a\nsocks5: {{listen: \":1\"}}"),
            "server",
        );
    }
    for missing in ["", "server: \"  \"\n", "server: ~\n"] {
        let e = fails(
            &format!("{missing}auth: a\nsocks5: {{listen: \":1\"}}"),
            "server",
        );
        assert!(e.reason.starts_with("required"), "{e}");
    }
}

#[test]
fn share_uri_in_server() {
    let c = ok("server: \"hysteria2://alice:s%3Acret@hy2.example.com:8443/?obfs=salamander&obfs-password=xyz1&sni=real.example.com&insecure=1&pinSHA256=BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD#home\"\n\
                socks5: {listen: \":1080\"}\n");
    assert_eq!(c.server, domain("hy2.example.com", 8443));
    assert_eq!(c.auth, "alice:s:cret");
    assert_eq!(
        c.obfs,
        Obfs::Salamander {
            password: "xyz1".into()
        }
    );
    assert_eq!(
        c.tls,
        ClientTls {
            sni: Some("real.example.com".into()),
            insecure: true,
            pin_sha256: Some(pin()),
            ca: None,
        }
    );

    // The file fills what the URI leaves out; the URI wins where both say something,
    // with a warning for each value it replaces.
    let (c, w) = parse(
        "server: \"hy2://uri-pass@[2001:db8::5]/?sni=uri.example&insecure=0\"\n\
         auth: file-pass\n\
         tls: {sni: file.example, insecure: true, ca: ca.pem}\n\
         obfs: {type: salamander, salamander: {password: filepw}}\n\
         socks5: {listen: \":1080\"}\n",
    )
    .unwrap();
    assert_eq!(c.server, ip("2001:db8::5", 443));
    assert_eq!(c.auth, "uri-pass");
    assert_eq!(c.tls.sni.as_deref(), Some("uri.example"));
    assert!(!c.tls.insecure);
    assert_eq!(c.tls.ca, Some(PathBuf::from("ca.pem")));
    assert_eq!(
        c.obfs,
        Obfs::Salamander {
            password: "filepw".into()
        }
    );
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["auth", "tls.sni", "tls.insecure"], "{w:?}");
    assert!(w.iter().all(|w| w.message.contains("share URI")));

    // An obfs in the URI replaces the file's section, even one that would not load alone.
    let (c, w) = parse(
        "server: \"hysteria2://p@h/?obfs=plain\"\nobfs: {type: salamander}\nsocks5: {listen: \":1\"}\n",
    )
    .unwrap();
    assert_eq!(c.obfs, Obfs::Plain);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].key, "obfs");

    // Without auth in the URI, the file's is used.
    let c = ok("server: \"hy2://h.example:443/\"\nauth: filepw\nsocks5: {listen: \":1\"}\n");
    assert_eq!(c.auth, "filepw");

    let with_uri = |uri: &str| format!("server: \"{uri}\"\nsocks5: {{listen: \":1\"}}\n");
    let c = ok(&with_uri("hysteria2://topsecret@h:1000-1001,1005/"));
    assert_eq!(c.server.to_string(), "h:1000");
    assert_eq!(c.hop.expect("hopping").ports, vec![1000, 1001, 1005]);
    // `mport` (v2rayN, mihomo share links) replaces the authority's port.
    let c = ok(&with_uri("hysteria2://topsecret@h:443/?mport=3000-3002"));
    assert_eq!(c.server.to_string(), "h:3000");
    assert_eq!(c.hop.expect("hopping").ports, vec![3000, 3001, 3002]);
    let e = fails(&with_uri("hysteria2://topsecret@h:1000-x/"), "server");
    assert!(!e.to_string().contains("topsecret"), "{e}");
    for (uri, part) in [
        ("hysteria2://topsecret@h/?insecure=maybe", "insecure"),
        ("hysteria2://topsecret@h/?pinSHA256=abc", "pinSHA256"),
        ("hysteria2://topsecret@h/?obfs=gecko", "obfs"),
        (
            "hysteria2://topsecret@h/?obfs=salamander&obfs-password=ab",
            "obfs-password",
        ),
        ("hysteria2://topsecret@h/?sni=a%20b", "sni"),
        ("hysteria2://topsecret@exa!mple.com/", "host"),
        ("https://topsecret@h/", "scheme"),
        ("hysteria2+realm://topsecret@r/realm", "scheme"),
    ] {
        let e = fails(&with_uri(uri), "server");
        assert!(
            e.reason.starts_with(&format!("share URI {part}: ")),
            "{uri}: {e}"
        );
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }
}

#[test]
fn config_from_uri() {
    let listen = addr("127.0.0.1:1080");
    let c = client_from_uri(
        "hysteria2://pass@example.com:8443/?insecure=1&obfs=salamander&obfs-password=xyz1&sni=real.example.com",
        Some(listen),
    )
    .unwrap();
    let expected = ClientConfig {
        server: domain("example.com", 8443),
        hop: None,
        auth: "pass".into(),
        obfs: Obfs::Salamander {
            password: "xyz1".into(),
        },
        tls: ClientTls {
            sni: Some("real.example.com".into()),
            insecure: true,
            pin_sha256: None,
            ca: None,
        },
        quic: ClientQuic::default(),
        congestion: Congestion::default(),
        bandwidth: ClientBandwidth::default(),
        fast_open: false,
        lazy: false,
        socks5: Some(Socks5 {
            listen,
            auth: None,
            disable_udp: false,
        }),
        http: None,
        tcp_forwarding: Vec::new(),
        udp_forwarding: Vec::new(),
        pool: Pool::default(),
        engine: Engine::default(),
    };
    assert_eq!(c, expected);
    // The same URI in a file gives the same config.
    let (from_file, _) = parse(&format!(
        "server: \"hysteria2://pass@example.com:8443/?insecure=1&obfs=salamander&obfs-password=xyz1&sni=real.example.com\"\n\
         socks5: {{listen: \"{listen}\"}}\n"
    ))
    .unwrap();
    assert_eq!(from_file, expected);

    let c = client_from_uri("hy2://[::1]", Some(listen)).unwrap();
    assert_eq!(c.server, ip("::1", 443));
    assert_eq!(c.auth, "");

    let c = client_from_uri("hysteria2://secret@h:20000-20002/", Some(listen)).unwrap();
    assert_eq!(c.server.to_string(), "h:20000");
    assert_eq!(c.hop.expect("hopping").ports, vec![20000, 20001, 20002]);
    let e = client_from_uri("hysteria2://secret@h:20000-0/", Some(listen)).unwrap_err();
    assert_eq!((e.origin.as_str(), e.key()), ("share URI", Some("port")));
    assert!(!e.to_string().contains("secret"), "{e}");
    let e = client_from_uri("hysteria2://secret@h/", None).unwrap_err();
    assert_eq!(e.at, ErrorAt::File);
    assert_eq!(
        e.to_string(),
        "share URI: no client mode configured (socks5, http, tcpForwarding or udpForwarding)"
    );
    let e = client_from_uri("socks5://h:1080", Some(listen)).unwrap_err();
    assert_eq!(e.key(), Some("scheme"));
}

#[test]
fn no_mode_is_an_error() {
    for text in [
        "server: h\nauth: a\n",
        "server: h\nauth: a\nsocks5:\nhttp: ~\n",
        "server: h\nauth: a\ntcpForwarding: []\nudpForwarding: []\n",
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(e.at, ErrorAt::File, "{e}");
        assert_eq!(
            e.to_string(),
            "client.yaml: no client mode configured (socks5, http, tcpForwarding or udpForwarding)"
        );
    }
    // Any one mode is enough.
    ok("server: h\nauth: a\ntcpForwarding: [{listen: \":1\", remote: \"h:2\"}]\n");
    ok("server: h\nauth: a\nudpForwarding: [{listen: \":1\", remote: \"h:2\"}]\n");
}

#[test]
fn forwarding_entries_named_by_index() {
    let tcp = |entries: &str| format!("server: h\nauth: a\ntcpForwarding: [{entries}]\n");
    let good = "{listen: \"127.0.0.1:1\", remote: \"example.com:22\"}";
    let cases: &[(&str, &str, &str)] = &[
        (
            "{listen: \":2\", remote: \"example.com\"}",
            "tcpForwarding[1].remote",
            "missing port",
        ),
        (
            "{listen: \":2\", remote: \"::1:53\"}",
            "tcpForwarding[1].remote",
            "IPv6 needs brackets",
        ),
        (
            "{listen: \":2\", remote: \"h:0\"}",
            "tcpForwarding[1].remote",
            "port 0",
        ),
        (
            "{listen: \":2\", remote: \"h:99999\"}",
            "tcpForwarding[1].remote",
            "port",
        ),
        (
            "{listen: \":2\", remote: \"exa mple.com:1\"}",
            "tcpForwarding[1].remote",
            "domain",
        ),
        ("{listen: \":2\"}", "tcpForwarding[1].remote", "required"),
        ("{remote: \"h:2\"}", "tcpForwarding[1].listen", "required"),
        (
            "{listen: \"example.com:2\", remote: \"h:2\"}",
            "tcpForwarding[1].listen",
            "not an IP address",
        ),
        (
            "{listen: 2, remote: \"h:2\"}",
            "tcpForwarding[1].listen",
            "missing port",
        ),
        ("5", "tcpForwarding[1]", "expected a mapping"),
    ];
    for &(entry, key, reason) in cases {
        let e = fails(&tcp(&format!("{good}, {entry}")), key);
        assert!(e.reason.contains(reason), "{e} (wanted {reason:?})");
    }
    let e = fails(
        "server: h\nauth: a\nudpForwarding: [{listen: \":1\", remote: \"h:1\"}, {listen: \":2\", remote: \"h:2\"}, {listen: \":3\", remote: \"[::1:3\"}]\n",
        "udpForwarding[2].remote",
    );
    assert!(e.reason.contains("[::1:3"), "{e}");
    fails(
        "server: h\nauth: a\nudpForwarding: [{listen: \":1\", remote: \"h:1\", timeout: 10}]\n",
        "udpForwarding[0].timeout",
    );
    fails(
        "server: h\nauth: a\ntcpForwarding: {listen: \":1\", remote: \"h:1\"}\n",
        "tcpForwarding",
    );
    let e = fails(
        "server: h\nauth: a\ntcpForwarding: [{listen: \":1\", remote: \"h:1\"}]\ntcpforwarding: []\n",
        "tcpforwarding",
    );
    assert!(e.reason.contains("given twice"), "{e}");
}

#[test]
fn range_errors_name_key_and_file() {
    let e = fails(
        &format!("{BASE}quic: {{keepAlivePeriod: 1s}}"),
        "quic.keepAlivePeriod",
    );
    assert_eq!(
        e.to_string(),
        "client.yaml: quic.keepAlivePeriod: 1s is out of range (2s to 60s)"
    );
    let e = fails(
        &format!("{BASE}quic: {{maxIdleTimeout: 121s}}"),
        "quic.maxIdleTimeout",
    );
    assert_eq!(e.reason, "121s is out of range (4s to 120s)");
    let cases: &[(&str, &str)] = &[
        ("quic: {maxIdleTimeout: 3s}", "quic.maxIdleTimeout"),
        ("quic: {keepAlivePeriod: 61s}", "quic.keepAlivePeriod"),
        ("quic: {keepAlivePeriod: 1999ms}", "quic.keepAlivePeriod"),
        (
            "quic: {initStreamReceiveWindow: 16383}",
            "quic.initStreamReceiveWindow",
        ),
        (
            "quic: {maxStreamReceiveWindow: 1000}",
            "quic.maxStreamReceiveWindow",
        ),
        (
            "quic: {initConnReceiveWindow: 1}",
            "quic.initConnReceiveWindow",
        ),
        (
            "quic: {maxConnReceiveWindow: 4611686018427387904}",
            "quic.maxConnReceiveWindow",
        ),
        ("pool: {maxConnections: 65537}", "pool.maxConnections"),
        ("pool: {maxConnections: -1}", "pool.maxConnections"),
        ("pool: {streamOpenTimeout: 999ms}", "pool.streamOpenTimeout"),
        ("pool: {streamOpenTimeout: 121s}", "pool.streamOpenTimeout"),
        ("pool: {openWaitThreshold: 10s}", "pool.openWaitThreshold"),
        (
            "pool: {openWaitThreshold: 2s, streamOpenTimeout: 1s}",
            "pool.openWaitThreshold",
        ),
        ("engine: {workers: 100000}", "engine.workers"),
        (
            "obfs: {type: salamander, salamander: {password: abc}}",
            "obfs.salamander.password",
        ),
        (
            "udpForwarding: [{listen: \":1\", remote: \"h:1\", timeout: -1s}]",
            "udpForwarding[0].timeout",
        ),
    ];
    for &(extra, key) in cases {
        fails(&format!("{BASE}{extra}\n"), key);
    }
    // Bounds themselves are allowed.
    let c = ok(&format!(
        "{BASE}quic: {{maxIdleTimeout: 4s, keepAlivePeriod: 60s, initStreamReceiveWindow: 16384}}\n\
         pool: {{maxConnections: 65536, streamOpenTimeout: 1s, openWaitThreshold: 999ms}}\n"
    ));
    // The PING interval stays below the idle timeout.
    assert_eq!(c.quic.keep_alive_interval(), Duration::from_secs(2));
    ok(&format!(
        "{BASE}quic: {{maxIdleTimeout: 2m, keepAlivePeriod: 2s}}\npool: {{streamOpenTimeout: 2m, maxConnections: 1}}\n"
    ));
    // Unlike the server, the client takes any rate.
    let c = ok(&format!("{BASE}bandwidth: {{up: 100 kbps, down: 8}}"));
    assert_eq!((c.bandwidth.up, c.bandwidth.down), (Some(12_500), Some(1)));
}

#[test]
fn refused_and_required() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "transport: {type: wireguard}",
            "transport.type",
            "unsupported",
        ),
        ("tun: {name: hytun}", "tun", "tun mode is not supported"),
        ("tun: {}", "tun", "not supported"),
        (
            "tcpTProxy: {listen: \":2500\"}",
            "tcpTProxy",
            "tcpTProxy mode is not supported",
        ),
        (
            "udpTProxy: {listen: \":2500\"}",
            "udpTProxy",
            "not supported",
        ),
        (
            "tcpRedirect: {listen: \":3500\"}",
            "tcpRedirect",
            "not supported",
        ),
        (
            "tls: {clientCertificate: c.pem}",
            "tls.clientCertificate",
            "not supported",
        ),
        ("tls: {clientKey: k.pem}", "tls.clientKey", "not supported"),
        ("tls: {ech: AEn+DQBF}", "tls.ech", "ECH is not supported"),
        ("tls: {pinSHA256: abc}", "tls.pinSHA256", "SHA-256"),
        ("tls: {sni: \"a b\"}", "tls.sni", "not a DNS name"),
        (
            "quic: {sockopts: {bindInterface: \"eth0 x\"}}",
            "quic.sockopts.bindInterface",
            "not an interface name",
        ),
        (
            "quic: {sockopts: {fwmark: 4294967296}}",
            "quic.sockopts.fwmark",
            "not a 32-bit mark",
        ),
        (
            "quic: {sockopts: {fdControlUnixSocket: /run/protect}}",
            "quic.sockopts.fdControlUnixSocket",
            "not supported",
        ),
        (
            "obfs: {type: gecko}",
            "obfs.type",
            "gecko obfuscation is not supported",
        ),
        ("obfs: {type: xor}", "obfs.type", "unsupported"),
        (
            "congestion: {type: vegas}",
            "congestion.type",
            "unsupported",
        ),
        ("bandwidth: {up: 1.5 gbps}", "bandwidth.up", "unknown unit"),
        (
            "bandwidth: {down: 10 mibps}",
            "bandwidth.down",
            "unknown unit",
        ),
        ("mimic: {enabled: true}", "mimic.enabled", "not supported"),
        (
            "socks5: {listen: \":1\", username: u}",
            "socks5.password",
            "required when username is set",
        ),
        (
            "socks5: {listen: \":1\", password: p}",
            "socks5.username",
            "required when password is set",
        ),
        ("socks5: {}", "socks5.listen", "required"),
        ("socks5: {listen: 1080}", "socks5.listen", "missing port"),
        (
            "socks5: {listen: \":1\", disableUDP: maybe}",
            "socks5.disableUDP",
            "expected true or false",
        ),
        ("http: {listen: \"[::1]\"}", "http.listen", "missing port"),
        (
            "http: {listen: \":1\", username: u}",
            "http.password",
            "required",
        ),
        (
            "http: {listen: \":1\", realm: \"a\\\"b\"}",
            "http.realm",
            "quotes",
        ),
        ("engine: {io: kqueue}", "engine.io", "unsupported"),
        ("fastOpen: sometimes", "fastOpen", "expected true or false"),
        ("quic: 5", "quic", "expected a mapping"),
        ("auth: [a, b]", "auth", "expected text"),
        ("server: {host: h}", "server", "expected text"),
    ];
    for &(extra, key, reason) in cases {
        let e = fails(&with_base(extra), key);
        assert!(e.reason.contains(reason), "{e} (wanted {reason:?})");
    }
    // Unset values of refused keys are fine, as the official defaults.
    ok(&format!(
        "{BASE}tls: {{clientCertificate: \"\", ech: \"\"}}\ntransport: {{type: UDP, udp: {{hopInterval: 0}}}}\n\
         quic: {{sockopts: {{fwmark: 0, bindInterface: \"\"}}}}\ntun:\ntcpRedirect: ~\n"
    ));
}

/// [`BASE`] with `extra` added, replacing the line of [`BASE`] that sets the same key.
fn with_base(extra: &str) -> String {
    let key = |line: &str| line.split(':').next().unwrap_or("").to_owned();
    let mut text: String = BASE
        .lines()
        .filter(|l| key(l) != key(extra))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(extra);
    text.push('\n');
    text
}

#[test]
fn official_weak_typing() {
    let c = ok("Server: example.com:443\nAUTH: 12345678\nTLS: {Insecure: \"true\", PINSHA256: \"BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD\"}\n\
                fastopen: 1\nSocks5: {Listen: \":1080\", DisableUDP: \"1\"}\nquic: {maxidletimeout: 1m, keepAlivePeriod: \"15s\"}\n");
    assert_eq!(c.auth, "12345678");
    assert!(c.tls.insecure && c.fast_open);
    assert_eq!(c.tls.pin_sha256, Some(pin()));
    assert!(c.socks5.unwrap().disable_udp);
    assert_eq!(c.quic.max_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.quic.keep_alive_period, Duration::from_secs(15));
    // A boolean where text is wanted becomes "1"/"0" like Go, with a warning.
    let (c, w) = parse("server: h\nauth: true\nsocks5: {listen: \":1\"}\n").unwrap();
    assert_eq!(c.auth, "1");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].key, "auth");
    // An empty auth loads, with a warning.
    let (c, w) = parse("server: h\nsocks5: {listen: \":1\"}\n").unwrap();
    assert_eq!(c.auth, "");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].key, "auth");
}

#[test]
fn unknown_keys_are_warnings_with_dotted_paths() {
    let text = format!(
        "{BASE}bogus: 1\nquic:\n  keepAlivePeriode: 10s\n  sockopts: {{fwmrak: 1}}\n\
         tls: {{snii: x}}\nhttp: {{listen: \":8080\", relm: r}}\n\
         tcpForwarding: [{{listen: \":1\", remote: \"h:1\"}}, {{listen: \":2\", remote: \"h:2\", extra: 1}}]\n\
         udpForwarding: [{{listen: \":3\", remote: \"h:3\", timeOut: 5s, timout: 5s}}]\n\
         pool: {{maxConnection: 2}}\ntransport: {{udp: {{hop: 1}}}}\n"
    );
    let (config, warnings) = parse(&text).unwrap();
    assert_eq!(config.quic.keep_alive_period, DEFAULT_KEEP_ALIVE_PERIOD);
    // Keys are case-insensitive, so `timeOut` is `timeout`.
    assert_eq!(config.udp_forwarding[0].timeout, Duration::from_secs(5));
    let keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
    for key in [
        "bogus",
        "quic.keepAlivePeriode",
        "quic.sockopts.fwmrak",
        "tls.snii",
        "http.relm",
        "tcpForwarding[1].extra",
        "udpForwarding[0].timout",
        "pool.maxConnection",
        "transport.udp.hop",
    ] {
        assert!(keys.contains(&key), "no warning for {key}: {keys:?}");
    }
    assert_eq!(keys.len(), 9, "{keys:?}");
    assert!(warnings
        .iter()
        .all(|w| w.message == "unknown key (ignored)"));
}

/// Every mapping of the full config, with an extra key added, warns about exactly that key:
/// no section forgets to report what it did not read.
#[test]
fn every_section_reports_unknown_keys() {
    let root: Value = serde_norway::from_str(FULL).unwrap();
    let mut paths = Vec::new();
    collect_mappings(&root, String::new(), &mut paths);
    assert!(paths.len() > 15, "{paths:?}");
    for path in paths {
        let mut root = root.clone();
        lookup(&mut root, &path).insert("zzBogus".into(), Value::from(1));
        let text = serde_norway::to_string(&root).unwrap();
        let (_, warnings) = parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let want = if path.is_empty() {
            "zzBogus".to_owned()
        } else {
            format!("{path}.zzBogus")
        };
        assert_eq!(
            warnings,
            [Warning::new(want, "unknown key (ignored)")],
            "adding a key to {path:?}"
        );
    }
}

fn collect_mappings(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let p = if path.is_empty() {
                    k.to_owned()
                } else {
                    format!("{path}.{k}")
                };
                collect_mappings(v, p, out);
            }
            out.push(path);
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_mappings(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn lookup<'a>(mut v: &'a mut Value, path: &str) -> &'a mut Mapping {
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (part, None),
        };
        v = v.as_mapping_mut().unwrap().get_mut(name).unwrap();
        if let Some(i) = index {
            v = v.as_sequence_mut().unwrap().get_mut(i).unwrap();
        }
    }
    v.as_mapping_mut().unwrap()
}

#[test]
fn other_warnings() {
    let (c, w) = parse(&format!(
        "{BASE}obfs: {{salamander: {{password: abcd}}}}\nrealm: {{stunServers: [a]}}\n"
    ))
    .unwrap();
    assert_eq!(c.obfs, Obfs::Plain);
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["obfs.salamander.password", "realm"], "{w:?}");
}

#[test]
fn hostile_input_fails_cleanly() {
    assert!(parse(&"[".repeat(100_000)).is_err());
    assert!(parse(&"{a: ".repeat(MAX_FLOW_COLLECTIONS)).is_err());
    // A byte-order mark (Windows editors) is not content; the YAML parser, given one, reads
    // anything past the first line as a second document.
    parse("\u{feff}server: h\nauth: a\nsocks5: {listen: \":1\"}").unwrap();
    parse_server(
        "\u{feff}listen: :443\nauth: {type: password, password: x}\n",
        "s.yaml",
    )
    .unwrap();
    for text in [
        "",
        "~",
        "42",
        "- a\n",
        "server: *nope",
        "server: !!binary aGk=",
    ] {
        assert!(parse(text).is_err(), "{text:?}");
    }
    for uri in [
        "",
        "hysteria2://",
        "hysteria2://@",
        "hysteria2://[",
        "hysteria2://[]:1",
        "hysteria2://h:",
        "hysteria2://h:-",
        "hysteria2://%",
        "hy2://a@b@c:1/?&&=&#%",
        "hysteria2://h/?insecure",
        "hysteria2://\u{0}",
        "hysteria2://é:1",
    ] {
        let _ = client_from_uri(uri, Some(addr("127.0.0.1:1")));
        let _ = parse(&format!("server: {:?}\nsocks5: {{listen: \":1\"}}\n", uri));
    }
    // Every prefix and many one-byte corruptions of the full config: errors, never panics.
    let bytes = FULL.as_bytes();
    for cut in (0..bytes.len()).step_by(3) {
        if let Ok(prefix) = std::str::from_utf8(&bytes[..cut]) {
            let _ = parse(prefix);
        }
    }
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..1000 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let mut b = bytes.to_vec();
        let at = seed as usize % b.len();
        b[at] = b"{}[]:,-&*!|>'\"%@`#?0 \n\t9xZ"[(seed >> 16) as usize % 26];
        if let Ok(text) = std::str::from_utf8(&b) {
            let _ = parse(text);
        }
    }
}

#[test]
fn load_client_file() {
    let dir = std::env::temp_dir().join(format!("quelay-clientcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client.yaml");
    std::fs::write(&file, format!("{MINIMAL}bogus: 1\n")).unwrap();
    let (c, w) = load_client(&file).unwrap();
    assert_eq!(c.server, ip("127.0.0.1", 8443));
    assert_eq!(w, [Warning::new("bogus", "unknown key (ignored)")]);

    std::fs::write(&file, format!("{MINIMAL}quic: {{maxIdleTimeout: 1s}}\n")).unwrap();
    let e = load_client(&file).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: quic.maxIdleTimeout: 1s is out of range (4s to 120s)",
            file.display()
        )
    );
    let e = load_client(&dir.join("nope.yaml")).unwrap_err();
    assert_eq!(e.at, ErrorAt::File);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn host_port_display() {
    let v6 = HostPort {
        host: Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        port: 53,
    };
    assert_eq!(v6.to_string(), "[::1]:53");
    let v4 = HostPort {
        host: Host::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        port: 443,
    };
    assert_eq!(v4.to_string(), "192.0.2.1:443");
    assert_eq!(domain("example.com", 8443).to_string(), "example.com:8443");
}

#[test]
fn hop_intervals_as_the_reference() {
    let with = |udp: &str| {
        format!("server: \"h:1000-1010\"\nauth: a\nsocks5: {{listen: \":1\"}}\ntransport: {{udp: {udp}}}\n")
    };
    let hop = |udp: &str| ok(&with(udp)).hop.expect("hopping");
    let secs = Duration::from_secs;
    let h = hop("{}");
    assert_eq!((h.min_interval, h.max_interval), (secs(30), secs(30)));
    let h = hop("{hopInterval: 45s}");
    assert_eq!((h.min_interval, h.max_interval), (secs(45), secs(45)));
    let h = hop("{minHopInterval: 10s, maxHopInterval: 30s}");
    assert_eq!((h.min_interval, h.max_interval), (secs(10), secs(30)));
    for (udp, reason) in [
        (
            "{minHopInterval: 10s}",
            "minHopInterval and maxHopInterval must both be set",
        ),
        (
            "{maxHopInterval: 10s}",
            "minHopInterval and maxHopInterval must both be set",
        ),
        (
            "{minHopInterval: 30s, maxHopInterval: 10s}",
            "must not be greater",
        ),
        (
            "{minHopInterval: 4s, maxHopInterval: 6s}",
            "at least 5 seconds",
        ),
        ("{hopInterval: 1s}", "at least 5 seconds"),
        (
            "{hopInterval: 30s, minHopInterval: 10s}",
            "cannot be used together",
        ),
    ] {
        let e = fails(&with(udp), "transport.udp");
        assert!(e.reason.contains(reason), "{udp}: {e}");
    }
}
