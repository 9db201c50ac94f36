//! Server config tests: the reference configs, defaults, every error naming its key, unknown
//! keys, and inputs that must fail cleanly rather than panic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::*;

fn parse(text: &str) -> Result<(ServerConfig, Vec<Warning>), ConfigError> {
    parse_server(text, "server.yaml")
}

fn ok(text: &str) -> ServerConfig {
    let (config, warnings) = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warnings, [], "unexpected warnings");
    config
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The error for `text`, which must name `key` in `server.yaml`.
fn fails(text: &str, key: &str) -> ConfigError {
    let e = parse(text).expect_err(text);
    assert_eq!(e.origin, "server.yaml");
    assert_eq!(e.key(), Some(key), "{e}");
    assert!(
        e.to_string().starts_with(&format!("server.yaml: {key}: ")),
        "{e}"
    );
    e
}

const AUTH: &str = "auth: {type: password, password: pw}\n";

/// Reference §8.4, server side.
const MINIMAL: &str = "\
listen: 127.0.0.1:8443
tls: {cert: cert.pem, key: key.pem, sniGuard: disable}
auth: {type: password, password: testpass}
# obfs: {type: salamander, salamander: {password: obfspass}}
";

#[test]
fn minimal_reference_config() {
    let c = ok(MINIMAL);
    assert_eq!(c.listen, addr("127.0.0.1:8443"));
    assert_eq!(
        c.tls,
        Some(Tls {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            sni_guard: SniGuard::Disable,
            client_ca: None,
        })
    );
    assert_eq!(c.auth, Auth::Password("testpass".into()));
    assert_eq!(c.obfs, Obfs::Plain);
    assert_eq!(c.quic, Quic::default());
}

#[test]
fn defaults() {
    let c = ok(AUTH);
    assert_eq!(c.listen, addr("[::]:443"));
    assert_eq!(c.tls, None);
    assert_eq!(c.obfs, Obfs::Plain);
    assert_eq!(
        c.quic,
        Quic {
            init_stream_receive_window: 8_388_608,
            max_stream_receive_window: 8_388_608,
            init_conn_receive_window: 20_971_520,
            max_conn_receive_window: 67_108_864,
            max_idle_timeout: Duration::from_secs(30),
            max_incoming_streams: 1024,
            disable_path_mtu_discovery: false,
        }
    );
    assert_eq!(
        c.congestion,
        Congestion {
            kind: CongestionKind::Bbr,
            bbr_profile: BbrProfile::Standard
        }
    );
    assert_eq!(c.bandwidth, Bandwidth::default());
    assert!(!c.ignore_client_bandwidth && !c.speed_test && !c.disable_udp);
    assert_eq!(c.udp_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.sniff, None);
    assert_eq!(c.acl, None);
    assert_eq!(c.outbounds, []);
    assert_eq!(c.traffic_stats, None);
    assert_eq!(c.masquerade, Masquerade::default());
    assert_eq!(c.masquerade.handler, MasqueradeHandler::NotFound);
    assert_eq!(
        c.outbound_guard,
        OutboundGuard {
            allow_loopback: false,
            allow_link_local: false
        }
    );
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.engine, Engine::default());
    assert_eq!(c.metrics, None);

    // Zero means "default", as in the official server.
    let c = ok(&format!(
        "{AUTH}quic: {{initStreamReceiveWindow: 0, maxIdleTimeout: 0, maxIncomingStreams: 0}}\n\
         udpIdleTimeout: 0s\nbandwidth: {{up: 0, down: 0 mbps}}\nlimits: {{maxStreams: 0}}\n\
         engine: {{workers: 0, io: auto}}\nlisten: \"\"\n"
    ));
    assert_eq!(c.quic, Quic::default());
    assert_eq!(c.udp_idle_timeout, DEFAULT_UDP_IDLE_TIMEOUT);
    assert_eq!(c.bandwidth, Bandwidth::default());
    assert_eq!(c.limits.max_streams, None);
    assert_eq!(c.engine, Engine::default());
    assert_eq!(c.listen, addr("[::]:443"));
}

/// Every key the server knows, none at its default.
const FULL: &str = include_str!("testdata/full.yaml");

#[test]
fn full_config() {
    let c = ok(FULL);
    let expected = ServerConfig {
        listen: addr("0.0.0.0:8443"),
        listen_ports: None,
        cluster: None,
        tls: Some(Tls {
            cert: "/etc/quelay/cert.pem".into(),
            key: "/etc/quelay/key.pem".into(),
            sni_guard: SniGuard::Strict,
            client_ca: Some("/etc/quelay/ca.pem".into()),
        }),
        acme: None,
        obfs: Obfs::Salamander {
            password: "cry_me_a_r1ver".into(),
        },
        quic: Quic {
            init_stream_receive_window: 16_777_216,
            max_stream_receive_window: 33_554_432,
            init_conn_receive_window: 41_943_040,
            max_conn_receive_window: 83_886_080,
            max_idle_timeout: Duration::from_secs(90),
            max_incoming_streams: 4096,
            disable_path_mtu_discovery: true,
        },
        congestion: Congestion {
            kind: CongestionKind::Reno,
            bbr_profile: BbrProfile::Aggressive,
        },
        bandwidth: Bandwidth {
            up: Some(125_000_000),
            down: Some(12_500_000),
            disable_loss_compensation: true,
        },
        ignore_client_bandwidth: true,
        speed_test: true,
        disable_udp: true,
        udp_idle_timeout: Duration::from_secs(120),
        auth: Auth::UserPass(BTreeMap::from([
            ("alice".into(), "pass1".into()),
            ("bob".into(), "pass:2".into()),
        ])),
        sniff: Some(Sniff {
            timeout: Some(Duration::from_secs(2)),
            rewrite_domain: true,
            tcp_ports: Some(PortSet::parse("80,443,8000-9000").unwrap()),
            udp_ports: Some(PortSet::all()),
        }),
        resolver: Resolver::System,
        acl: Some(Acl {
            rules: AclRules::Inline(vec!["reject(geoip:cn)".into(), "direct(all)".into()]),
            geoip: Some("/var/lib/quelay/geoip.mmdb".into()),
            geosite: Some("/var/lib/quelay/geosite.dat".into()),
            geo_update_interval: Duration::from_secs(72 * 3600),
            geoip_url: None,
            geosite_url: None,
        }),
        outbounds: vec![Outbound {
            name: "out".into(),
            kind: OutboundKind::Direct(DirectOutbound {
                mode: DirectMode::Prefer4,
                bind: OutboundBind::Addresses {
                    v4: Some("192.0.2.1".parse().unwrap()),
                    v6: Some("2001:db8::1".parse().unwrap()),
                },
                fast_open: true,
            }),
        }],
        traffic_stats: Some(TrafficStats {
            listen: addr("127.0.0.1:9999"),
            secret: "s3cret".into(),
        }),
        masquerade: Masquerade {
            handler: MasqueradeHandler::String {
                content: "hello".into(),
                headers: BTreeMap::from([
                    ("content-type".into(), "text/plain".into()),
                    ("x-custom".into(), "1".into()),
                ]),
                status_code: 418,
            },
            listen_http: Some(addr("[::]:80")),
            listen_https: Some(addr("[::]:443")),
            force_https: true,
        },
        outbound_guard: OutboundGuard {
            allow_loopback: true,
            allow_link_local: true,
        },
        limits: Limits {
            max_streams_per_user: Some(10_000),
            max_streams: Some(100_000),
            max_connections_per_user: Some(8),
            max_udp_sessions_per_user: Some(512),
            max_sockets_per_user: Some(2000),
            receive_window_budget: Some(512 << 20),
            auth_timeout: Some(Duration::from_secs(20)),
            max_unauthenticated: Some(5000),
            max_unauthenticated_per_source: Some(32),
            max_unvalidated_handshakes: Some(64),
            handshakes_per_second: Some(10_000),
        },
        engine: Engine {
            workers: Some(2),
            io: Some(IoKind::Epoll),
        },
        metrics: Some(Metrics {
            listen: addr("127.0.0.1:9100"),
        }),
    };
    assert_eq!(c, expected);
}

#[test]
fn selected_types() {
    let with = |extra: &str| ok(&format!("{AUTH}{extra}"));
    assert_eq!(
        ok("auth: {type: HTTP, http: {url: \"http://127.0.0.1:8080/auth\"}}").auth,
        Auth::Http {
            url: "http://127.0.0.1:8080/auth".into(),
            insecure: false
        }
    );
    for kind in ["command", "CMD"] {
        assert_eq!(
            ok(&format!(
                "auth: {{type: {kind}, command: /etc/hysteria/auth.sh}}"
            ))
            .auth,
            Auth::Command("/etc/hysteria/auth.sh".into())
        );
    }
    assert_eq!(
        with("masquerade: {type: file, file: {dir: /srv/www}}")
            .masquerade
            .handler,
        MasqueradeHandler::File {
            dir: "/srv/www".into()
        }
    );
    assert_eq!(
        with("masquerade: {type: proxy, proxy: {url: \"https://news.example.com/\", rewriteHost: true}}")
            .masquerade
            .handler,
        MasqueradeHandler::Proxy {
            url: "https://news.example.com/".into(),
            rewrite_host: true,
            x_forwarded: false,
            insecure: false
        }
    );
    assert_eq!(
        with("masquerade: {type: string, string: {content: hi}}")
            .masquerade
            .handler,
        MasqueradeHandler::String {
            content: "hi".into(),
            headers: BTreeMap::new(),
            status_code: 200
        }
    );
    assert_eq!(
        with("masquerade: {type: 404}").masquerade.handler,
        MasqueradeHandler::NotFound
    );
    assert_eq!(
        with("acl: {file: rules.acl}").acl.map(|a| a.rules),
        Some(AclRules::File("rules.acl".into()))
    );
    assert_eq!(
        with("acl: {file: rules.acl}")
            .acl
            .map(|a| a.geo_update_interval),
        Some(DEFAULT_GEO_UPDATE_INTERVAL)
    );
    // 0 means the default, as in the reference.
    assert_eq!(
        with("acl: {file: rules.acl, geoUpdateInterval: 0s}")
            .acl
            .map(|a| a.geo_update_interval),
        Some(DEFAULT_GEO_UPDATE_INTERVAL)
    );
    let acl = with(
        "acl: {file: rules.acl, geoipURL: \"http://mirror.example/geoip.dat\", \
         geositeurl: \"HTTPS://mirror.example:8443/g/geosite.dat?v=1\"}",
    )
    .acl
    .unwrap();
    assert_eq!(
        (acl.geoip_url.as_deref(), acl.geosite_url.as_deref()),
        (
            Some("http://mirror.example/geoip.dat"),
            Some("HTTPS://mirror.example:8443/g/geosite.dat?v=1")
        )
    );
    assert_eq!(
        with("acl: {file: rules.acl, geoipURL: \"\"}")
            .acl
            .map(|a| (a.geoip_url, a.geosite_url)),
        Some((None, None))
    );
    assert_eq!(with("obfs: {type: plain}").obfs, Obfs::Plain);
    assert_eq!(
        with("obfs: {type: Salamander, salamander: {password: abcd}}").obfs,
        Obfs::Salamander {
            password: "abcd".into()
        }
    );
    assert_eq!(
        with("engine: {io: io_uring}").engine.io,
        Some(IoKind::Uring)
    );
    assert_eq!(
        with("outbounds: [{name: d, type: direct, direct: {bindDevice: eth1, mode: 6}}]").outbounds,
        [Outbound {
            name: "d".into(),
            kind: OutboundKind::Direct(DirectOutbound {
                mode: DirectMode::Only6,
                bind: OutboundBind::Device("eth1".into()),
                fast_open: false
            }),
        }]
    );
    assert_eq!(
        with(
            "outbounds: [{name: s, type: SOCKS5, socks5: {addr: \"proxy.example:1080\", \
             username: u, password: p}}, {name: h, type: http, http: \
             {url: \"https://us%40r:p%3Ass@[2001:db8::1]/ignored\", insecure: true}}, \
             {name: h2, type: http, http: {url: \"http://10.0.0.1:3128\"}}]\nacl: {inline: [\"s(all)\"]}"
        )
        .outbounds,
        [
            Outbound {
                name: "s".into(),
                kind: OutboundKind::Socks5(Socks5Outbound {
                    addr: "proxy.example:1080".into(),
                    auth: Some(("u".into(), "p".into())),
                }),
            },
            Outbound {
                name: "h".into(),
                kind: OutboundKind::Http(HttpOutbound {
                    host: "2001:db8::1".into(),
                    port: 443,
                    tls: true,
                    insecure: true,
                    auth: Some(("us@r".into(), "p:ss".into())),
                }),
            },
            Outbound {
                name: "h2".into(),
                kind: OutboundKind::Http(HttpOutbound {
                    host: "10.0.0.1".into(),
                    port: 3128,
                    tls: false,
                    insecure: false,
                    auth: None,
                }),
            },
        ]
    );
    assert_eq!(
        with("tls: {cert: c, key: k}").tls.map(|t| t.sni_guard),
        Some(SniGuard::DnsSan)
    );
}

#[test]
fn listen_forms() {
    let listen = |l: &str| ok(&format!("{AUTH}listen: \"{l}\"")).listen;
    assert_eq!(listen(":443"), addr("[::]:443"));
    assert_eq!(listen(":8443"), addr("[::]:8443"));
    assert_eq!(listen("[::1]:8443"), addr("[::1]:8443"));
    assert_eq!(listen("192.0.2.7:443"), addr("192.0.2.7:443"));
    // Port hopping: the lowest port is bound, the others come through a redirect.
    let c = ok(&format!("{AUTH}listen: \":20000-20002,20010\""));
    assert_eq!(c.listen, addr("[::]:20000"));
    let ports = c.listen_ports.expect("port hopping");
    assert_eq!(ports.text, "20000-20002,20010");
    assert_eq!(ports.ports, vec![20000, 20001, 20002, 20010]);
    let c = ok(&format!("{AUTH}listen: \"127.0.0.1:9003-9001,9008\""));
    assert_eq!(c.listen, addr("127.0.0.1:9001"));
    assert_eq!(
        c.listen_ports.expect("hopping").ports,
        vec![9001, 9002, 9003, 9008]
    );
    assert_eq!(ok(&format!("{AUTH}listen: \":443\"")).listen_ports, None);
    fails(&format!("{AUTH}listen: \":9001-\""), "listen");
    fails(&format!("{AUTH}listen: \":0-3\""), "listen");
    fails(&format!("{AUTH}listen: 443"), "listen");
    fails(&format!("{AUTH}listen: \"example.com:443\""), "listen");
    fails(
        &format!("{AUTH}listen: \"realm://token@host/realm\""),
        "listen",
    );
}

#[test]
fn removed_users_are_userpass_names_gone_from_the_new_config() {
    let users = |names: &[(&str, &str)]| {
        Auth::UserPass(
            names
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        )
    };
    let old = users(&[("alice", "a"), ("bob", "b"), ("carol", "c")]);
    let new = users(&[("alice", "changed"), ("carol", "c"), ("dave", "d")]);
    assert_eq!(old.removed_users(&new), vec!["bob".to_string()]);
    assert!(new.removed_users(&new).is_empty());
    assert!(old.removed_users(&Auth::Password("pw".into())).is_empty());
    assert!(Auth::Password("a".into())
        .removed_users(&Auth::Password("b".into()))
        .is_empty());
}

/// `limits.maxUdpSessionsPerUser` and `limits.maxSocketsPerUser`: absent is the default,
/// 0 is kept (no cap, unlike the other caps' 0 = absent), a bad value names its key.
#[test]
fn per_user_socket_caps() {
    let l = ok(AUTH).limits;
    assert_eq!(
        (l.max_udp_sessions_per_user, l.max_sockets_per_user),
        (None, None)
    );
    let l = ok(&format!(
        "{AUTH}limits: {{maxUdpSessionsPerUser: 0, maxSocketsPerUser: 300}}"
    ))
    .limits;
    assert_eq!(
        (l.max_udp_sessions_per_user, l.max_sockets_per_user),
        (Some(0), Some(300))
    );
    fails(
        &format!("{AUTH}limits: {{maxUdpSessionsPerUser: many}}"),
        "limits.maxUdpSessionsPerUser",
    );
    fails(
        &format!("{AUTH}limits: {{maxSocketsPerUser: -1}}"),
        "limits.maxSocketsPerUser",
    );
}

#[test]
fn receive_window_budget() {
    let budget = |v: &str| {
        ok(&format!("{AUTH}limits: {{receiveWindowBudget: {v}}}"))
            .limits
            .receive_window_budget
    };
    assert_eq!(budget("\"2GiB\""), Some(2 << 30));
    assert_eq!(budget("1048576"), Some(1 << 20));
    assert_eq!(ok(AUTH).limits.receive_window_budget, None);
    let e = fails(
        &format!("{AUTH}limits: {{receiveWindowBudget: 1000}}"),
        "limits.receiveWindowBudget",
    );
    assert!(e.reason.contains("65536"), "{e}");
    fails(
        &format!("{AUTH}limits: {{receiveWindowBudget: 2 parsecs}}"),
        "limits.receiveWindowBudget",
    );
    fails(
        &format!("{AUTH}limits: {{receiveWindowBudget: [1]}}"),
        "limits.receiveWindowBudget",
    );
}

#[test]
fn bandwidth_in_config() {
    let bw = |v: &str| {
        ok(&format!("{AUTH}bandwidth: {{up: \"{v}\"}}"))
            .bandwidth
            .up
    };
    assert_eq!(bw("100 mbps"), Some(12_500_000));
    assert_eq!(bw("1g"), Some(125_000_000));
    assert_eq!(bw("1000000"), Some(125_000));
    assert_eq!(bw("0"), None);
    assert_eq!(
        ok(&format!("{AUTH}bandwidth: {{down: 800000}}"))
            .bandwidth
            .down,
        Some(100_000)
    );
    let e = fails(&format!("{AUTH}bandwidth: {{up: 500kbps}}"), "bandwidth.up");
    assert!(e.reason.contains("62500"), "{e}");
    fails(
        &format!("{AUTH}bandwidth: {{down: 12345}}"),
        "bandwidth.down",
    );
    fails(
        &format!("{AUTH}bandwidth: {{down: 1.5 gbps}}"),
        "bandwidth.down",
    );
    fails(
        &format!("{AUTH}bandwidth: {{up: 10 mibps}}"),
        "bandwidth.up",
    );
}

#[test]
fn range_errors_name_key_and_file() {
    let e = fails(
        &format!("{AUTH}quic: {{maxIdleTimeout: 200s}}"),
        "quic.maxIdleTimeout",
    );
    assert_eq!(
        e.to_string(),
        "server.yaml: quic.maxIdleTimeout: 200s is out of range (4s to 120s)"
    );
    let e = fails(&format!("{AUTH}udpIdleTimeout: 1s"), "udpIdleTimeout");
    assert_eq!(e.reason, "1s is out of range (2s to 600s)");
    let cases: &[(&str, &str)] = &[
        ("quic: {maxIdleTimeout: 3s}", "quic.maxIdleTimeout"),
        ("quic: {maxIdleTimeout: 2m1s}", "quic.maxIdleTimeout"),
        ("udpIdleTimeout: 11m", "udpIdleTimeout"),
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
        ("quic: {maxIncomingStreams: 7}", "quic.maxIncomingStreams"),
        (
            "quic: {maxIncomingStreams: 1152921504606846977}",
            "quic.maxIncomingStreams",
        ),
        ("quic: {maxIncomingStreams: -5}", "quic.maxIncomingStreams"),
        ("bandwidth: {up: 65535b}", "bandwidth.up"),
        (
            "masquerade: {type: string, string: {content: x, statusCode: 233}}",
            "masquerade.string.statusCode",
        ),
        (
            "masquerade: {type: string, string: {content: x, statusCode: 199}}",
            "masquerade.string.statusCode",
        ),
        (
            "masquerade: {type: string, string: {content: x, statusCode: 600}}",
            "masquerade.string.statusCode",
        ),
        (
            "obfs: {type: salamander, salamander: {password: abc}}",
            "obfs.salamander.password",
        ),
        ("engine: {workers: 100000}", "engine.workers"),
    ];
    for &(extra, key) in cases {
        fails(&format!("{AUTH}{extra}\n"), key);
    }
    // Bounds themselves are allowed.
    ok(&format!(
        "{AUTH}quic: {{maxIdleTimeout: 4s, maxIncomingStreams: 8, initStreamReceiveWindow: 16384}}"
    ));
    ok(&format!(
        "{AUTH}quic: {{maxIdleTimeout: 2m}}\nudpIdleTimeout: 10m\nbandwidth: {{up: 524288 bps}}"
    ));
    ok(&format!(
        "{AUTH}masquerade: {{type: string, string: {{content: x, statusCode: 599}}}}"
    ));
}

#[test]
fn refused_and_required() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "auth.type", "required"),
        ("auth: {password: x}", "auth.type", "required"),
        ("auth: {type: password}", "auth.password", "required"),
        ("auth: {type: password, password: \"\"}", "auth.password", "required"),
        ("auth: {type: userpass}", "auth.userpass", "required"),
        ("auth: {type: userpass, userpass: {Bob: a, bob: b}}", "auth.userpass.bob", "twice"),
        ("auth: {type: http}", "auth.http.url", "required"),
        ("auth: {type: http, http: {url: ftp://x}}", "auth.http.url", "http"),
        ("auth: {type: command}", "auth.command", "empty auth command"),
        ("auth: {type: cmd, command: \"\"}", "auth.command", "empty auth command"),
        ("auth: {type: ldap}", "auth.type", "unsupported"),
        ("acme: {email: a@a.example}", "acme.domains", "empty domains"),
        ("acme: {domains: [\"bad name\"]}", "acme.domains[0]", "not a DNS name"),
        ("acme: {domains: [\"*.a.example\"]}", "acme.domains[0]", "wildcard"),
        ("acme: {domains: [a.example], ca: buypass}", "acme.ca", "unsupported CA"),
        ("acme: {domains: [a.example], ca: zerossl}", "acme.email", "required"),
        ("acme: {domains: [a.example], type: dns}", "acme.dns.name", "empty DNS provider name"),
        ("acme: {domains: [a.example], type: dns, dns: {name: cloudflare}}", "acme.dns.config", "empty DNS provider config"),
        ("acme: {domains: [a.example], type: dns, dns: {name: cloudflare, config: {}}}", "acme.dns.config", "empty DNS provider config"),
        ("acme: {domains: [a.example], type: dns, dns: {name: NameDotCom, config: {namedotcom_token: x}}}", "acme.dns.name", "namedotcom is no longer supported"),
        ("acme: {domains: [a.example], type: dns, dns: {name: njalla, config: {njalla_api_token: x}}}", "acme.dns.name", "njalla is not supported by quelay's DNS client"),
        ("acme: {domains: [a.example], type: dns, dns: {name: route66, config: {a: b}}}", "acme.dns.name", "unsupported DNS provider"),
        ("acme: {domains: [a.example], type: dns, dns: {name: cloudflare, config: {cloudflare_token: x}}}", "acme.dns.config.cloudflare_api_token", "required for the cloudflare DNS provider"),
        ("acme: {domains: [a.example], type: dns, dns: {name: duckdns, config: {duckdns_override_domain: x.duckdns.org}}}", "acme.dns.config.duckdns_api_token", "required"),
        ("acme: {domains: [a.example], type: dns, dns: {name: gandi, config: {gandi_api_token: \"\"}}}", "acme.dns.config.gandi_api_token", "required"),
        ("acme: {domains: [a.example], type: dns, dns: {name: godaddy, config: {godaddy_api_token: nocolon}}}", "acme.dns.config.godaddy_api_token", "KEY:SECRET"),
        ("acme: {domains: [a.example], type: dns, dns: {name: namecheap, config: {namecheap_api_key: k}}}", "acme.dns.config.namecheap_api_user", "required"),
        ("acme: {domains: [a.example], type: dns, dns: {name: namecheap, config: {namecheap_api_key: k, namecheap_api_user: u, namecheap_client_ip: here}}}", "acme.dns.config.namecheap_client_ip", "not an IP"),
        ("acme: {domains: [a.example], type: dns, dns: {name: namecheap, config: {namecheap_api_key: k, namecheap_api_user: u, namecheap_api_endpoint: \"https://api.sandbox.namecheap.com/xml.response\"}}}", "acme.dns.config.namecheap_api_endpoint", "talks only to"),
        ("acme: {domains: [a.example], type: dns, dns: {name: porkbun, config: {porkbun_api_key: k}}}", "acme.dns.config.porkbun_api_secret_key", "required"),
        ("acme: {domains: [a.example], type: dns, dns: {name: vultr, config: {vultr_token: k}}}", "acme.dns.config.vultr_api_token", "required"),
        ("acme: {domains: [a.example], type: dns, dns: {name: pdns, config: {pdns_api_key: k}}}", "acme.dns.config.pdns_api_url", "required"),
        ("acme: {domains: [a.example], type: dns, dns: {name: pdns, config: {pdns_api_key: k, pdns_api_url: \"127.0.0.1:8081\"}}}", "acme.dns.config.pdns_api_url", "not an http://"),
        ("acme: {domains: [a.example], type: dns, dns: {name: rfc2136, config: {rfc2136_server: ns1.a.example, rfc2136_tsig_key_name: k, rfc2136_tsig_key: c2VjcmV0}}}", "acme.dns.config.rfc2136_server", "not an IP"),
        ("acme: {domains: [a.example], type: dns, dns: {name: rfc2136, config: {rfc2136_server: 127.0.0.1, rfc2136_tsig_key: c2VjcmV0}}}", "acme.dns.config.rfc2136_tsig_key_name", "required"),
        ("acme: {domains: [a.example], type: dns, dns: {name: rfc2136, config: {rfc2136_server: 127.0.0.1, rfc2136_tsig_key_name: k, rfc2136_tsig_key: \"not base64!\"}}}", "acme.dns.config.rfc2136_tsig_key", "base64"),
        ("acme: {domains: [a.example], type: dns, dns: {name: rfc2136, config: {rfc2136_server: 127.0.0.1, rfc2136_tsig_key_name: k, rfc2136_tsig_key: c2VjcmV0, rfc2136_tsig_algorithm: hmac-md5}}}", "acme.dns.config.rfc2136_tsig_algorithm", "unsupported TSIG algorithm"),
        ("acme: {domains: [a.example], type: dns, dns: {name: vultr, config: {vultr_api_token: k, zone: \"a b\"}}}", "acme.dns.config.zone", "not a DNS name"),
        ("acme: {domains: [\"*.a.example\"], type: http}", "acme.domains[0]", "needs the DNS-01 challenge"),
        ("acme: {domains: [a.example, \"*.a.example\"], type: tls}", "acme.domains[1]", "wildcard"),
        ("acme: {domains: [a.example], type: carrier-pigeon}", "acme.type", "unsupported ACME type"),
        ("acme: {domains: [a.example], type: http, http: {altPort: 70000}}", "acme.http.altPort", "not a port"),
        ("acme: {domains: [a.example], listenHost: \"127.0.0.1:80\"}", "acme.listenHost", "not an IP"),
        ("acme: {domains: [a.example], disableHTTP: true, disableTLSALPN: true}", "acme.disableHTTP", "both"),
        ("acme: {domains: [a.example]}\ntls: {cert: c, key: k}", "acme", "cannot set both"),
        ("tls: {cert: c.pem}", "tls.key", "required"),
        ("tls: {key: k.pem}", "tls.cert", "required"),
        ("tls: {cert: c, key: k, sniGuard: maybe}", "tls.sniGuard", "unsupported"),
        ("obfs: {type: gecko, gecko: {password: abcd}}", "obfs.type", "gecko obfuscation is not supported"),
        ("obfs: {type: xor}", "obfs.type", "unsupported"),
        ("obfs: {type: salamander}", "obfs.salamander.password", "at least 4 bytes"),
        ("congestion: {type: vegas}", "congestion.type", "unsupported"),
        ("congestion: {bbrProfile: wild}", "congestion.bbrProfile", "unsupported"),
        ("resolver: {type: carrier-pigeon}", "resolver.type", "unsupported resolver type"),
        ("resolver: {type: quic, quic: {addr: 1.1.1.1}}", "resolver.type", "unsupported resolver type"),
        ("resolver: {type: udp}", "resolver.udp.addr", "empty resolver address"),
        ("resolver: {type: tls, udp: {addr: 1.1.1.1}}", "resolver.tls.addr", "empty resolver address"),
        ("resolver: {type: https, https: {addr: \"\"}}", "resolver.https.addr", "empty resolver address"),
        ("resolver: {type: tcp, tcp: {addr: \"dns:x\"}}", "resolver.tcp.addr", "bad port"),
        ("resolver: {type: udp, udp: {addr: \"a b:53\"}}", "resolver.udp.addr", "not a host:port"),
        ("acl: {file: a.acl, inline: [\"direct(all)\"]}", "acl", "both"),
        ("acl: {file: a.acl, geoipURL: \"ftp://mirror.example/geoip.dat\"}", "acl.geoipURL", "not an http:// or https:// URL"),
        ("acl: {file: a.acl, geositeURL: \"https:///geosite.dat\"}", "acl.geositeURL", "with a host"),
        ("outbounds: [{type: direct}]", "outbounds[0].name", "required"),
        ("outbounds: [{name: s, type: wireguard}]", "outbounds[0].type", "unsupported outbound type"),
        ("outbounds: [{name: a, type: direct}, {name: b, type: socks5}]\nacl: {inline: [\"b(all)\"]}", "outbounds[1].socks5.addr", "empty socks5 address"),
        ("outbounds: [{name: s, type: socks5, socks5: {addr: nowhere}}]", "outbounds[0].socks5.addr", "port"),
        ("outbounds: [{name: h, type: http}]", "outbounds[0].http.url", "empty http address"),
        ("outbounds: [{name: h, type: http, http: {url: \"socks5://x:1\"}}]", "outbounds[0].http.url", "unsupported scheme"),
        ("outbounds: [{name: a, type: direct, direct: {mode: 5}}]", "outbounds[0].direct.mode", "unsupported"),
        ("outbounds: [{name: a, type: direct, direct: {bindIPv4: \"::1\"}}]", "outbounds[0].direct.bindIPv4", "IPv4"),
        ("outbounds: [{name: a, type: direct, direct: {bindIPv6: 1.2.3.4}}]", "outbounds[0].direct.bindIPv6", "IPv6"),
        ("outbounds: [{name: a, type: direct, direct: {bindIPv4: 1.2.3.4, bindDevice: eth0}}]", "outbounds[0].direct", "both"),
        ("outbounds: {name: a}", "outbounds", "expected a list"),
        ("masquerade: {type: file}", "masquerade.file.dir", "required"),
        ("masquerade: {type: proxy}", "masquerade.proxy.url", "required"),
        ("masquerade: {type: proxy, proxy: {url: \"example.com\"}}", "masquerade.proxy.url", "http"),
        ("masquerade: {type: proxy, proxy: {url: \"https://\"}}", "masquerade.proxy.url", "no host"),
        ("masquerade: {type: string}", "masquerade.string.content", "required"),
        ("masquerade: {type: string, string: {content: x, headers: {\"a b\": c}}}", "masquerade.string.headers.a b", "header name"),
        ("masquerade: {type: string, string: {content: x, headers: {a: \"b\\r\\nc: d\"}}}", "masquerade.string.headers.a", "line breaks"),
        ("masquerade: {type: teapot}", "masquerade.type", "unsupported"),
        ("masquerade: {listenHTTP: \":80\"}", "masquerade.listenHTTPS", "required"),
        ("trafficStats: {listen: nowhere}", "trafficStats.listen", "missing port"),
        ("metrics: {listen: \"[::1]\"}", "metrics.listen", "missing port"),
        ("engine: {io: kqueue}", "engine.io", "unsupported"),
        ("sniff: {enable: true, tcpPorts: \"80,http\"}", "sniff.tcpPorts", "invalid port"),
        ("ech: {keyPath: ech.key}", "ech.keyPath", "not supported"),
        ("mimic: {enabled: true}", "mimic.enabled", "not supported"),
    ];
    for &(text, key, reason) in cases {
        // Put a valid auth first unless the case is about auth.
        let text = if text.starts_with("auth:") || text.is_empty() {
            text.to_owned()
        } else {
            format!("{AUTH}{text}\n")
        };
        let e = fails(&text, key);
        assert!(e.reason.contains(reason), "{e} (wanted {reason:?})");
    }
}

#[test]
fn type_errors_name_the_key() {
    let e = fails(
        &format!("{AUTH}quic: {{maxIncomingStreams: many}}"),
        "quic.maxIncomingStreams",
    );
    assert_eq!(
        e.to_string(),
        "server.yaml: quic.maxIncomingStreams: expected an integer, got \"many\""
    );
    let cases: &[(&str, &str, &str)] = &[
        (
            "quic: {maxIdleTimeout: 30}",
            "quic.maxIdleTimeout",
            "expected a duration",
        ),
        (
            "quic: {maxIdleTimeout: thirty}",
            "quic.maxIdleTimeout",
            "invalid duration",
        ),
        (
            "quic: {maxIdleTimeout: 30 seconds}",
            "quic.maxIdleTimeout",
            "unknown unit",
        ),
        (
            "quic: {initStreamReceiveWindow: 8MB}",
            "quic.initStreamReceiveWindow",
            "expected an integer",
        ),
        (
            "quic: {maxIncomingStreams: 1.5}",
            "quic.maxIncomingStreams",
            "expected an integer",
        ),
        (
            "quic: {disablePathMTUDiscovery: maybe}",
            "quic.disablePathMTUDiscovery",
            "expected true or false",
        ),
        (
            "disableUDP: [1]",
            "disableUDP",
            "expected true or false, got a list",
        ),
        ("quic: 5", "quic", "expected a mapping"),
        ("quic: [a, b]", "quic", "expected a mapping"),
        ("listen: {a: b}", "listen", "expected text"),
        (
            "acl: {inline: \"direct(all)\"}",
            "acl.inline",
            "expected a list",
        ),
        ("acl: {inline: [{a: b}]}", "acl.inline[0]", "expected text"),
        ("outbounds: [5]", "outbounds[0]", "expected a mapping"),
    ];
    for &(extra, key, reason) in cases {
        let e = fails(&format!("{AUTH}{extra}\n"), key);
        assert!(e.reason.contains(reason), "{e} (wanted {reason:?})");
    }
}

#[test]
fn official_weak_typing() {
    // Case-insensitive keys and selector values, numbers and bools as strings and back.
    let c = ok("Listen: :8443\nAUTH: {Type: PassWord, password: 12345678}\n\
                disableUDP: \"true\"\nspeedTest: 1\nquic: {maxIncomingStreams: \"2048\", maxidletimeout: 1m}\n\
                masquerade: {type: 404}\n");
    assert_eq!(c.listen, addr("[::]:8443"));
    assert_eq!(c.auth, Auth::Password("12345678".into()));
    assert!(c.disable_udp && c.speed_test);
    assert_eq!(c.quic.max_incoming_streams, 2048);
    assert_eq!(c.quic.max_idle_timeout, Duration::from_secs(60));
    // `key:` with nothing after it is the same as no key.
    let c = ok("auth: {type: password, password: x}\ntls:\nquic:\nobfs:\n  type:\n");
    assert_eq!((c.tls, c.obfs), (None, Obfs::Plain));
    // A boolean where text is wanted becomes "1"/"0" like Go, with a warning.
    let (c, w) = parse("auth: {type: password, password: true}").unwrap();
    assert_eq!(c.auth, Auth::Password("1".into()));
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].key, "auth.password");
    // Keys are case-insensitive, so two spellings of one key are a conflict.
    let e = fails(
        "auth: {type: password, password: a}\nlisten: :1\nListen: :2\n",
        "Listen",
    );
    assert!(e.reason.contains("given twice"), "{e}");
}

#[test]
fn unknown_keys_are_warnings_with_dotted_paths() {
    let text = format!(
        "{AUTH}bogus: 1\nquic:\n  maxIdelTimeout: 10s\n  foo: {{bar: 1}}\n\
         masquerade: {{type: string, string: {{content: x, colour: red}}}}\n\
         outbounds: [{{name: a, type: direct, extra: 1, direct: {{mood: happy}}}}]\n\
         resolver: {{tcp: {{adress: x}}}}\n"
    );
    let (config, warnings) = parse(&text).unwrap();
    assert_eq!(config.quic.max_idle_timeout, DEFAULT_MAX_IDLE_TIMEOUT);
    let keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
    for key in [
        "bogus",
        "quic.maxIdelTimeout",
        "quic.foo",
        "masquerade.string.colour",
        "outbounds[0].extra",
        "outbounds[0].direct.mood",
        "resolver.tcp.adress",
    ] {
        assert!(keys.contains(&key), "no warning for {key}: {keys:?}");
    }
    assert_eq!(keys.len(), 7, "{keys:?}");
    assert!(warnings
        .iter()
        .all(|w| w.message == "unknown key (ignored)"));
    assert_eq!(
        warnings[0].to_string(),
        format!("{}: unknown key (ignored)", warnings[0].key)
    );
}

/// Every mapping of the full config, with an extra key added, warns about exactly that key:
/// no section forgets to report what it did not read.
#[test]
fn every_section_reports_unknown_keys() {
    let root: Value = serde_norway::from_str(FULL).unwrap();
    let mut paths = Vec::new();
    collect_mappings(&root, String::new(), &mut paths);
    assert!(paths.len() > 25, "{paths:?}");
    for path in paths {
        let mut root = root.clone();
        let target = lookup(&mut root, &path);
        target.insert("zzBogus".into(), Value::from(1));
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

/// Dotted paths of every mapping whose keys are config keys (not user names or headers).
fn collect_mappings(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            if path.ends_with("userpass") || path.ends_with("headers") {
                return;
            }
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
        "{AUTH}resolver: {{type: https, https: {{addr: 1.1.1.1:443}}}}\n\
         trafficStats: {{listen: \":9999\"}}\nobfs: {{salamander: {{password: abcd}}}}\n\
         realm: {{stunServers: [a]}}\n\
         outbounds: [{{name: a, type: direct}}, {{name: b, type: socks5, socks5: {{addr: \"x:1080\"}}}}]\n"
    ))
    .unwrap();
    assert_eq!(c.obfs, Obfs::Plain);
    assert_eq!(c.outbounds[0].name, "a");
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "realm",
            "obfs.salamander.password",
            "outbounds[1]",
            "trafficStats.secret"
        ],
        "{w:?}"
    );
    assert_eq!(
        c.resolver,
        Resolver::Https(DnsUpstream {
            addr: "https://1.1.1.1:443/dns-query".into(),
            timeout: DEFAULT_RESOLVER_TIMEOUT,
            sni: None,
            insecure: false,
        })
    );

    let (_, w) = parse("auth: {type: userpass, userpass: {\"a:b\": c}}").unwrap();
    assert_eq!(w[0].key, "auth.userpass.a:b");

    // A download URL next to a configured path is never used.
    let (c, w) = parse(&format!(
        "{AUTH}acl: {{file: a.acl, geosite: g.dat, geositeURL: \"https://mirror.example/g\"}}"
    ))
    .unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "acl.geositeURL");
    assert!(w[0].message.starts_with("unused"), "{w:?}");
    assert_eq!(
        c.acl.and_then(|a| a.geosite_url).as_deref(),
        Some("https://mirror.example/g")
    );
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    let text = "listen: :443\nauth:\n  type: password\n  password: [unclosed\n";
    let e = parse(text).unwrap_err();
    let ErrorAt::Position { line, column } = e.at else {
        panic!("no position: {e:?}");
    };
    assert!(line >= 4, "{e}");
    assert!(column >= 1);
    assert!(
        e.to_string()
            .starts_with(&format!("server.yaml:{line}:{column}: ")),
        "{e}"
    );
    assert!(
        !e.reason
            .contains(&format!("at line {line} column {column}")),
        "{e}"
    );

    let e = parse("a: 1\n  b: 2\n").unwrap_err();
    assert!(matches!(e.at, ErrorAt::Position { line: 2, .. }), "{e}");
    let e = parse("a: 1\na: 2\n").unwrap_err();
    assert!(e.to_string().starts_with("server.yaml:"), "{e}");
    let e = parse("- just\n- a list\n").unwrap_err();
    assert_eq!(e.at, ErrorAt::File, "{e}");
}

#[test]
fn anchors_merges_and_tags() {
    let c = ok(
        "obfs: {type: salamander, salamander: {password: &p abcd}}\n\
                auth: {<<: {type: password}, password: *p }\n",
    );
    assert_eq!(c.auth, Auth::Password("abcd".into()));
    let c = ok(
        "auth: {type: password, password: !!str 1234}\nquic: {maxIncomingStreams: !custom 64}\n",
    );
    assert_eq!(c.auth, Auth::Password("1234".into()));
    assert_eq!(c.quic.max_incoming_streams, 64);
}

#[test]
fn hostile_input_fails_cleanly() {
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
                  i: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
    assert!(parse(laughs).is_err());
    assert!(parse(&"[".repeat(100_000)).is_err());
    assert!(parse(&"{a: ".repeat(100_000)).is_err());
    assert!(parse(&"{a: ".repeat(MAX_FLOW_COLLECTIONS)).is_err());
    assert!(parse(&"- ".repeat(100_000)).is_err());
    assert!(parse("\u{feff}auth: {type: password, password: x}").is_ok());
    for text in [
        "",
        "~",
        "null",
        "42",
        "\"str\"",
        "---\n---\n",
        "\t",
        "auth: *nope",
        "!!binary aGk=",
    ] {
        let _ = parse(text);
    }
    // Every prefix and many one-byte corruptions of the full config: errors, never panics.
    let bytes = FULL.as_bytes();
    for cut in (0..bytes.len()).step_by(3) {
        if let Ok(prefix) = std::str::from_utf8(&bytes[..cut]) {
            let _ = parse(prefix);
        }
    }
    let mut seed = 0x2545_f491_u32;
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

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quelay-config-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Loading reads the file and nothing it names: the files themselves are checked where
/// they are used (`server::run::check`, start-up).
#[test]
fn load_files() {
    let dir = temp_dir("check");
    let cert_path = dir.join("cert.pem");
    let file = write(
        &dir,
        "server.yaml",
        format!(
            "{AUTH}tls: {{cert: \"{}\", key: key.pem}}\nbogus: 1\n",
            cert_path.display()
        ),
    );
    let (c, w) = load_server(&file).unwrap();
    assert_eq!(c.tls.unwrap().cert, cert_path);
    assert_eq!(w.len(), 1);

    let e = load_server(&dir.join("nope.yaml")).unwrap_err();
    assert_eq!(e.at, ErrorAt::File);
    let file = write(
        &dir,
        "latin1.yaml",
        b"auth: {type: password, password: caf\xe9}\n",
    );
    let e = load_server(&file).unwrap_err();
    assert!(e.reason.contains("UTF-8"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn congestion_types() {
    for (name, kind) in [
        ("bbr", CongestionKind::Bbr),
        ("BBR", CongestionKind::Bbr),
        ("reno", CongestionKind::Reno),
        ("cubic", CongestionKind::Cubic),
    ] {
        let c = ok(&format!(
            "auth: {{type: password, password: pw}}\ncongestion: {{type: {name}}}\n"
        ));
        assert_eq!(c.congestion.kind, kind, "{name}");
    }
}

/// `resolver`: each type with its section, the official defaults (2 s, ports 53 and 853,
/// `https://ADDR/dns-query`), aliases and case-insensitive types.
#[test]
fn resolver_keys() {
    let up = |addr: &str, secs: u64, sni: Option<&str>, insecure: bool| DnsUpstream {
        addr: addr.into(),
        timeout: Duration::from_secs(secs),
        sni: sni.map(Into::into),
        insecure,
    };
    let cases: Vec<(&str, Resolver)> = vec![
        ("", Resolver::System),
        ("resolver: {type: system}", Resolver::System),
        ("resolver: {type: \"\", udp: {addr: 1.2.3.4}}", Resolver::System),
        (
            "resolver: {type: udp, udp: {addr: 8.8.4.4}}",
            Resolver::Udp(up("8.8.4.4:53", 2, None, false)),
        ),
        (
            "resolver: {type: UDP, udp: {addr: \"127.0.0.1:5353\", timeout: 4s}}",
            Resolver::Udp(up("127.0.0.1:5353", 4, None, false)),
        ),
        (
            "resolver: {type: udp, udp: {addr: \"2001:db8::53\", timeout: 0}}",
            Resolver::Udp(up("[2001:db8::53]:53", 2, None, false)),
        ),
        (
            "resolver: {type: tcp, tcp: {addr: \"[::1]\"}}",
            Resolver::Tcp(up("[::1]:53", 2, None, false)),
        ),
        (
            "resolver: {type: tcp, tcp: {addr: dns.example}}",
            Resolver::Tcp(up("dns.example:53", 2, None, false)),
        ),
        (
            "resolver: {type: tls, tls: {addr: 1.1.1.1, timeout: 10s, sni: cloudflare-dns.com, \
             insecure: true}}",
            Resolver::Tls(up("1.1.1.1:853", 10, Some("cloudflare-dns.com"), true)),
        ),
        (
            "resolver: {type: tcp-tls, tls: {addr: \"dot.example:8853\"}}",
            Resolver::Tls(up("dot.example:8853", 2, None, false)),
        ),
        (
            "resolver: {type: http, https: {addr: dns.example, sni: x.example}}",
            Resolver::Https(up("https://dns.example/dns-query", 2, Some("x.example"), false)),
        ),
        (
            "resolver: {type: https, https: {addr: \"https://dns.example:8443/q\", insecure: true}}",
            Resolver::Https(up("https://dns.example:8443/q", 2, None, true)),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(ok(&format!("{AUTH}{text}\n")).resolver, want, "{text}");
    }
    // The official default is the system resolver.
    assert_eq!(ok(AUTH).resolver.kind(), "system");
    // Errors name the key and the file.
    let e = fails(
        &format!("{AUTH}resolver: {{type: udp, udp: {{timeout: 2s}}}}"),
        "resolver.udp.addr",
    );
    assert_eq!(
        e.to_string(),
        "server.yaml: resolver.udp.addr: empty resolver address"
    );
    fails(
        &format!("{AUTH}resolver: {{type: udp, udp: {{addr: 1.1.1.1, timeout: soon}}}}"),
        "resolver.udp.timeout",
    );
    fails(
        &format!("{AUTH}resolver: {{type: tls, tls: {{addr: 1.1.1.1, insecure: maybe}}}}"),
        "resolver.tls.insecure",
    );
    // A section of another type is still checked for unknown keys, and sni/insecure are not
    // keys of udp and tcp.
    let (_, w) = parse(&format!(
        "{AUTH}resolver: {{type: udp, udp: {{addr: 1.1.1.1, sni: x}}, https: {{adress: y}}}}"
    ))
    .unwrap();
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["resolver.udp.sni", "resolver.https.adress"], "{w:?}");
}

#[test]
fn acme_section() {
    let acme = |text: &str| ok(&format!("{AUTH}{text}\n")).acme.unwrap();
    let a = acme("acme: {domains: [A.Example., b.example, a.example], email: me@a.example}");
    assert_eq!(
        a,
        Acme {
            domains: vec!["a.example".into(), "b.example".into()],
            email: "me@a.example".into(),
            ca: AcmeCa::LetsEncrypt,
            dir: None,
            listen_host: None,
            http_port: Some(80),
            tls_port: Some(443),
            dns: None,
        }
    );
    assert_eq!(a.ca.directory(), LETSENCRYPT_DIRECTORY);
    let a = acme(
        "acme: {domains: [a.example], ca: \"https://127.0.0.1:14000/dir\", type: http, \
         http: {altPort: 5002}, tls: {altPort: 5001}, dir: /var/lib/acme, listenHost: \"::1\"}",
    );
    assert_eq!(
        a.ca,
        AcmeCa::Directory("https://127.0.0.1:14000/dir".into())
    );
    assert_eq!(a.ca.directory(), "https://127.0.0.1:14000/dir");
    assert_eq!((a.http_port, a.tls_port), (Some(5002), None));
    assert_eq!(a.dir, Some(PathBuf::from("/var/lib/acme")));
    assert_eq!(a.listen_host, Some("::1".parse().unwrap()));
    let a = acme("acme: {domains: [a.example], type: TLS, tls: {altPort: 8443}}");
    assert_eq!((a.http_port, a.tls_port), (None, Some(8443)));
    // The legacy keys count only without `type`.
    let a = acme("acme: {domains: [a.example], altHTTPPort: 8080, disableTLSALPN: true}");
    assert_eq!((a.http_port, a.tls_port), (Some(8080), None));
    let a = acme("acme: {domains: [a.example], type: http, altHTTPPort: 8080}");
    assert_eq!((a.http_port, a.tls_port), (Some(80), None));
    let a = acme("acme: {domains: [a.example], ca: zero, email: me@a.example}");
    assert_eq!(a.ca, AcmeCa::ZeroSsl);
    assert_eq!(ok(AUTH).acme, None);
}

#[test]
fn acme_dns_providers() {
    let dns = |name: &str, config: &str| {
        let a = ok(&format!(
            "{AUTH}acme: {{domains: [a.example, \"*.A.example\"], type: DNS, \
             dns: {{name: {name}, config: {{{config}}}}}}}\n"
        ))
        .acme
        .unwrap();
        assert_eq!(a.domains, ["a.example", "*.a.example"]);
        assert_eq!((a.http_port, a.tls_port), (None, None));
        a.dns.unwrap()
    };
    let s = |v: &str| Secret(v.to_owned());
    assert_eq!(
        dns("CloudFlare", "cloudflare_api_token: t").provider,
        DnsProvider::Cloudflare { api_token: s("t") }
    );
    assert_eq!(
        dns(
            "duckdns",
            "duckdns_api_token: t, duckdns_override_domain: x.duckdns.org"
        )
        .provider,
        DnsProvider::DuckDns {
            api_token: s("t"),
            override_domain: Some("x.duckdns.org".into())
        }
    );
    assert_eq!(
        dns("gandi", "gandi_api_token: t").provider,
        DnsProvider::Gandi { api_token: s("t") }
    );
    assert_eq!(
        dns("godaddy", "godaddy_api_token: \"key:sec:ret\"").provider,
        DnsProvider::GoDaddy {
            api_key: s("key"),
            api_secret: s("sec:ret")
        }
    );
    assert_eq!(
        dns("namecheap", "namecheap_api_key: k, namecheap_api_user: u").provider,
        DnsProvider::Namecheap {
            api_key: s("k"),
            api_user: "u".into(),
            client_ip: None
        }
    );
    assert_eq!(
        dns(
            "namecheap",
            "namecheap_api_key: k, namecheap_api_user: u, namecheap_client_ip: 192.0.2.1, \
             namecheap_api_endpoint: \"https://api.namecheap.com/xml.response\""
        )
        .provider,
        DnsProvider::Namecheap {
            api_key: s("k"),
            api_user: "u".into(),
            client_ip: Some("192.0.2.1".parse().unwrap())
        }
    );
    assert_eq!(
        dns("porkbun", "porkbun_api_key: k, porkbun_api_secret_key: sk").provider,
        DnsProvider::Porkbun {
            api_key: s("k"),
            secret_key: s("sk")
        }
    );
    let d = dns("vultr", "VULTR_API_TOKEN: t, zone: A.Example.");
    assert_eq!(d.provider, DnsProvider::Vultr { api_token: s("t") });
    assert_eq!(d.zone.as_deref(), Some("a.example"));
    assert_eq!(
        dns(
            "pdns",
            "pdns_api_url: \"http://127.0.0.1:8081\", pdns_api_key: k"
        )
        .provider,
        DnsProvider::Pdns {
            api_url: "http://127.0.0.1:8081".into(),
            api_key: s("k"),
            server_id: None
        }
    );
    assert_eq!(
        dns(
            "rfc2136",
            "rfc2136_server: \"tcp://[::1]:5353\", rfc2136_tsig_key_name: acme., \
             rfc2136_tsig_key: c2VjcmV0, rfc2136_tsig_algorithm: HMAC-SHA512"
        )
        .provider,
        DnsProvider::Rfc2136 {
            server: "tcp://[::1]:5353".into(),
            key_name: "acme.".into(),
            key: s("c2VjcmV0"),
            algorithm: "hmac-sha512".into()
        }
    );
    let d = dns(
        "rfc2136",
        "rfc2136_server: 127.0.0.1, rfc2136_tsig_key_name: k, rfc2136_tsig_key: c2VjcmV0",
    );
    assert!(matches!(
        d.provider,
        DnsProvider::Rfc2136 { ref server, ref algorithm, .. }
            if server == "udp://127.0.0.1:53" && algorithm == "hmac-sha256"
    ));
    assert_eq!(d.zone, None);
    // Secrets stay out of debug output.
    assert!(!format!("{:?}", dns("vultr", "vultr_api_token: hunter2")).contains("hunter2"));

    // A key the provider does not read is warned about, with its full key.
    let (_, w) = parse(&format!(
        "{AUTH}acme: {{domains: [a.example], type: dns, \
         dns: {{name: vultr, config: {{vultr_api_token: t, cloudflare_api_token: u}}}}}}\n"
    ))
    .unwrap();
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["acme.dns.config.cloudflare_api_token"], "{w:?}");
    // Errors name the file.
    let e = fails(
        &format!("{AUTH}acme: {{domains: [a.example], type: dns, dns: {{name: gandi, config: {{x: y}}}}}}\n"),
        "acme.dns.config.gandi_api_token",
    );
    assert_eq!(
        e.to_string(),
        "server.yaml: acme.dns.config.gandi_api_token: required for the gandi DNS provider"
    );
}
