//! The reference's rule-set, engine and matcher vectors, run through the compiled ACL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use prost::Message;

use super::geo::tests::{GEOIP_TEST, GEOSITE_TEST};
use super::geo::{Attribute, Cidr, Domain, GeoIp, GeoIpList, GeoSite, GeoSiteList};
use super::*;

fn cidr(s: &str) -> Cidr {
    let (ip, bits) = s.split_once('/').unwrap();
    let ip = match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    Cidr {
        ip,
        prefix: bits.parse().unwrap(),
    }
}

fn geoip(code: &str, cidrs: &[&str], inverse: bool) -> GeoIp {
    GeoIp {
        country_code: code.into(),
        cidr: cidrs.iter().map(|c| cidr(c)).collect(),
        inverse_match: inverse,
    }
}

/// kind: 0 Plain, 1 Regex, 2 RootDomain, 3 Full.
fn dom(kind: i32, value: &str, attrs: &[&str]) -> Domain {
    Domain {
        kind,
        value: value.into(),
        attribute: attrs
            .iter()
            .map(|k| Attribute { key: k.to_string() })
            .collect(),
    }
}

fn site(code: &str, domains: Vec<Domain>) -> GeoSite {
    GeoSite {
        country_code: code.into(),
        domain: domains,
    }
}

/// The mini databases of the reference's §1.8: JP, US, an inverse NOTJP; 4CHAN, GOOGLE, APPLE.
fn mini_geo() -> GeoBytes {
    let ip = GeoIpList {
        entry: vec![
            geoip("JP", &["210.140.0.0/16"], false),
            geoip("US", &["73.0.0.0/8", "2607:f8b0::/32"], false),
            geoip("NOTJP", &["210.140.0.0/16"], true),
        ],
    };
    let site = GeoSiteList {
        entry: vec![
            site("4CHAN", vec![dom(2, "4channel.org", &[])]),
            site(
                "GOOGLE",
                vec![dom(3, "gstatic-cn.com", &["cn"]), dom(2, "waymo.com", &[])],
            ),
            site(
                "APPLE",
                vec![
                    dom(2, "i-book.com", &[]),
                    dom(2, "applepaycash.net", &[]),
                    dom(3, "courier-push-apple.com.akadns.net", &[]),
                    dom(1, r"^cdn(-cn)?[1-4]?\.apple-mapkit\.com$", &["cn"]),
                    dom(3, "bag.itunes.apple.com", &["cn"]),
                    dom(2, "mr-apple.com.tw", &[]),
                ],
            ),
        ],
    };
    GeoBytes {
        geoip: Some(ip.encode_to_vec()),
        geosite: Some(site.encode_to_vec()),
    }
}

fn compile(text: &str, outbounds: &[&str]) -> Acl {
    Acl::compile(text, "acl.inline", outbounds, &mut mini_geo()).unwrap()
}

fn compile_err(text: &str, outbounds: &[&str]) -> String {
    Acl::compile(text, "acl.inline", outbounds, &mut mini_geo())
        .unwrap_err()
        .to_string()
}

/// A request by name (`-` for none) and resolved addresses.
fn host(name: &str, v4: Option<&str>, v6: Option<&str>) -> Host {
    let v4: Option<Ipv4Addr> = v4.map(|s| s.parse().unwrap());
    let v6: Option<Ipv6Addr> = v6.map(|s| s.parse().unwrap());
    let name = match (name, v4, v6) {
        ("-", Some(a), _) => a.to_string(),
        ("-", None, Some(a)) => a.to_string(),
        (n, _, _) => n.to_string(),
    };
    Host::new(&name).with_addresses(v4, v6)
}

const OBS: [&str; 6] = ["ob1", "ob2", "ob3", "ob4", "ob5", "ob6"];

const RULE_SET: &str = "ob1(1.2.3.4)
ob2(8.8.8.0/24, *, 1.1.1.1)
ob3(all, udp/443)
ob1(2606:4700::6810:85e5, tcp, 2606:4700::6810:85e6)
ob2(2606:4700::/44, */8888)
ob3(*.v2ex.com, udp)
ob1(crap.v2ex.com, tcp/80, 2.2.2.2)
ob2(geoip:JP, */*)
ob4(geosite:4chan, */*)
ob4(geosite:google @cn, */*)
ob5(suffix:microsoft.com, */*)
ob6(all, tcp/6881-6889)
ob1(dotpattern.test., tcp/443)";

/// (name or `-`, v4, v6, protocol, port, outbound index or none, hijack).
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Protocol,
    u16,
    Option<usize>,
    Option<&'a str>,
);

#[test]
fn m1_m24_rule_set() {
    let acl = compile(RULE_SET, &OBS);
    use Protocol::{Tcp, Udp};
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("-", Some("1.2.3.4"), None, Tcp, 1234, Some(0), None),
        ("-", Some("8.8.8.4"), None, Udp, 5353, Some(1), Some("1.1.1.1")),
        ("lean.delicious.com", None, None, Udp, 443, Some(2), None),
        ("-", None, Some("2606:4700::6810:85e5"), Tcp, 80, Some(0), Some("2606:4700::6810:85e6")),
        ("-", None, Some("2606:4700::1"), Udp, 8888, Some(1), None),
        ("www.v2ex.com", None, None, Udp, 1234, Some(2), None),
        ("crap.v2ex.com", None, None, Tcp, 80, Some(0), Some("2.2.2.2")),
        ("crap.v2ex.com", None, None, Tcp, 81, None, None),
        ("crap.v2ex.com", None, None, Udp, 80, Some(2), None),
        ("crap.v2ex.com", None, None, Udp, 81, Some(2), None),
        ("-", Some("210.140.92.187"), None, Tcp, 25, Some(1), None),
        ("-", Some("175.45.176.73"), None, Tcp, 80, None, None),
        ("boards.4channel.org", None, None, Tcp, 443, Some(3), None),
        ("gstatic-cn.com", None, None, Udp, 9999, Some(3), None),
        ("hoho.waymo.com", None, None, Udp, 9999, None, None),
        ("microsoft.com", None, None, Tcp, 6000, Some(4), None),
        ("real.microsoft.com", None, None, Udp, 5353, Some(4), None),
        ("fakemicrosoft.com", None, None, Tcp, 5000, None, None),
        ("-", Some("223.1.1.1"), None, Tcp, 6883, Some(5), None),
        ("crap.v2ex.com.", None, None, Tcp, 80, Some(0), Some("2.2.2.2")),
        ("hoho.v2ex.com.", None, None, Udp, 9999, Some(2), None),
        ("real.microsoft.com.", None, None, Udp, 5353, Some(4), None),
        ("microsoft.com...", None, None, Tcp, 6000, Some(4), None),
        ("dotpattern.test", None, None, Tcp, 443, Some(0), None),
    ];
    for (i, &(name, v4, v6, proto, port, ob, hijack)) in cases.iter().enumerate() {
        let d = acl.route(&host(name, v4, v6), proto, port);
        let want_route = ob.map_or(Route::Outbound(0), Route::Outbound);
        assert_eq!(d.route, want_route, "M{}", i + 1);
        assert_eq!(d.hijack, hijack.map(|h| h.parse().unwrap()), "M{}", i + 1);
        assert_eq!(d.line.is_none(), ob.is_none(), "M{} matched a rule?", i + 1);
    }
}

#[test]
fn m9_names_the_wildcard_rule() {
    let acl = compile(RULE_SET, &OBS);
    let d = acl.route(&host("crap.v2ex.com", None, None), Protocol::Udp, 80);
    assert_eq!(d.line, Some(6));
}

#[test]
fn e1_e6_engine() {
    let obs = ["ob1", "ob2", "ob3", "direct"];
    let acl = compile(
        "ob2(google.com,tcp)\nob3(youtube.com,udp)\nob1 (1.1.1.1/24,*,8.8.8.8)\nDirect(cia.gov)\nreJect(nsa.gov)",
        &obs,
    );
    let r = |h: Host, p| acl.route(&h, p, 443);
    assert_eq!(
        r(host("example.com", None, None), Protocol::Tcp).route,
        Route::Outbound(0)
    );
    assert_eq!(
        r(host("google.com", None, None), Protocol::Tcp).route,
        Route::Outbound(1)
    );
    assert_eq!(
        r(host("youtube.com", None, None), Protocol::Udp).route,
        Route::Outbound(2)
    );
    let e4 = r(host("example.net", Some("1.1.1.22"), None), Protocol::Tcp);
    assert_eq!(e4.route, Route::Outbound(0));
    assert_eq!(e4.hijack, Some("8.8.8.8".parse().unwrap()));
    assert_eq!(
        r(host("cia.gov", None, None), Protocol::Tcp).route,
        Route::Outbound(3)
    );
    assert_eq!(
        r(host("nsa.gov", None, None), Protocol::Tcp).route,
        Route::Reject
    );
}

#[test]
fn built_in_routes_and_default() {
    // No configured outbounds: default and direct are the built-in direct.
    let acl = compile(
        "default(a.com)\ndirect(b.com)\nreject(c.com)",
        &[] as &[&str],
    );
    let r = |n: &str| acl.route(&host(n, None, None), Protocol::Tcp, 1).route;
    assert_eq!(r("a.com"), Route::Direct);
    assert_eq!(r("b.com"), Route::Direct);
    assert_eq!(r("c.com"), Route::Reject);
    assert_eq!(r("d.com"), Route::Direct);
    // A configured `default` is the no-match route; a repeated name: the last wins.
    let acl = compile("A(a.com)", &["x", "Default", "a", "A"]);
    assert_eq!(
        acl.route(&host("a.com", None, None), Protocol::Tcp, 1)
            .route,
        Route::Outbound(3)
    );
    assert_eq!(
        acl.route(&host("z.com", None, None), Protocol::Tcp, 1)
            .route,
        Route::Outbound(1)
    );
}

#[test]
fn x1_x9_ip_and_cidr() {
    let m = |rule: &str, v4: Option<&str>, v6: Option<&str>| {
        let acl = compile(&format!("ob1({rule})"), &["ob0", "ob1"]);
        acl.route(&host("x.test", v4, v6), Protocol::Tcp, 1).route == Route::Outbound(1)
    };
    assert!(m("127.0.0.1", Some("127.0.0.1"), None));
    assert!(m("::1", None, Some("::1")));
    assert!(!m("127.0.0.1", Some("127.0.0.2"), Some("::1")));
    assert!(!m("127.0.0.1", None, None));
    assert!(!m("10.0.0.0/8", None, None));
    assert!(m("192.168.1.0/24", Some("192.168.1.100"), Some("::1")));
    assert!(m("::1/128", Some("10.0.0.1"), Some("::1")));
    assert!(!m(
        "192.168.1.0/24",
        Some("10.0.0.1"),
        Some("2001:db8::2:1")
    ));
    assert!(m("0.0.0.0/0", Some("10.0.0.1"), None));
    assert!(m("::/0", None, Some("2001:db8::2:1")));
    assert!(!m("::/0", Some("10.0.0.1"), None));
    // Host bits need not be zero; IPv4 and IPv4-mapped IPv6 compare equal.
    assert!(m("1.1.1.1/24", Some("1.1.1.200"), None));
    assert!(m("::ffff:1.2.3.4", Some("1.2.3.4"), None));
    assert!(m("1.2.3.4", None, Some("::ffff:1.2.3.4")));
}

#[test]
fn x10_x20_names_through_the_acl() {
    let m = |rule: &str, name: &str| {
        let acl = compile(&format!("ob1({rule})"), &["ob0", "ob1"]);
        acl.route(&Host::new(name), Protocol::Udp, 53).route == Route::Outbound(1)
    };
    assert!(m("example.com", "example.com"));
    assert!(m("example.com", "EXAMPLE.com."));
    assert!(!m("example.com", "example.org"));
    assert!(m("政府.中国", "xn--mxtq1m.xn--fiqs8s"));
    assert!(!m("政府.中国", "xn--mxtq1m.xn--yfro4i67o"));
    assert!(m("*.example.com", "www.example.com"));
    assert!(!m("*.example.com", "example.com"));
    assert!(!m("*.example.com", ""));
    assert!(m("example*.com", "example2.com"));
    assert!(m("战狼*.com", "xn--2-x14by21c.com"));
    assert!(m("*大学*", "xn--xkry9kk1bz66a.xn--ses554g"));
    assert!(!m("*呵呵*", "xn--6qqt7juua.cn"));
    assert!(m("suffix:apple.com", "apple.com"));
    assert!(m("suffix:apple.com", "store.apple.com"));
    assert!(m("suffix:中国", "中国"));
    assert!(m("suffix:中国", "天安门.中国"));
    assert!(!m("news.com", "fakenews.com"));
    assert!(!m("冲浪", "666.网上冲浪"));
    // Wildcards see IP text; domain rules never see resolved addresses.
    assert!(m("1.2.3.*", "1.2.3.4"));
    let acl = compile("ob1(1.2.3.*)", &["ob0", "ob1"]);
    let d = acl.route(&host("a.test", Some("1.2.3.4"), None), Protocol::Tcp, 1);
    assert_eq!(d.route, Route::Outbound(0));
    // A punycode pattern never matches a punycode request (and warns).
    assert!(!m("xn--mxtq1m.xn--fiqs8s", "xn--mxtq1m.xn--fiqs8s"));
    assert_eq!(compile("ob1(xn--mxtq1m.cn)", &["ob1"]).warnings().len(), 1);
}

#[test]
fn x21_x25_geo() {
    let m = |rule: &str, h: Host| {
        let acl = compile(&format!("ob1({rule})"), &["ob0", "ob1"]);
        acl.route(&h, Protocol::Tcp, 443).route == Route::Outbound(1)
    };
    assert!(m("geoip:us", host("-", Some("73.222.1.100"), None)));
    assert!(!m("geoip:us", host("-", Some("123.123.123.123"), None)));
    assert!(m(
        "geoip:US",
        host("-", None, Some("2607:f8b0:4005:80c::2004"))
    ));
    assert!(!m("geoip:us", host("-", None, Some("240e:947:6001::1f8"))));
    for name in [
        "poop.i-book.com",
        "applepaycash.net",
        "courier-push-apple.com.akadns.net",
        "cdn4.apple-mapkit.com",
    ] {
        assert!(m("geosite:apple", Host::new(name)), "{name}");
    }
    assert!(m("geosite:apple@cn", Host::new("bag.itunes.apple.com")));
    assert!(m("geosite:apple@cn", Host::new("cdn-cn2.apple-mapkit.com")));
    assert!(!m("geosite:apple@cn", Host::new("mr-apple.com.tw")));
    assert!(!m(
        "geosite:apple@cn@haha",
        Host::new("bag.itunes.apple.com")
    ));
}

#[test]
fn inverse_geoip_matches_outside_and_without_addresses() {
    let acl = compile("ob1(geoip:notjp)", &["ob0", "ob1"]);
    let r = |h: Host| acl.route(&h, Protocol::Tcp, 1).route;
    assert_eq!(r(host("-", Some("210.140.1.1"), None)), Route::Outbound(0));
    assert_eq!(r(host("-", Some("8.8.8.8"), None)), Route::Outbound(1));
    assert_eq!(r(host("unresolved.test", None, None)), Route::Outbound(1));
    assert_eq!(
        acl.route_unresolved(&Host::new("x.test"), Protocol::Tcp, 1),
        Verdict::NeedsAddresses
    );
}

#[test]
fn reference_hand_made_dat_files() {
    let mut geo = GeoBytes {
        geoip: Some(GEOIP_TEST.to_vec()),
        geosite: Some(GEOSITE_TEST.to_vec()),
    };
    let acl = Acl::compile(
        "ob1(geosite:test, tcp)\nob2(geosite:test@ads, udp)\nob3(geoip:test)",
        "acl.inline",
        &["ob0", "ob1", "ob2", "ob3"],
        &mut geo,
    )
    .unwrap();
    let r = |h: Host, p| acl.route(&h, p, 1).route;
    assert_eq!(
        r(Host::new("example.com"), Protocol::Tcp),
        Route::Outbound(1)
    );
    assert_eq!(
        r(Host::new("x.example.com"), Protocol::Tcp),
        Route::Outbound(1)
    );
    assert_eq!(
        r(Host::new("xexample.com"), Protocol::Tcp),
        Route::Outbound(0)
    );
    assert_eq!(r(Host::new("a.b.c"), Protocol::Udp), Route::Outbound(2));
    assert_eq!(
        r(Host::new("example.com"), Protocol::Udp),
        Route::Outbound(0)
    );
    assert_eq!(r(Host::new("10.9.8.7"), Protocol::Udp), Route::Outbound(3));
}

#[test]
fn before_resolution() {
    let acl = compile(
        "ob1(a.com)\nob2(10.0.0.0/8, tcp)\nob3(b.com)\nob4(all, udp)",
        &OBS,
    );
    let v = |n: &str, p| acl.route_unresolved(&Host::new(n), p, 1);
    let decided = |route, line| {
        Verdict::Decided(Decision {
            route,
            hijack: None,
            line,
        })
    };
    // The name rule comes first.
    assert_eq!(
        v("a.com", Protocol::Tcp),
        decided(Route::Outbound(0), Some(1))
    );
    // The CIDR rule could come first for TCP, not for UDP.
    assert_eq!(v("b.com", Protocol::Tcp), Verdict::NeedsAddresses);
    assert_eq!(
        v("b.com", Protocol::Udp),
        decided(Route::Outbound(2), Some(3))
    );
    assert_eq!(
        v("c.com", Protocol::Udp),
        decided(Route::Outbound(3), Some(4))
    );
    // An IP literal carries its address.
    assert_eq!(
        v("10.1.2.3", Protocol::Tcp),
        decided(Route::Outbound(1), Some(2))
    );
    assert!(acl.uses_addresses());
    assert!(!compile("ob1(a.com)", &OBS).uses_addresses());
}

#[test]
fn errors_name_origin_line_and_reason() {
    let e = |t: &str| compile_err(t, &["ob1"]);
    assert_eq!(
        e("ob1(all)\n\nlmao(all)"),
        "acl.inline: line 3: outbound lmao not found"
    );
    assert_eq!(
        e("ob1(all)\nboom()"),
        "acl.inline: line 2: invalid syntax: boom()"
    );
    assert_eq!(
        e("direct(all, udp/53,443)"),
        "acl.inline: line 1: invalid hijack address (must be an IP address): 443"
    );
    assert_eq!(
        e("eb1(1.1.2.0/24, */3-1)"),
        "acl.inline: line 1: outbound eb1 not found"
    );
    assert_eq!(
        e("ob1(1.1.2.0/24, */3-1)"),
        "acl.inline: line 1: invalid protocol/port: */3-1"
    );
    assert_eq!(
        e("ob1(example.com/x)"),
        "acl.inline: line 1: invalid CIDR address: example.com/x"
    );
    assert_eq!(
        e("ob1(geoip:xx)"),
        "acl.inline: line 1: GeoIP country code xx not found"
    );
    assert_eq!(
        e("ob1(geosite:nope)"),
        "acl.inline: line 1: GeoSite name nope not found"
    );
    assert_eq!(
        e("ob1(geoip:)"),
        "acl.inline: line 1: empty GeoIP country code"
    );
    // A geo rule without a database.
    let err = Acl::compile(
        "ob1(geoip:us)",
        "rules.acl",
        &["ob1"],
        &mut GeoFiles::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rules.acl: line 1: no acl.geoip file is configured"
    );
    // A broken database, a bad type, a bad regex, a bad address length.
    let bad = |ip: Option<Vec<u8>>, site: Option<Vec<u8>>, rule: &str| {
        let mut geo = GeoBytes {
            geoip: ip,
            geosite: site,
        };
        Acl::compile(rule, "acl.inline", &["ob1"], &mut geo)
            .unwrap_err()
            .to_string()
    };
    assert!(bad(Some(vec![0x0a, 0x10]), None, "ob1(geoip:x)")
        .starts_with("acl.inline: line 1: geoip: "));
    let site = |d: Domain| {
        Some(
            GeoSiteList {
                entry: vec![super::geo::GeoSite {
                    country_code: "x".into(),
                    domain: vec![d],
                }],
            }
            .encode_to_vec(),
        )
    };
    assert_eq!(
        bad(None, site(dom(7, "a", &[])), "ob1(geosite:x)"),
        "acl.inline: line 1: unsupported domain type"
    );
    assert!(bad(None, site(dom(1, "a(", &["z"])), "ob1(geosite:x@other)").contains("regex"));
    let ip = GeoIpList {
        entry: vec![GeoIp {
            country_code: "x".into(),
            cidr: vec![Cidr {
                ip: vec![1, 2, 3],
                prefix: 8,
            }],
            inverse_match: false,
        }],
    };
    assert_eq!(
        bad(Some(ip.encode_to_vec()), None, "ob1(geoip:x)"),
        "acl.inline: line 1: invalid IP length"
    );
}

#[test]
fn geo_databases_load_only_when_used() {
    struct Count(usize, usize);
    impl GeoLoader for Count {
        fn geoip(&mut self) -> Result<Vec<u8>, String> {
            self.0 += 1;
            Ok(mini_geo().geoip.unwrap())
        }
        fn geosite(&mut self) -> Result<Vec<u8>, String> {
            self.1 += 1;
            Ok(mini_geo().geosite.unwrap())
        }
    }
    let mut c = Count(0, 0);
    Acl::compile("ob1(all)", "acl.inline", &["ob1"], &mut c).unwrap();
    assert_eq!((c.0, c.1), (0, 0));
    Acl::compile(
        "ob1(geoip:us)\nob1(geoip:jp)",
        "acl.inline",
        &["ob1"],
        &mut c,
    )
    .unwrap();
    assert_eq!((c.0, c.1), (1, 0));
}

#[test]
fn zero_start_port_matches_every_port_and_warns() {
    let acl = compile("ob1(all, tcp/0-100)", &["ob0", "ob1"]);
    assert_eq!(
        acl.route(&Host::new("a"), Protocol::Tcp, 5000).route,
        Route::Outbound(1)
    );
    assert_eq!(
        acl.route(&Host::new("a"), Protocol::Udp, 50).route,
        Route::Outbound(0)
    );
    assert_eq!(acl.warnings().len(), 1);
    assert!(
        acl.warnings()[0].starts_with("acl.inline: line 1: "),
        "{:?}",
        acl.warnings()
    );
}

#[test]
fn files_and_inline_entries() {
    let dir = std::env::temp_dir().join(format!("quelay-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.acl");
    std::fs::write(&path, "# rules\nob1(a.com)\r\nnope(b.com)\n").unwrap();
    let e = Acl::from_file(&path, &["ob1"], &mut GeoFiles::default()).unwrap_err();
    assert_eq!(e.origin, path.display().to_string());
    assert_eq!(
        (e.line, e.reason.as_str()),
        (Some(3), "outbound nope not found")
    );
    std::fs::write(&path, b"ob1(a.com)\nob1(\xff)\n").unwrap();
    let e = Acl::from_file(&path, &["ob1"], &mut GeoFiles::default()).unwrap_err();
    assert_eq!((e.line, e.reason.as_str()), (Some(2), "not valid UTF-8"));
    std::fs::write(&path, "ob1(a.com)\n").unwrap();
    let acl = Acl::from_file(&path, &["ob0", "ob1"], &mut GeoFiles::default()).unwrap();
    assert_eq!(
        acl.route(&Host::new("a.com"), Protocol::Tcp, 1).route,
        Route::Outbound(1)
    );
    let missing = Acl::from_file(&dir.join("missing"), &["ob1"], &mut GeoFiles::default());
    assert!(missing.unwrap_err().line.is_none());
    std::fs::remove_dir_all(&dir).unwrap();

    let inline = ["ob1(a.com)".to_string(), "# comment".into(), "bad".into()];
    let e = Acl::from_inline(&inline, &["ob1"], &mut GeoFiles::default()).unwrap_err();
    assert_eq!(e.to_string(), "acl.inline: line 3: invalid syntax: bad");
}

#[test]
fn first_match_across_many_rules() {
    // 10,000 rules of every kind; each request must hit the first rule that names it.
    let mut text = String::new();
    for i in 0..2_000u32 {
        text.push_str(&format!(
            "ob{}(d{i}.example, tcp/{})\n",
            i % 3,
            1000 + i % 7
        ));
        text.push_str(&format!("ob{}(suffix:s{i}.example)\n", (i + 1) % 3));
        text.push_str(&format!(
            "ob{}(10.{}.{}.0/24)\n",
            (i + 2) % 3,
            i / 256,
            i % 256
        ));
        text.push_str(&format!("ob{}(w{i}-*.example, udp)\n", i % 3));
        text.push_str(&format!("ob{}(2001:db8:{i:x}::/48)\n", (i + 1) % 3));
    }
    text.push_str("reject(all)\n");
    let acl = compile(&text, &["ob0", "ob1", "ob2"]);
    assert_eq!(acl.len(), 10_001);
    for i in (0..2_000u32).step_by(97) {
        let r = |h: Host, p, port| acl.route(&h, p, port).line;
        let base = (i * 5) as usize;
        assert_eq!(
            r(
                Host::new(&format!("d{i}.example")),
                Protocol::Tcp,
                1000 + (i % 7) as u16
            ),
            Some(base + 1)
        );
        assert_eq!(
            r(Host::new(&format!("d{i}.example")), Protocol::Udp, 1000),
            Some(10_001)
        );
        assert_eq!(
            r(Host::new(&format!("x.s{i}.example")), Protocol::Udp, 1),
            Some(base + 2)
        );
        assert_eq!(
            r(
                Host::new(&format!("10.{}.{}.9", i / 256, i % 256)),
                Protocol::Tcp,
                1
            ),
            Some(base + 3)
        );
        assert_eq!(
            r(Host::new(&format!("w{i}-zz.example")), Protocol::Udp, 1),
            Some(base + 4)
        );
        assert_eq!(
            r(Host::new(&format!("2001:db8:{i:x}::1")), Protocol::Tcp, 1),
            Some(base + 5)
        );
    }
}

#[test]
fn a_compiled_acl_is_shared_between_workers() {
    fn shared<T: Send + Sync>() {}
    shared::<Acl>();
    shared::<Host>();
}
