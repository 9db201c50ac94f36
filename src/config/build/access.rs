//! Who may connect and what everyone else sees: `auth`, `masquerade`, `trafficStats`.

use std::collections::BTreeMap;

use super::{address, lower, W};
use crate::config::error::{fault, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::*;

pub(super) fn auth(top: &mut Section, w: &mut W) -> Result<Auth, Fault> {
    let mut s = top.section("auth")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);
    let password_key = s.key("password");
    let password = s.string("password", w)?.unwrap_or_default();
    let userpass_key = s.key("userpass");
    let userpass = s.string_map("userpass", w)?;
    let mut http = s.section("http")?;
    let url_key = http.key("url");
    let url = http.string("url", w)?.unwrap_or_default();
    let insecure = http.bool("insecure")?;
    http.finish(w);
    let command_key = s.key("command");
    let command = s.string("command", w)?.unwrap_or_default();
    s.finish(w);
    match kind.as_str() {
        "" => Err(fault(
            type_key,
            "required: password, userpass, http or command",
        )),
        "password" if password.is_empty() => Err(fault(
            password_key,
            "required for auth.type password (must not be empty)",
        )),
        "password" => Ok(Auth::Password(password)),
        "userpass" => {
            if userpass.is_empty() {
                return Err(fault(
                    userpass_key,
                    "required for auth.type userpass: a mapping of user names to passwords",
                ));
            }
            let mut users = BTreeMap::new();
            for (name, pass) in userpass {
                let key = format!("{userpass_key}.{name}");
                if name.contains(':') {
                    w.push(Warning::new(
                        key.clone(),
                        "user name contains ':', so this user can never log in (clients send user:pass)",
                    ));
                }
                if users.insert(Auth::user_key(&name), pass).is_some() {
                    return Err(fault(
                        key,
                        "user given twice (user names are case-insensitive)",
                    ));
                }
            }
            Ok(Auth::UserPass(users))
        }
        "http" | "https" => {
            if url.is_empty() {
                return Err(fault(url_key, "required for auth.type http"));
            }
            http_url(&url_key, &url)?;
            Ok(Auth::Http { url, insecure })
        }
        "command" | "cmd" if command.is_empty() => Err(fault(command_key, "empty auth command")),
        "command" | "cmd" => Ok(Auth::Command(command)),
        other => Err(fault(
            type_key,
            format!("unsupported auth type {other:?} (use password, userpass, http or command)"),
        )),
    }
}

pub(super) fn traffic_stats(top: &mut Section, w: &mut W) -> Result<Option<TrafficStats>, Fault> {
    let mut s = top.section("trafficStats")?;
    let listen = address(&mut s, "listen", w)?;
    let secret = s.string("secret", w)?.unwrap_or_default();
    if let Some(listen) = listen.filter(|_| secret.is_empty()) {
        w.push(Warning::new(
            s.key("secret"),
            format!("empty: anyone who can reach {listen} can read traffic counts and kick users"),
        ));
    }
    s.finish(w);
    Ok(listen.map(|listen| TrafficStats { listen, secret }))
}

pub(super) fn masquerade(top: &mut Section, w: &mut W) -> Result<Masquerade, Fault> {
    let mut s = top.section("masquerade")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);

    let mut file = s.section("file")?;
    let dir_key = file.key("dir");
    let dir = file.nonempty_string("dir", w)?;
    file.finish(w);

    let mut proxy = s.section("proxy")?;
    let url_key = proxy.key("url");
    let url = proxy.nonempty_string("url", w)?;
    let rewrite_host = proxy.bool("rewriteHost")?;
    let x_forwarded = proxy.bool("xForwarded")?;
    let insecure = proxy.bool("insecure")?;
    proxy.finish(w);

    let mut string = s.section("string")?;
    let content_key = string.key("content");
    let content = string.string("content", w)?.unwrap_or_default();
    let headers_key = string.key("headers");
    let header_list = string.string_map("headers", w)?;
    let status_key = string.key("statusCode");
    let status = string.u64("statusCode")?;
    string.finish(w);

    let handler = match kind.as_str() {
        "" | "404" => MasqueradeHandler::NotFound,
        "file" => MasqueradeHandler::File {
            dir: dir
                .ok_or_else(|| fault(dir_key, "required for masquerade.type file"))?
                .into(),
        },
        "proxy" => {
            let url =
                url.ok_or_else(|| fault(url_key.clone(), "required for masquerade.type proxy"))?;
            http_url(&url_key, &url)?;
            MasqueradeHandler::Proxy {
                url,
                rewrite_host,
                x_forwarded,
                insecure,
            }
        }
        "string" => {
            if content.is_empty() {
                return Err(fault(
                    content_key,
                    "required for masquerade.type string (must not be empty)",
                ));
            }
            let status_code = match status {
                None | Some(0) => DEFAULT_MASQUERADE_STATUS,
                Some(code @ 200..=599) if code != 233 => code as u16,
                Some(code) => {
                    return Err(fault(
                        status_key,
                        format!("{code} is not allowed (200 to 599, except 233)"),
                    ))
                }
            };
            let mut headers = BTreeMap::new();
            for (name, value) in header_list {
                let key = format!("{headers_key}.{name}");
                if name.is_empty() || !name.bytes().all(is_token_byte) {
                    return Err(fault(key, "not a valid HTTP header name"));
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(fault(key, "header values cannot hold line breaks"));
                }
                headers.insert(name.to_ascii_lowercase(), value);
            }
            MasqueradeHandler::String {
                content,
                headers,
                status_code,
            }
        }
        other => {
            return Err(fault(
                type_key,
                format!("unsupported masquerade type {other:?} (use 404, file, proxy or string)"),
            ))
        }
    };
    let listen_http = address(&mut s, "listenHTTP", w)?;
    let listen_https = address(&mut s, "listenHTTPS", w)?;
    if listen_http.is_some() && listen_https.is_none() {
        return Err(fault(
            s.key("listenHTTPS"),
            "required when masquerade.listenHTTP is set (HTTP-only masquerade is not supported)",
        ));
    }
    let force_https = s.bool("forceHTTPS")?;
    s.finish(w);
    Ok(Masquerade {
        handler,
        listen_http,
        listen_https,
        force_https,
    })
}

/// Check that `url` is an absolute http(s) URL with a host.
fn http_url(key: &str, url: &str) -> Result<(), Fault> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return Err(fault(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(fault(key, format!("{url:?} has no host")));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(fault(
            key,
            format!("{url:?} contains spaces or control characters"),
        ));
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
