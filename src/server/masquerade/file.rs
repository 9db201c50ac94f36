//! Blocking helpers that talk to the outside world on behalf of the server: the `http`
//! authenticator (protocol notes §2.4) and the `file` and `proxy` masquerades (§7).
//!
//! They run on a thread pool off the data path, which posts each result back to the
//! worker that asked, so they may block: on the network up to their timeout, on the disk as
//! long as it takes. None of them panics on what the network, the disk or the config hands
//! it; every failure becomes an `Err` (authentication) or an HTTP error response
//! (masquerades), as the Go server would answer.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ureq::config::AutoHeaderValue;
use ureq::http;
use ureq::tls::TlsConfig;
use ureq::Agent;

use crate::proto::h3::{http_date, not_found_response, response, FrameHeader, Request};

/// Most bytes read from an auth backend's answer: `{"ok":true,"id":"..."}` is tiny, and a
/// backend that sends more is broken.
const AUTH_MAX_BODY: u64 = 64 * 1024;
/// Most bytes the file masquerade puts in one response. Whole files above this get a 500
/// (Go would stream them; we answer from one buffer); range requests within it still work.
pub const MAX_FILE_BODY: u64 = 16 * 1024 * 1024;
/// Directory listings stop after this many entries, so a huge directory costs bounded memory.
const MAX_DIR_ENTRIES: usize = 10_000;
/// The whole upstream exchange of the proxy masquerade, connect to last body byte.
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most upstream body bytes the proxy masquerade relays; a larger body is a 502.
pub const MAX_PROXY_BODY: u64 = 16 * 1024 * 1024;

/// `content-type` of Go's `http.Error`.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

// ---------------------------------------------------------------------------------------
// `http` authenticator
// ---------------------------------------------------------------------------------------

/// The official `http` authenticator: POSTs `{"addr","auth","tx"}` as JSON to `url` and
/// expects 200 with `{"ok": bool, "id": string}`.
///
/// `Ok(Some(id))` accepts the client, `Ok(None)` is the backend's "no"; `Err` says why the
/// backend could not be asked or made no sense (transport error, timeout, status other than
/// 200, bad JSON, `ok` with an empty `id`). The caller treats `Err` as a failed login and
/// logs the reason. `insecure` skips verification of an https backend's certificate.
/// Redirects are followed as Go's `http.Client` does (up to 10).
pub fn http_auth(
    url: &str,
    insecure: bool,
    addr: SocketAddr,
    auth: &str,
    tx: u64,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let body = serde_json::json!({ "addr": addr.to_string(), "auth": auth, "tx": tx }).to_string();
    let mut reply = auth_agent(insecure)
        .post(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .map_err(|e| format!("auth backend: {e}"))?;
    let status = reply.status().as_u16();
    if status != 200 {
        return Err(format!("auth backend answered status {status}"));
    }
    let body = reply
        .body_mut()
        .with_config()
        .limit(AUTH_MAX_BODY)
        .read_to_vec()
        .map_err(|e| format!("auth backend body: {e}"))?;
    parse_auth_reply(&body)
}

/// One pooled agent per certificate policy, shared by every auth call; the timeout is set
/// per request.
fn auth_agent(insecure: bool) -> &'static Agent {
    static VERIFYING: OnceLock<Agent> = OnceLock::new();
    static INSECURE: OnceLock<Agent> = OnceLock::new();
    let cell = if insecure { &INSECURE } else { &VERIFYING };
    cell.get_or_init(|| {
        Agent::config_builder()
            .http_status_as_error(false)
            // hysteria's auth client has its own Transport, which ignores HTTP_PROXY.
            .proxy(None)
            .tls_config(TlsConfig::builder().disable_verification(insecure).build())
            .build()
            .new_agent()
    })
}

/// Go's `json.NewDecoder(body).Decode(&httpAuthResponse)`: the first JSON value must be an
/// object; keys match case-insensitively (an exact match wins); missing or `null` fields
/// stay false/empty; a field of the wrong type is an error; trailing bytes are ignored.
fn parse_auth_reply(body: &[u8]) -> Result<Option<String>, String> {
    use serde_json::Value;
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .ok_or("auth backend sent an empty body")?
        .map_err(|e| format!("auth backend sent bad JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("auth backend's JSON is not an object")?;
    let field = |name: &str| {
        object.get(name).or_else(|| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    };
    let id = match field("id") {
        None | Some(Value::Null) => "",
        Some(Value::String(id)) => id.as_str(),
        Some(_) => return Err("auth backend's \"id\" is not a string".into()),
    };
    let ok = match field("ok") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(ok)) => *ok,
        Some(_) => return Err("auth backend's \"ok\" is not a boolean".into()),
    };
    match (ok, id.is_empty()) {
        (false, _) => Ok(None),
        (true, true) => Err("auth backend accepted with an empty id".into()),
        (true, false) => Ok(Some(id.to_owned())),
    }
}

// ---------------------------------------------------------------------------------------
// `file` masquerade
// ---------------------------------------------------------------------------------------

/// The `file` masquerade: Go's `http.FileServer(http.Dir(dir))` for GET and HEAD.
///
/// Like Go: `path.Clean` of the decoded URL path; a directory without a trailing slash and
/// a file with one are 301-redirected, `/index.html` redirects to `./`; a directory serves
/// its `index.html`, else a `<pre>` listing; `content-type` by extension (text/binary sniff
/// otherwise), `last-modified`, `accept-ranges`, `If-Modified-Since` → 304, one byte range
/// → 206; missing → the default masquerade's 404, unreadable → 403, other errors → 500.
///
/// Unlike Go: other methods get 405 with `allow: GET, HEAD` (Go serves the file to any
/// method); nothing outside `dir` is served, not even through a symlink (404); special
/// files (FIFOs, devices) are 404; a multi-range request gets the whole file; a whole file
/// larger than [`MAX_FILE_BODY`] is a 500; only IMF-fixdate is understood in dates.
#[derive(Clone, Debug)]
pub struct FileMasquerade {
    /// The served root, as configured; canonicalised on every request, so it may appear or
    /// move after startup.
    dir: PathBuf,
}

/// Why a path could not be served, in Go's `toHTTPError` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileError {
    NotFound,
    Forbidden,
    Internal,
}

impl From<io::Error> for FileError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            // Go's `http.Dir` maps ENOTDIR to "not exist" too; EINVAL is a NUL in the name.
            io::ErrorKind::NotFound
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::InvalidInput => FileError::NotFound,
            io::ErrorKind::PermissionDenied => FileError::Forbidden,
            _ => FileError::Internal,
        }
    }
}

impl FileMasquerade {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Answers one request with a complete HTTP/3 response (HEADERS, then DATA if any).
    pub fn respond(&self, req: &Request) -> Vec<u8> {
        let date = now_http_date();
        let head = req.method == "HEAD";
        if req.method != "GET" && !head {
            let allow = [("allow", "GET, HEAD")];
            return text_response(405, &allow, "Method Not Allowed\n", false, &date);
        }
        let Some(mut url_path) = req.url_path() else {
            let not_found = not_found_response(Some(&date));
            return if head {
                headers_only(not_found)
            } else {
                not_found
            };
        };
        if !url_path.starts_with('/') {
            url_path.insert(0, '/');
        }
        let query = raw_query(&req.path);
        if url_path.ends_with("/index.html") {
            return redirect("./", query, &date);
        }
        let result = self.resolve(&url_path).and_then(|(real, meta)| {
            if meta.is_dir() {
                if !url_path.ends_with('/') {
                    return Ok(redirect(&format!("{}/", go_base(&url_path)), query, &date));
                }
                let index = real.join("index.html");
                match self.confine(&index) {
                    Ok((index, meta)) if meta.is_file() => {
                        serve_file(&index, "index.html", &meta, req, head, &date)
                    }
                    _ => dir_listing(&real, &meta, req, head, &date),
                }
            } else if meta.is_file() {
                if url_path.ends_with('/') {
                    return Ok(redirect(
                        &format!("../{}", go_base(&url_path)),
                        query,
                        &date,
                    ));
                }
                serve_file(&real, go_base(&url_path), &meta, req, head, &date)
            } else {
                Err(FileError::NotFound)
            }
        });
        match result {
            Ok(bytes) => bytes,
            Err(FileError::NotFound) if head => headers_only(not_found_response(Some(&date))),
            Err(FileError::NotFound) => not_found_response(Some(&date)),
            Err(FileError::Forbidden) => text_response(403, &[], "403 Forbidden\n", head, &date),
            Err(FileError::Internal) => {
                text_response(500, &[], "500 Internal Server Error\n", head, &date)
            }
        }
    }

    /// Maps a decoded URL path to a canonical path inside the root, with its metadata.
    fn resolve(&self, url_path: &str) -> Result<(PathBuf, fs::Metadata), FileError> {
        if url_path.contains('\0') {
            return Err(FileError::NotFound);
        }
        let mut path = self.dir.clone();
        // Go's `path.Clean("/" + p)`: `..` stops at the root, so it can never climb out.
        let mut segments: Vec<&str> = Vec::new();
        for segment in url_path.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        path.extend(segments);
        self.confine(&path)
    }

    /// Canonicalises `path` (resolving every symlink) and refuses anything that ends up
    /// outside the canonical root.
    fn confine(&self, path: &Path) -> Result<(PathBuf, fs::Metadata), FileError> {
        let root = fs::canonicalize(&self.dir)?;
        let real = fs::canonicalize(path)?;
        if !real.starts_with(&root) {
            return Err(FileError::NotFound);
        }
        let meta = fs::metadata(&real)?;
        Ok((real, meta))
    }
}

/// Go's `serveContent` for a regular file; `name` is the name it was asked for (a
/// symlink's, not its target's), which picks the content type.
fn serve_file(
    path: &Path,
    name: &str,
    meta: &fs::Metadata,
    req: &Request,
    head: bool,
    date: &str,
) -> Result<Vec<u8>, FileError> {
    let size = meta.len();
    let mtime = unix_mtime(meta);
    let last_modified = mtime.map(http_date);
    if not_modified(req, mtime) {
        return Ok(not_modified_response(last_modified.as_deref(), date));
    }
    // Go's `checkIfRange` without ETags: the range applies only if If-Range is the exact
    // modification time.
    let range_header = req.header("range").filter(|_| {
        req.header("if-range")
            .is_none_or(|v| parse_http_date(v).is_some_and(|t| Some(t) == mtime))
    });
    let range = match range_header.map(|r| parse_range(r, size)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(range))) => Some(range),
        Some(Err(RangeError::NoOverlap)) => {
            return Ok(text_response(
                416,
                &[("content-range", &format!("bytes */{size}"))],
                "invalid range: failed to overlap\n",
                head,
                date,
            ));
        }
        Some(Err(RangeError::Invalid)) => {
            return Ok(text_response(416, &[], "invalid range\n", head, date));
        }
    };
    let (status, start, len) = match range {
        Some((start, len)) => (206, start, len),
        None => (200, 0, size),
    };
    if len > MAX_FILE_BODY && !head {
        return Err(FileError::Internal);
    }
    let content_type = match content_type_by_name(Path::new(name)) {
        Some(known) => known,
        // Go sniffs the first 512 bytes of the file, whatever the range.
        None => sniff(&read_span(path, 0, size.min(512))?),
    };
    let body = if head {
        Vec::new()
    } else {
        read_span(path, start, len)?
    };
    let content_range = format!("bytes {start}-{}/{size}", (start + len).saturating_sub(1));
    let length = len.to_string();
    let mut headers: Vec<(&str, &str)> = vec![("content-type", content_type)];
    if let Some(lm) = &last_modified {
        headers.push(("last-modified", lm));
    }
    headers.push(("accept-ranges", "bytes"));
    if status == 206 {
        headers.push(("content-range", &content_range));
    }
    headers.push(("date", date));
    headers.push(("content-length", &length));
    Ok(response(status, &headers, if head { b"" } else { &body }))
}

/// Reads `len` bytes at `start` from a regular file, refusing a symlink swapped in since the
/// path was checked and never blocking on a FIFO.
fn read_span(path: &Path, start: u64, len: u64) -> Result<Vec<u8>, FileError> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(FileError::NotFound);
    }
    file.seek(SeekFrom::Start(start))?;
    let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut body)?;
    // The file shrank since its size was read: the promised length would be a lie.
    if body.len() as u64 != len {
        return Err(FileError::Internal);
    }
    Ok(body)
}

/// Go's `dirList`, after `checkIfModifiedSince` and `setLastModified`.
fn dir_listing(
    path: &Path,
    meta: &fs::Metadata,
    req: &Request,
    head: bool,
    date: &str,
) -> Result<Vec<u8>, FileError> {
    let mtime = unix_mtime(meta);
    let last_modified = mtime.map(http_date);
    if not_modified(req, mtime) {
        return Ok(not_modified_response(last_modified.as_deref(), date));
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(path)?.take(MAX_DIR_ENTRIES) {
        let entry = entry?;
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            name.push('/');
        }
        names.push(name);
    }
    names.sort();
    let mut body = String::from(
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n",
    );
    for name in &names {
        body.push_str(&format!(
            "<a href=\"{}\">{}</a>\n",
            href(name),
            html_escape(name)
        ));
    }
    body.push_str("</pre>\n");
    let length = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "text/html; charset=utf-8")];
    if let Some(lm) = &last_modified {
        headers.push(("last-modified", lm));
    }
    headers.push(("date", date));
    headers.push(("content-length", &length));
    Ok(response(
        200,
        &headers,
        if head { b"" } else { body.as_bytes() },
    ))
}

/// Go's `checkIfModifiedSince` (only reached for GET and HEAD): true when the resource is
/// no newer than `If-Modified-Since` and no `If-None-Match` overrides it.
fn not_modified(req: &Request, mtime: Option<u64>) -> bool {
    if req.header("if-none-match").is_some() {
        return false;
    }
    match (
        mtime,
        req.header("if-modified-since").and_then(parse_http_date),
    ) {
        (Some(mtime), Some(since)) => mtime <= since,
        _ => false,
    }
}

/// Go's `writeNotModified`: no content headers, `last-modified` kept (there is no ETag).
fn not_modified_response(last_modified: Option<&str>, date: &str) -> Vec<u8> {
    let mut headers = Vec::with_capacity(2);
    if let Some(lm) = last_modified {
        headers.push(("last-modified", lm));
    }
    headers.push(("date", date));
    response(304, &headers, b"")
}

/// The HEADERS frame of an encoded response without its DATA: Go writes no body for HEAD
/// but keeps the `content-length` the body would have had.
fn headers_only(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Ok(Some((header, used))) = FrameHeader::parse(&bytes) {
        let end = usize::try_from(header.len)
            .ok()
            .and_then(|len| len.checked_add(used));
        if let Some(end) = end {
            bytes.truncate(end);
        }
    }
    bytes
}

/// Go's `localRedirect`: 301 to a relative location, the query kept.
fn redirect(location: &str, query: &str, date: &str) -> Vec<u8> {
    // The location comes from a decoded path and an on-disk name: escape control
    // characters (a `%0a` in a name), which no field value may hold.
    let mut location: String = location
        .chars()
        .map(|c| {
            if c.is_ascii_control() {
                format!("%{:02X}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect();
    if !query.is_empty() {
        location.push('?');
        location.push_str(query);
    }
    response(301, &[("location", &location), ("date", date)], b"")
}

/// Go's `http.Error`: a plain-text body after `extra` fields; HEAD gets the length but
/// not the body.
fn text_response(
    status: u16,
    extra: &[(&str, &str)],
    body: &str,
    head: bool,
    date: &str,
) -> Vec<u8> {
    let length = body.len().to_string();
    let mut headers = extra.to_vec();
    headers.extend([
        ("content-type", TEXT_PLAIN),
        ("x-content-type-options", "nosniff"),
        ("date", date),
        ("content-length", &length),
    ]);
    response(status, &headers, if head { b"" } else { body.as_bytes() })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeError {
    /// Not a byte range Go can parse: 416 "invalid range".
    Invalid,
    /// Well-formed but past the end: 416 with `content-range: bytes */size`.
    NoOverlap,
}

/// Go's `parseRange` for one range: `Ok(Some((start, len)))`, or `Ok(None)` to serve the
/// whole file (an empty header, or several ranges, which Go would send as multipart).
fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, RangeError> {
    if header.is_empty() {
        return Ok(None);
    }
    let specs = header.strip_prefix("bytes=").ok_or(RangeError::Invalid)?;
    let mut parts = specs.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (parts.next(), parts.next()) else {
        return if specs.split(',').any(|s| !s.trim().is_empty()) {
            Ok(None)
        } else {
            Err(RangeError::Invalid)
        };
    };
    let (first, last) = spec.split_once('-').ok_or(RangeError::Invalid)?;
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RangeError::Invalid);
        }
        s.parse::<u64>().map_err(|_| RangeError::Invalid)
    };
    if first.is_empty() {
        // "-N": the last N bytes.
        let n = number(last)?.min(size);
        if n == 0 {
            return Err(RangeError::NoOverlap);
        }
        return Ok(Some((size - n, n)));
    }
    let start = number(first)?;
    if start >= size {
        return Err(RangeError::NoOverlap);
    }
    let end = if last.is_empty() {
        size - 1
    } else {
        let end = number(last)?;
        if end < start {
            return Err(RangeError::Invalid);
        }
        end.min(size - 1)
    };
    Ok(Some((start, end - start + 1)))
}

/// Go's `mime.TypeByExtension` for the types a web site needs (builtin table plus the
/// common `mime.types` entries).
fn content_type_by_name(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "xml" => "text/xml; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "ico" => "image/vnd.microsoft.icon",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

/// The part of Go's `DetectContentType` that matters without an extension: text or not.
fn sniff(body: &[u8]) -> &'static str {
    let head = &body[..body.len().min(512)];
    let binary = head.iter().any(|&b| {
        b <= 0x08 || b == 0x0b || (0x0e..=0x1a).contains(&b) || (0x1c..=0x1f).contains(&b)
    });
    if binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// Seconds since the epoch of the last modification; `None` when unknown or at the epoch
/// (Go's `isZeroTime`: no `last-modified` then).
fn unix_mtime(meta: &fs::Metadata) -> Option<u64> {
    let secs = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs();
    (secs > 0).then_some(secs)
}

/// Go's `path.Base`.
fn go_base(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// Go's `url.URL{Path: name}.String()`: path-escaped, with `./` before a first segment
/// holding a colon (it would read as a scheme).
fn href(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    if name.split('/').next().is_some_and(|s| s.contains(':')) {
        out.push_str("./");
    }
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Go's `htmlReplacer`.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------

fn now_http_date() -> String {
    http_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") to seconds since the epoch.
/// The obsolete RFC 850 and asctime forms Go also accepts are `None`, as is anything
/// before 1970.
fn parse_http_date(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = s.split_ascii_whitespace();
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?.strip_suffix(',')?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if zone != "GMT" || parts.next().is_some() || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let digits = |s: &str| -> Option<u64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let day = digits(day).filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|&m| m == month)? as u64 + 1;
    let year = digits(year).filter(|&y| y >= 1970)?;
    let mut hms = time.split(':');
    let (h, m, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() || h.len() != 2 || m.len() != 2 || sec.len() != 2 {
        return None;
    }
    let (h, m, sec) = (digits(h)?, digits(m)?, digits(sec)?);
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days since the epoch from a civil date (H. Hinnant), in the unsigned range since
    // year >= 1970.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

// ---------------------------------------------------------------------------------------
// `proxy` masquerade
// ---------------------------------------------------------------------------------------

/// Hop-by-hop fields Go's `httputil.ReverseProxy` drops in both directions, plus every
/// `proxy-*` field.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// The `proxy` masquerade: hysteria's `httputil.ReverseProxy` with `Rewrite` (`SetURL`,
/// then the original Host back unless `rewrite_host`, then `SetXForwarded` if
/// `x_forwarded`).
///
/// The request's method, path and query (joined onto the upstream URL's), body and fields
/// go upstream over HTTP/1.1, minus hop-by-hop fields, fields named in `connection`,
/// client-sent `forwarded`/`x-forwarded-*` (Go strips them in `Rewrite` mode) and
/// `expect`; split `cookie` fields are joined with "; " as quic-go does. No redirects are
/// followed. The upstream's status, fields (minus hop-by-hop) and body come back; any
/// upstream failure, a body over [`MAX_PROXY_BODY`], or the whole exchange taking longer
/// than [`PROXY_TIMEOUT`] is a 502 with no body, as in Go. `HTTP_PROXY` is not honoured.
/// Plain CONNECT is a 502: there is no tunnel to relay.
pub struct ProxyMasquerade {
    /// The upstream URL as configured.
    url: String,
    /// `rewriteHost`: send the upstream's host as Host instead of the client's authority.
    rewrite_host: bool,
    /// `xForwarded`: add `X-Forwarded-For/-Host/-Proto`.
    x_forwarded: bool,
    /// `insecure`: do not verify an https upstream's certificate.
    insecure: bool,
    /// Pooled connections to the upstream.
    agent: Agent,
    /// `http` or `https`.
    scheme: String,
    /// The upstream's `host[:port]`, as written in the URL (Go's `URL.Host`).
    authority: String,
    /// The upstream URL's path, already escaped; "/" when it has none.
    base_path: String,
    /// The upstream URL's raw query, without `?`.
    base_query: String,
}

impl std::fmt::Debug for ProxyMasquerade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMasquerade")
            .field("url", &self.url)
            .field("rewrite_host", &self.rewrite_host)
            .field("x_forwarded", &self.x_forwarded)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl ProxyMasquerade {
    /// Checks `url` (absolute `http` or `https` with a host) and builds the pooled agent.
    pub fn new(
        url: impl Into<String>,
        rewrite_host: bool,
        x_forwarded: bool,
        insecure: bool,
    ) -> Result<Self, String> {
        let url = url.into();
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("masquerade proxy url {url:?}: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
                s.to_ascii_lowercase()
            }
            _ => {
                return Err(format!(
                    "masquerade proxy url {url:?}: scheme must be http or https"
                ))
            }
        };
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() => {
                // Go's `URL.Host` carries no userinfo.
                a.as_str().rsplit('@').next().unwrap_or("").to_owned()
            }
            _ => return Err(format!("masquerade proxy url {url:?}: no host")),
        };
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .allow_non_standard_methods(true)
            .timeout_global(Some(PROXY_TIMEOUT))
            // Go's ReverseProxy sends no User-Agent the client did not send; ureq adds
            // none of its own fields either.
            .user_agent(AutoHeaderValue::None)
            .accept(AutoHeaderValue::None)
            .accept_encoding(AutoHeaderValue::None)
            .tls_config(TlsConfig::builder().disable_verification(insecure).build())
            .build()
            .new_agent();
        Ok(Self {
            scheme,
            authority,
            base_path: uri.path().to_owned(),
            base_query: uri.query().unwrap_or("").to_owned(),
            url,
            rewrite_host,
            x_forwarded,
            insecure,
            agent,
        })
    }

    /// Relays one request upstream and returns the complete HTTP/3 response. `body` is the
    /// request's body, `client` the QUIC peer's address (for `X-Forwarded-For`).
    pub fn respond(&self, req: &Request, body: &[u8], client: SocketAddr) -> Vec<u8> {
        let date = now_http_date();
        match self.forward(req, body, client, &date) {
            Ok(bytes) => bytes,
            Err(reason) => {
                // Go logs this at error level. The authority only: the URL may hold a password.
                crate::warn_limited!(
                    "masquerade proxy: upstream {} error: {reason}",
                    self.authority
                );
                response(502, &[("date", &date)], b"")
            }
        }
    }

    fn forward(
        &self,
        req: &Request,
        body: &[u8],
        client: SocketAddr,
        date: &str,
    ) -> Result<Vec<u8>, String> {
        let method = http::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| format!("bad method {:?}", req.method))?;
        if method == http::Method::CONNECT {
            return Err("CONNECT cannot be proxied".into());
        }
        let uri = self.upstream_uri(&req.path)?;
        let headers = self.request_headers(req, client);
        let head = method == http::Method::HEAD;
        let mut request = http::Request::new(());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let (parts, ()) = request.into_parts();
        // Go sends no body (and no content-length) for an empty body, except that POST,
        // PUT and PATCH say `content-length: 0`.
        let result = if !body.is_empty()
            || matches!(
                method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            ) {
            self.agent.run(http::Request::from_parts(parts, body))
        } else {
            self.agent.run(http::Request::from_parts(parts, ()))
        };
        let mut upstream = result.map_err(|e| e.to_string())?;
        let status = upstream.status().as_u16();
        if !(200..=999).contains(&status) {
            return Err(format!("upstream answered status {status}"));
        }
        let fields = response_fields(upstream.headers(), head || status == 304, date);
        let body = if head {
            Vec::new()
        } else {
            upstream
                .body_mut()
                .with_config()
                .limit(MAX_PROXY_BODY)
                .read_to_vec()
                .map_err(|e| format!("upstream body: {e}"))?
        };
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        Ok(response(status, &fields, &body))
    }

    /// `SetURL`: the upstream's scheme and host, its path joined with the request's by one
    /// slash, its query then the request's joined by `&`.
    fn upstream_uri(&self, target: &str) -> Result<http::Uri, String> {
        let (path, query) = request_target(target);
        let path = escape(path, false);
        let query = escape(query, true);
        let path = match (self.base_path.ends_with('/'), path.starts_with('/')) {
            (true, true) => format!(
                "{}{}",
                self.base_path,
                path.strip_prefix('/').unwrap_or(&path)
            ),
            (false, false) => format!("{}/{}", self.base_path, path),
            _ => format!("{}{}", self.base_path, path),
        };
        let query = match (self.base_query.is_empty(), query.is_empty()) {
            (false, false) => format!("{}&{}", self.base_query, query),
            _ => format!("{}{}", self.base_query, query),
        };
        let mut uri = format!("{}://{}{}", self.scheme, self.authority, path);
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&query);
        }
        uri.parse()
            .map_err(|e| format!("upstream request target {uri:?}: {e}"))
    }

    fn request_headers(&self, req: &Request, client: SocketAddr) -> http::HeaderMap {
        let listed = connection_tokens(
            req.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .map(|(_, v)| v.as_str()),
        );
        let mut headers = http::HeaderMap::new();
        let mut cookies: Vec<&str> = Vec::new();
        let mut te_trailers = false;
        for (name, value) in &req.headers {
            let name = name.to_ascii_lowercase();
            if name == "te" {
                te_trailers |= value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
            }
            if is_hop_by_hop(&name)
                || listed.contains(&name)
                || matches!(
                    name.as_str(),
                    "host"
                        | "content-length"
                        | "expect"
                        | "forwarded"
                        | "x-forwarded-for"
                        | "x-forwarded-host"
                        | "x-forwarded-proto"
                )
            {
                continue;
            }
            if name == "cookie" {
                cookies.push(value);
                continue;
            }
            append(&mut headers, &name, value);
        }
        if !cookies.is_empty() {
            append(&mut headers, "cookie", &cookies.join("; "));
        }
        if te_trailers {
            append(&mut headers, "te", "trailers");
        }
        let host = if self.rewrite_host {
            &self.authority
        } else {
            &req.authority
        };
        append(&mut headers, "host", host);
        if self.x_forwarded {
            append(
                &mut headers,
                "x-forwarded-for",
                &client.ip().to_canonical().to_string(),
            );
            append(&mut headers, "x-forwarded-host", &req.authority);
            append(&mut headers, "x-forwarded-proto", "https");
        }
        headers
    }
}

/// The upstream's fields to send back: hop-by-hop ones and those named in `connection`
/// dropped, `content-length` kept only where
/// there is no body to measure (HEAD, 304) and a `date` added if the upstream sent none,
/// as quic-go would.
fn response_fields(
    headers: &http::HeaderMap,
    keep_content_length: bool,
    date: &str,
) -> Vec<(String, String)> {
    let listed = connection_tokens(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let mut fields = Vec::with_capacity(headers.len() + 1);
    let mut has_date = false;
    for (name, value) in headers {
        let name = name.as_str();
        if is_hop_by_hop(name) || listed.iter().any(|l| l == name) {
            continue;
        }
        // Go relays obs-text bytes; the field value here is UTF-8, so keep them lossily.
        let value = String::from_utf8_lossy(value.as_bytes());
        if name == "content-length"
            && !(keep_content_length
                && !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        has_date |= name == "date";
        fields.push((name.to_owned(), value.into_owned()));
    }
    if !has_date {
        fields.push(("date".to_owned(), date.to_owned()));
    }
    fields
}

/// Lower-cased field names listed in `connection` values.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Appends a field, skipping one the `http` crate cannot represent (it cannot reach the
/// upstream anyway).
fn append(headers: &mut http::HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        http::HeaderName::from_bytes(name.as_bytes()),
        http::HeaderValue::from_bytes(value.as_bytes()),
    ) {
        headers.append(name, value);
    }
}

/// Splits a request target into its raw path and query (Go's `URL.EscapedPath()` and
/// `RawQuery`): origin-form as is, absolute-form without scheme and authority.
fn request_target(target: &str) -> (&str, &str) {
    let rest = if target.starts_with('/') || target == "*" {
        target
    } else {
        match target.split_once("://") {
            Some((_, after)) => after.find(['/', '?']).map_or("", |i| &after[i..]),
            None => target.split_once(':').map_or(target, |(_, r)| r),
        }
    };
    rest.split_once('?').unwrap_or((rest, ""))
}

/// Percent-escapes the bytes a request target cannot carry as they are, keeping existing
/// escapes: Go re-escapes the decoded path the same way.
fn escape(s: &str, query: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=:@/%".contains(&b)
            || (query && b == b'?');
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The raw query of a request target, for redirects.
fn raw_query(target: &str) -> &str {
    target.split_once('?').map_or("", |(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h3::{Limits, Response, ResponseReader, NOT_FOUND_BODY};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::{mpsc, Arc};
    use std::time::Instant;

    // --- helpers -------------------------------------------------------------------------

    /// Reads a response the way a client would, FIN included.
    fn parse(bytes: &[u8]) -> (Response, Vec<u8>) {
        let mut reader = ResponseReader::with_limits(Limits {
            max_body: 32 << 20,
            ..Limits::default()
        });
        let resp = reader.push(bytes).unwrap().unwrap();
        reader.finish().unwrap();
        (resp, reader.body().to_vec())
    }

    /// A HEAD response: its content-length describes a body that is not sent.
    fn parse_head(bytes: &[u8]) -> Response {
        let resp = ResponseReader::new().push(bytes).unwrap().unwrap();
        let (hdr, used) = crate::proto::h3::FrameHeader::parse(bytes)
            .unwrap()
            .unwrap();
        assert_eq!(
            used as u64 + hdr.len,
            bytes.len() as u64,
            "HEAD answer has a body"
        );
        resp
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            scheme: "https".into(),
            authority: "example.com".into(),
            path: path.into(),
            protocol: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// An HTTP/1.1 request as an upstream saw it: request line, lower-cased fields, body.
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn read_request(stream: &mut impl Read) -> io::Result<Seen> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let want: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[end + 4..].to_vec();
        while body.len() < want {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(Seen {
            line,
            headers,
            body,
        })
    }

    /// An HTTP/1.1 server on 127.0.0.1 that answers every connection with `reply` (over TLS
    /// with a fresh self-signed certificate if `tls`) and reports what it was sent.
    struct Upstream {
        addr: SocketAddr,
        seen: mpsc::Receiver<Seen>,
    }

    impl Upstream {
        fn start(reply: Vec<u8>, tls: bool) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let tls = tls.then(tls_config);
            let (tx, seen) = mpsc::channel();
            std::thread::spawn(move || {
                for tcp in listener.incoming() {
                    let Ok(tcp) = tcp else { continue };
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                    let result = match &tls {
                        Some(config) => {
                            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                                continue;
                            };
                            let mut stream = rustls::StreamOwned::new(conn, tcp);
                            let seen = exchange(&mut stream, &reply);
                            stream.conn.send_close_notify();
                            let _ = stream.flush();
                            seen
                        }
                        None => exchange(&mut { tcp }, &reply),
                    };
                    if let Ok(seen) = result {
                        let _ = tx.send(seen);
                    }
                }
            });
            Upstream { addr, seen }
        }

        fn url(&self, scheme: &str, path: &str) -> String {
            format!("{scheme}://{}{path}", self.addr)
        }

        fn last(&self) -> Seen {
            self.seen.recv_timeout(Duration::from_secs(5)).unwrap()
        }
    }

    fn exchange(stream: &mut (impl Read + Write), reply: &[u8]) -> io::Result<Seen> {
        let seen = read_request(stream)?;
        stream.write_all(reply)?;
        stream.flush()?;
        Ok(seen)
    }

    fn tls_config() -> Arc<rustls::ServerConfig> {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        Arc::new(config)
    }

    fn http_reply(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\n");
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn json_reply(body: &str) -> Vec<u8> {
        http_reply(
            "200 OK",
            &["Content-Type: application/json"],
            body.as_bytes(),
        )
    }

    /// An address nothing listens on.
    fn dead_addr() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    const CLIENT: &str = "203.0.113.7:4433";
    const SECOND: Duration = Duration::from_secs(1);

    // --- http_auth ------------------------------------------------------------------------

    fn auth(url: &str, insecure: bool) -> Result<Option<String>, String> {
        http_auth(
            url,
            insecure,
            CLIENT.parse().unwrap(),
            "pass word\"",
            12_345,
            5 * SECOND,
        )
    }

    #[test]
    fn auth_ok_posts_the_official_json() {
        let up = Upstream::start(json_reply(r#"{"ok": true, "id": "alice"}"#), false);
        assert_eq!(
            auth(&up.url("http", "/auth"), false),
            Ok(Some("alice".into()))
        );
        let seen = up.last();
        assert_eq!(seen.line, "POST /auth HTTP/1.1");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"addr": CLIENT, "auth": "pass word\"", "tx": 12_345})
        );
    }

    #[test]
    fn auth_rejected() {
        let up = Upstream::start(json_reply(r#"{"ok":false,"id":""}"#), false);
        assert_eq!(auth(&up.url("http", "/"), false), Ok(None));
        // Go leaves a missing `ok` false.
        let up = Upstream::start(json_reply(r#"{"id":"bob"}"#), false);
        assert_eq!(auth(&up.url("http", "/"), false), Ok(None));
    }

    #[test]
    fn auth_non_200_is_an_error() {
        for status in ["500 Internal Server Error", "404 Not Found", "201 Created"] {
            let body = br#"{"ok":true,"id":"x"}"#;
            let up = Upstream::start(http_reply(status, &[], body), false);
            let err = auth(&up.url("http", "/"), false).unwrap_err();
            assert!(err.contains(&status[..3]), "{err}");
        }
    }

    #[test]
    fn auth_bad_json_is_an_error() {
        for body in ["", "not json", "<html>ok</html>", "{\"ok\":tru"] {
            let up = Upstream::start(json_reply(body), false);
            assert!(auth(&up.url("http", "/"), false).is_err(), "{body:?}");
        }
    }

    #[test]
    fn auth_reply_shapes() {
        let parse = |s: &str| parse_auth_reply(s.as_bytes());
        assert_eq!(parse(r#"{"ok":true,"id":"a"}"#), Ok(Some("a".into())));
        // encoding/json: case-insensitive keys, exact match first, unknown keys and
        // trailing bytes ignored, null leaves the zero value.
        assert_eq!(
            parse(r#"{"OK":true,"Id":"b","x":[1]}"#),
            Ok(Some("b".into()))
        );
        assert_eq!(
            parse(r#"{"ok":true,"ID":"no","id":"c"}"#),
            Ok(Some("c".into()))
        );
        assert_eq!(
            parse(r#"{"ok":true,"id":"d"} trailing"#),
            Ok(Some("d".into()))
        );
        assert_eq!(parse(r#"{"ok":null,"id":"e"}"#), Ok(None));
        assert_eq!(parse(r#"{"ok":false,"id":"f"}"#), Ok(None));
        for bad in [
            r#"{"ok":true}"#,
            r#"{"ok":true,"id":""}"#,
            r#"{"ok":true,"id":null}"#,
            r#"{"ok":true,"id":7}"#,
            r#"{"ok":false,"id":7}"#,
            r#"{"ok":"true","id":"x"}"#,
            r#"{"ok":1,"id":"x"}"#,
            r#"[{"ok":true,"id":"x"}]"#,
            r#""ok""#,
            "true",
            "",
            "   ",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_body_is_capped() {
        let big = format!(r#"{{"ok":true,"id":"x","pad":"{}"}}"#, "a".repeat(70_000));
        let up = Upstream::start(json_reply(&big), false);
        assert!(auth(&up.url("http", "/"), false).is_err());
    }

    #[test]
    fn auth_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept and never answer.
        std::thread::spawn(move || {
            let held: Vec<TcpStream> = listener.incoming().take(1).flatten().collect();
            std::thread::sleep(Duration::from_secs(10));
            drop(held);
        });
        let started = Instant::now();
        let result = http_auth(
            &format!("http://{addr}/"),
            false,
            CLIENT.parse().unwrap(),
            "x",
            0,
            Duration::from_millis(300),
        );
        assert!(result.is_err(), "{result:?}");
        assert!(started.elapsed() < 5 * SECOND);
    }

    #[test]
    fn auth_transport_errors() {
        assert!(auth(&format!("http://{}/", dead_addr()), false).is_err());
        assert!(auth("not a url", false).is_err());
        assert!(auth("ftp://127.0.0.1/", false).is_err());
        assert!(auth("", false).is_err());
    }

    #[test]
    fn auth_https_insecure() {
        let up = Upstream::start(json_reply(r#"{"ok":true,"id":"tls"}"#), true);
        assert_eq!(auth(&up.url("https", "/"), true), Ok(Some("tls".into())));
        // A self-signed certificate fails verification.
        let err = auth(&up.url("https", "/"), false).unwrap_err();
        assert!(!err.is_empty());
    }

    // --- file masquerade ------------------------------------------------------------------

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = std::env::temp_dir().join(format!(
                "quelay-backend-{tag}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// root/ with files, an index, a listing, and symlinks in and out; secret.txt beside it.
    fn site(tag: &str) -> (TempDir, FileMasquerade) {
        let tmp = TempDir::new(tag);
        let root = tmp.0.join("root");
        fs::create_dir_all(root.join("site")).unwrap();
        fs::create_dir_all(root.join("list/sub")).unwrap();
        fs::write(root.join("hello.txt"), "hello").unwrap();
        fs::write(root.join("app.js"), "let x;").unwrap();
        fs::write(root.join("README"), "plain text\n").unwrap();
        fs::write(root.join("blob"), [0u8, 1, 2, 3]).unwrap();
        fs::write(root.join("site/index.html"), "<h1>hi</h1>").unwrap();
        fs::write(root.join("list/a.txt"), "a").unwrap();
        fs::write(root.join("list/we<ird> & 'q'.txt"), "w").unwrap();
        fs::write(root.join("list/c:d"), "c").unwrap();
        fs::write(tmp.0.join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("..", root.join("escdir")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("inner")).unwrap();
        (tmp, FileMasquerade::new(root))
    }

    fn get(files: &FileMasquerade, path: &str) -> (Response, Vec<u8>) {
        parse(&files.respond(&request("GET", path, &[])))
    }

    fn assert_not_found((resp, body): (Response, Vec<u8>)) {
        assert_eq!(resp.status, 404);
        assert_eq!(body, NOT_FOUND_BODY);
        assert_eq!(resp.header("content-type"), Some(TEXT_PLAIN));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert!(resp.header("date").is_some());
    }

    #[test]
    fn file_served() {
        let (_tmp, files) = site("file");
        let (resp, body) = get(&files, "/hello.txt?x=1");
        assert_eq!((resp.status, body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(resp.header("content-type"), Some(TEXT_PLAIN));
        assert_eq!(resp.header("content-length"), Some("5"));
        assert_eq!(resp.header("accept-ranges"), Some("bytes"));
        let last_modified = resp.header("last-modified").unwrap();
        assert!(parse_http_date(last_modified).is_some(), "{last_modified}");
        assert!(resp.header("date").is_some());
        let (resp, _) = get(&files, "/app.js");
        assert_eq!(
            resp.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        // No known extension: sniffed.
        assert_eq!(
            get(&files, "/README").0.header("content-type"),
            Some(TEXT_PLAIN)
        );
        assert_eq!(
            get(&files, "/blob").0.header("content-type"),
            Some("application/octet-stream")
        );
        // Percent-decoded, and a symlink that stays inside is fine.
        assert_eq!(get(&files, "/hell%6F.txt").1, b"hello");
        assert_eq!(get(&files, "/inner").1, b"hello");
        // The type follows the name asked for, as Go's `d.Name()` does.
        std::os::unix::fs::symlink("hello.txt", files.dir.join("page.html")).unwrap();
        let (resp, body) = get(&files, "/page.html");
        assert_eq!(body, b"hello");
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(get(&files, "/./list/../hello.txt").1, b"hello");
    }

    #[test]
    fn file_head() {
        let (_tmp, files) = site("head");
        let resp = parse_head(&files.respond(&request("HEAD", "/hello.txt", &[])));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("5"));
        assert_eq!(resp.header("content-type"), Some(TEXT_PLAIN));
        let resp = parse_head(&files.respond(&request("HEAD", "/README", &[])));
        assert_eq!(resp.header("content-type"), Some(TEXT_PLAIN));
        let resp = parse_head(&files.respond(&request("HEAD", "/nope", &[])));
        assert_eq!(resp.status, 404);
    }

    #[test]
    fn file_other_methods() {
        let (_tmp, files) = site("method");
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "BREW"] {
            let (resp, _) = parse(&files.respond(&request(method, "/hello.txt", &[])));
            assert_eq!(resp.status, 405, "{method}");
            assert_eq!(resp.header("allow"), Some("GET, HEAD"));
        }
    }

    #[test]
    fn file_directories() {
        let (_tmp, files) = site("dir");
        let (resp, body) = get(&files, "/site/");
        assert_eq!((resp.status, body.as_slice()), (200, &b"<h1>hi</h1>"[..]));
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        // Go's redirects: add the slash, drop index.html, drop a slash after a file.
        let location = |path: &str| {
            let (resp, body) = get(&files, path);
            assert_eq!(resp.status, 301, "{path}");
            assert!(body.is_empty());
            resp.header("location").map(str::to_owned)
        };
        assert_eq!(location("/site").as_deref(), Some("site/"));
        assert_eq!(location("/site?a=b").as_deref(), Some("site/?a=b"));
        assert_eq!(location("/site/index.html").as_deref(), Some("./"));
        assert_eq!(location("/hello.txt/").as_deref(), Some("../hello.txt"));
        // A control character in a name never reaches a field value.
        fs::create_dir(files.dir.join("new\nline")).unwrap();
        assert_eq!(location("/new%0Aline").as_deref(), Some("new%0Aline/"));
        // No index.html: a listing like Go's.
        let (resp, body) = get(&files, "/list/");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n\
             <a href=\"a.txt\">a.txt</a>\n\
             <a href=\"./c:d\">c:d</a>\n\
             <a href=\"sub/\">sub/</a>\n\
             <a href=\"we%3Cird%3E%20&%20%27q%27.txt\">we&lt;ird&gt; &amp; &#39;q&#39;.txt</a>\n\
             </pre>\n"
        );
        let resp = parse_head(&files.respond(&request("HEAD", "/list/", &[])));
        assert_eq!(resp.status, 200);
        assert_ne!(resp.header("content-length"), Some("0"));
    }

    #[test]
    fn file_missing() {
        let (tmp, files) = site("missing");
        assert_not_found(get(&files, "/nope.txt"));
        assert_not_found(get(&files, "/list/nope/"));
        // A file used as a directory (ENOTDIR).
        assert_not_found(get(&files, "/hello.txt/x"));
        assert_not_found(get(&files, "/a%00b"));
        // The 404 is byte for byte the default masquerade's, date aside.
        let date = now_http_date();
        let bytes = files.respond(&request("GET", "/nope", &[]));
        if now_http_date() == date {
            assert_eq!(bytes, not_found_response(Some(&date)));
        }
        // No root at all.
        let gone = FileMasquerade::new(tmp.0.join("does-not-exist"));
        assert_not_found(get(&gone, "/"));
        assert_not_found(get(&gone, "/hello.txt"));
    }

    #[test]
    fn file_traversal() {
        let (_tmp, files) = site("traversal");
        for path in [
            "/../secret.txt",
            "/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/list/../../secret.txt",
            "/..%2f..%2fetc/passwd",
            "/../etc/passwd",
            "/escape",
            "/escdir/secret.txt",
            "/escdir/",
            "/escdir",
            "/etc/passwd",
            "/etc/",
            "https://example.com/../secret.txt",
        ] {
            let (resp, body) = get(&files, path);
            assert_ne!(resp.status, 200, "{path}");
            assert!(!String::from_utf8_lossy(&body).contains("secret"), "{path}");
            if resp.status != 301 {
                assert_not_found((resp, body));
            }
        }
        // `..` stops at the root: this is the root's listing.
        let (resp, body) = get(&files, "/%2e%2e/");
        assert_eq!(resp.status, 200);
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("hello.txt") && !body.contains("secret.txt"));
    }

    #[test]
    fn file_ranges() {
        let (_tmp, files) = site("range");
        let ranged =
            |range: &str| parse(&files.respond(&request("GET", "/hello.txt", &[("range", range)])));
        let (resp, body) = ranged("bytes=1-3");
        assert_eq!((resp.status, body.as_slice()), (206, &b"ell"[..]));
        assert_eq!(resp.header("content-range"), Some("bytes 1-3/5"));
        assert_eq!(resp.header("content-length"), Some("3"));
        assert_eq!(ranged("bytes=-2").1, b"lo");
        assert_eq!(ranged("bytes=3-").1, b"lo");
        assert_eq!(ranged("bytes=0-100").1, b"hello");
        assert_eq!(ranged("bytes=0-0,2-3").0.status, 200);
        let (resp, body) = ranged("bytes=5-");
        assert_eq!(resp.status, 416);
        assert_eq!(resp.header("content-range"), Some("bytes */5"));
        assert_eq!(body, b"invalid range: failed to overlap\n");
        for bad in ["bytes=a-b", "items=0-1", "bytes=3-1", "bytes=", "bytes=--1"] {
            let (resp, body) = ranged(bad);
            assert_eq!(
                (resp.status, body.as_slice()),
                (416, &b"invalid range\n"[..]),
                "{bad}"
            );
        }
        // If-Range with another date: the whole file.
        let stale = request(
            "GET",
            "/hello.txt",
            &[
                ("range", "bytes=0-1"),
                ("if-range", "Thu, 01 Jan 1970 00:00:01 GMT"),
            ],
        );
        assert_eq!(parse(&files.respond(&stale)).1, b"hello");
    }

    #[test]
    fn parse_range_like_go() {
        assert_eq!(parse_range("", 10), Ok(None));
        assert_eq!(parse_range("bytes=0-", 10), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes= 2 - 4 ", 10), Ok(Some((2, 3))));
        assert_eq!(parse_range("bytes=-20", 10), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=-0", 10), Err(RangeError::NoOverlap));
        assert_eq!(parse_range("bytes=0-", 0), Err(RangeError::NoOverlap));
        assert_eq!(parse_range("bytes=1-2,", 10), Ok(Some((1, 2))));
        assert_eq!(parse_range("bytes=,", 10), Err(RangeError::Invalid));
        assert_eq!(parse_range("bytes=+1-2", 10), Err(RangeError::Invalid));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999", 10),
            Err(RangeError::Invalid)
        );
    }

    #[test]
    fn file_conditional() {
        let (_tmp, files) = site("cond");
        let (resp, _) = get(&files, "/hello.txt");
        let last_modified = resp.header("last-modified").unwrap().to_owned();
        let with = |headers: &[(&str, &str)]| {
            parse(&files.respond(&request("GET", "/hello.txt", headers)))
        };
        let (resp, body) = with(&[("if-modified-since", &last_modified)]);
        assert_eq!(resp.status, 304);
        assert!(body.is_empty());
        assert_eq!(resp.header("last-modified"), Some(last_modified.as_str()));
        assert_eq!(resp.header("content-type"), None);
        let old = "Thu, 01 Jan 1970 00:00:01 GMT";
        assert_eq!(with(&[("if-modified-since", old)]).0.status, 200);
        assert_eq!(with(&[("if-modified-since", "yesterday")]).0.status, 200);
        let both = [
            ("if-modified-since", last_modified.as_str()),
            ("if-none-match", "*"),
        ];
        assert_eq!(with(&both).0.status, 200);
        let dir = request(
            "GET",
            "/list/",
            &[("if-modified-since", "Fri, 31 Dec 9999 23:59:59 GMT")],
        );
        assert_eq!(parse(&files.respond(&dir)).0.status, 304);
    }

    #[test]
    fn file_too_large_for_one_response() {
        let (tmp, files) = site("large");
        let big = fs::File::create(tmp.0.join("root/big.bin")).unwrap();
        // Sparse: no 16 MiB written.
        big.set_len(MAX_FILE_BODY + 1).unwrap();
        let (resp, _) = get(&files, "/big.bin");
        assert_eq!(resp.status, 500);
        let resp = parse_head(&files.respond(&request("HEAD", "/big.bin", &[])));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-length"),
            Some((MAX_FILE_BODY + 1).to_string().as_str())
        );
        let tail = request("GET", "/big.bin", &[("range", "bytes=-4")]);
        let (resp, body) = parse(&files.respond(&tail));
        assert_eq!((resp.status, body.as_slice()), (206, &[0u8; 4][..]));
    }

    #[test]
    fn file_fifo_is_not_found() {
        let (tmp, files) = site("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(tmp.0.join("root/pipe"))
            .status()
            .is_ok_and(|s| s.success());
        if made {
            assert_not_found(get(&files, "/pipe"));
        }
    }

    #[test]
    fn http_dates_round_trip() {
        for secs in [1, 784_111_777, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse_http_date(&http_date(secs)), Some(secs));
        }
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn go_helpers() {
        assert_eq!(go_base("/a/b/"), "b");
        assert_eq!(go_base("/a"), "a");
        assert_eq!(go_base("/"), "/");
        assert_eq!(go_base("//"), "/");
        assert_eq!(href("a b?#%.txt"), "a%20b%3F%23%25.txt");
        assert_eq!(href("x:y/"), "./x:y/");
        assert_eq!(href("é"), "%C3%A9");
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&#34;x&#34;&gt;&amp;&#39;"
        );
    }

    // --- proxy masquerade -----------------------------------------------------------------

    fn proxy(up: &Upstream, path: &str, rewrite_host: bool, x_forwarded: bool) -> ProxyMasquerade {
        ProxyMasquerade::new(up.url("http", path), rewrite_host, x_forwarded, false).unwrap()
    }

    #[test]
    fn proxy_passthrough() {
        let reply = b"HTTP/1.1 201 Created\r\n\
            Content-Type: text/x-test\r\n\
            X-Up: 1\r\n\
            X-Latin: caf\xe9\r\n\
            Set-Cookie: a=1\r\n\
            Set-Cookie: b=2\r\n\
            Connection: close, X-Drop\r\n\
            X-Drop: gone\r\n\
            Keep-Alive: timeout=5\r\n\
            Proxy-Authenticate: Basic\r\n\
            Transfer-Encoding: chunked\r\n\
            \r\n\
            5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let up = Upstream::start(reply.to_vec(), false);
        let masq = proxy(&up, "/base?k=v", false, false);
        let req = request(
            "POST",
            "/api/x?q=1",
            &[
                ("user-agent", "curl/8"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("te", "trailers"),
                ("content-length", "7"),
                ("proxy-authorization", "Basic xyz"),
                ("accept-encoding", "gzip"),
            ],
        );
        let (resp, body) = parse(&masq.respond(&req, b"payload", CLIENT.parse().unwrap()));
        assert_eq!(resp.status, 201);
        assert_eq!(body, b"hello world");
        assert_eq!(resp.header("content-type"), Some("text/x-test"));
        assert_eq!(resp.header("x-up"), Some("1"));
        assert_eq!(resp.header("x-latin"), Some("caf\u{fffd}"));
        assert_eq!(resp.header("content-length"), Some("11"));
        assert!(resp.header("date").is_some());
        let cookies: Vec<&str> = resp
            .headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        for gone in [
            "connection",
            "x-drop",
            "keep-alive",
            "transfer-encoding",
            "proxy-authenticate",
        ] {
            assert_eq!(resp.header(gone), None, "{gone}");
        }

        let seen = up.last();
        assert_eq!(seen.line, "POST /base/api/x?k=v&q=1 HTTP/1.1");
        assert_eq!(seen.header("host"), Some("example.com"));
        assert_eq!(seen.header("user-agent"), Some("curl/8"));
        assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
        assert_eq!(seen.header("te"), Some("trailers"));
        assert_eq!(seen.header("accept-encoding"), Some("gzip"));
        assert_eq!(seen.header("content-length"), Some("7"));
        for gone in [
            "x-forwarded-for",
            "forwarded",
            "proxy-authorization",
            "x-forwarded-proto",
        ] {
            assert_eq!(seen.header(gone), None, "{gone}");
        }
        assert_eq!(seen.body, b"payload");
    }

    #[test]
    fn proxy_x_forwarded_and_rewrite_host() {
        let up = Upstream::start(http_reply("200 OK", &[], b"ok"), false);
        let masq = proxy(&up, "", true, true);
        let req = request("GET", "/p%20q/r?s=%20t", &[("x-forwarded-for", "6.6.6.6")]);
        let (resp, body) =
            parse(&masq.respond(&req, b"", "[::ffff:10.1.2.3]:999".parse().unwrap()));
        assert_eq!((resp.status, body.as_slice()), (200, &b"ok"[..]));
        let seen = up.last();
        assert_eq!(seen.line, "GET /p%20q/r?s=%20t HTTP/1.1");
        assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
        assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3"));
        assert_eq!(seen.header("x-forwarded-host"), Some("example.com"));
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        // Nothing the client did not send: no user-agent, accept or body fields.
        for gone in [
            "user-agent",
            "accept",
            "accept-encoding",
            "content-length",
            "transfer-encoding",
        ] {
            assert_eq!(seen.header(gone), None, "{gone}");
        }
        let v6 = request("GET", "/", &[]);
        masq.respond(&v6, b"", "[2001:db8::1]:1".parse().unwrap());
        assert_eq!(up.last().header("x-forwarded-for"), Some("2001:db8::1"));
    }

    #[test]
    fn proxy_head_and_redirects() {
        let up = Upstream::start(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        );
        let masq = proxy(&up, "/", false, false);
        let resp =
            parse_head(&masq.respond(&request("HEAD", "/f", &[]), b"", CLIENT.parse().unwrap()));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("1234"));
        assert_eq!(up.last().line, "HEAD /f HTTP/1.1");

        let up = Upstream::start(
            http_reply("302 Found", &["Location: /elsewhere"], b""),
            false,
        );
        let masq = proxy(&up, "/", false, false);
        let (resp, _) =
            parse(&masq.respond(&request("GET", "/", &[]), b"", CLIENT.parse().unwrap()));
        assert_eq!(resp.status, 302);
        assert_eq!(resp.header("location"), Some("/elsewhere"));
        up.last();
        assert!(
            up.seen.recv_timeout(Duration::from_millis(200)).is_err(),
            "followed"
        );

        let up = Upstream::start(http_reply("404 Not Found", &[], b"nope"), false);
        let masq = proxy(&up, "/", false, false);
        let (resp, body) =
            parse(&masq.respond(&request("GET", "/", &[]), b"", CLIENT.parse().unwrap()));
        assert_eq!((resp.status, body.as_slice()), (404, &b"nope"[..]));
    }

    fn assert_bad_gateway(bytes: &[u8]) {
        let (resp, body) = parse(bytes);
        assert_eq!(resp.status, 502);
        assert!(body.is_empty());
        assert_eq!(resp.header("content-length"), Some("0"));
    }

    #[test]
    fn proxy_upstream_errors() {
        let client = CLIENT.parse().unwrap();
        let get = request("GET", "/", &[]);
        let down =
            ProxyMasquerade::new(format!("http://{}", dead_addr()), false, false, false).unwrap();
        assert_bad_gateway(&down.respond(&get, b"", client));
        let garbage = Upstream::start(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), false);
        assert_bad_gateway(&proxy(&garbage, "/", false, false).respond(&get, b"", client));
        let interim = Upstream::start(b"HTTP/1.1 101 Switching\r\n\r\n".to_vec(), false);
        assert_bad_gateway(&proxy(&interim, "/", false, false).respond(&get, b"", client));
        let connect = Request {
            method: "CONNECT".into(),
            path: String::new(),
            ..request("CONNECT", "", &[])
        };
        assert_bad_gateway(&down.respond(&connect, b"", client));
    }

    #[test]
    fn proxy_https_upstream() {
        let client = CLIENT.parse().unwrap();
        let up = Upstream::start(http_reply("200 OK", &[], b"secure"), true);
        let insecure = ProxyMasquerade::new(up.url("https", "/"), false, false, true).unwrap();
        let (resp, body) = parse(&insecure.respond(&request("GET", "/", &[]), b"", client));
        assert_eq!((resp.status, body.as_slice()), (200, &b"secure"[..]));
        let verifying = ProxyMasquerade::new(up.url("https", "/"), false, false, false).unwrap();
        assert_bad_gateway(&verifying.respond(&request("GET", "/", &[]), b"", client));
    }

    #[test]
    fn proxy_config_errors() {
        for bad in [
            "",
            "example.com",
            "/path",
            "ftp://example.com/",
            "http://",
            "http:// x/",
        ] {
            assert!(
                ProxyMasquerade::new(bad, false, false, false).is_err(),
                "{bad:?}"
            );
        }
        let ok = ProxyMasquerade::new(
            "HTTPS://user:pw@example.com:8443/a/?b=c",
            true,
            false,
            false,
        )
        .unwrap();
        assert_eq!(ok.scheme, "https");
        assert_eq!(ok.authority, "example.com:8443");
        assert_eq!(ok.base_path, "/a/");
        assert_eq!(ok.base_query, "b=c");
    }

    #[test]
    fn upstream_targets_like_set_url() {
        let masq = |url: &str| ProxyMasquerade::new(url, false, false, false).unwrap();
        let uri = |m: &ProxyMasquerade, target: &str| m.upstream_uri(target).unwrap().to_string();
        let root = masq("http://u:81");
        assert_eq!(uri(&root, "/a?b"), "http://u:81/a?b");
        assert_eq!(uri(&root, "*"), "http://u:81/*");
        assert_eq!(uri(&root, "https://example.com/p?x=1"), "http://u:81/p?x=1");
        assert_eq!(uri(&root, "https://example.com?x"), "http://u:81/?x");
        assert_eq!(
            uri(&root, "/a b\"{}|é#f"),
            "http://u:81/a%20b%22%7B%7D%7C%C3%A9%23f"
        );
        let base = masq("http://u/base/?k=v");
        assert_eq!(uri(&base, "/x/"), "http://u/base/x/?k=v");
        assert_eq!(uri(&base, "//x"), "http://u/base//x?k=v");
        assert_eq!(uri(&base, "/x?y=1&z"), "http://u/base/x?k=v&y=1&z");
        let no_slash = masq("http://u/base");
        assert_eq!(uri(&no_slash, "/x"), "http://u/base/x");
        assert_eq!(uri(&no_slash, "/"), "http://u/base/");
    }
}
