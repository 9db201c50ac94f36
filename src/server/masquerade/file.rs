//! The `file` masquerade (protocol notes §7): a static file server like Go's
//! `http.FileServer`, streaming files of any size one chunk at a time.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{
    html_escape, not_found_response, now_http_date, percent_escape, response, Reply, Tail,
};
use crate::proto::h3::{http_date, Request};

/// Directory listings stop after this many entries, so a huge directory costs bounded memory.
const MAX_DIR_ENTRIES: usize = 10_000;

/// `content-type` of Go's `http.Error`.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

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
/// files (FIFOs, devices) are 404; a multi-range request gets the whole file; only
/// IMF-fixdate is understood in dates; a file that shrinks while it is sent has its stream
/// reset (Go sends a short body).
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
    #[cfg(test)]
    pub fn respond(&self, req: &Request) -> Vec<u8> {
        self.answer(req).into_h3_whole()
    }

    /// Answers one request, whatever the transport.
    pub fn answer(&self, req: &Request) -> Reply {
        let date = now_http_date();
        let head = req.method == "HEAD";
        if req.method != "GET" && !head {
            let allow = [("allow", "GET, HEAD")];
            return text_response(405, &allow, "Method Not Allowed\n", false, &date);
        }
        let Some(mut url_path) = req.url_path() else {
            let not_found = not_found_response(&date);
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
            Err(FileError::NotFound) if head => headers_only(not_found_response(&date)),
            Err(FileError::NotFound) => not_found_response(&date),
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
) -> Result<Reply, FileError> {
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
    let content_type = match content_type_by_name(Path::new(name)) {
        Some(known) => known,
        // Go sniffs the first 512 bytes of the file, whatever the range.
        None => sniff(&read_span(path, 0, size.min(512))?),
    };
    let (body, tail) = if head {
        (Vec::new(), None)
    } else {
        open_span(path, start, len)?.start()?
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
    let mut reply = response(status, &headers, b"");
    (reply.body, reply.tail) = (body, tail);
    Ok(reply)
}

/// The `len` bytes at `start` of a regular file, to be read as they are sent. It refuses a
/// symlink swapped in since the path was checked and never blocks on a FIFO; the file
/// shrinking meanwhile makes a read fail rather than the body end short.
fn open_span(path: &Path, start: u64, len: u64) -> Result<Tail, FileError> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(FileError::NotFound);
    }
    file.seek(SeekFrom::Start(start))?;
    Ok(Tail::new(file.take(len), Some(len)))
}

/// The `len` bytes at `start` of a regular file, in hand (for sniffing its type).
fn read_span(path: &Path, start: u64, len: u64) -> Result<Vec<u8>, FileError> {
    let mut body = Vec::new();
    open_span(path, start, len)?.read_to_end(&mut body)?;
    Ok(body)
}

/// Go's `dirList`, after `checkIfModifiedSince` and `setLastModified`.
fn dir_listing(
    path: &Path,
    meta: &fs::Metadata,
    req: &Request,
    head: bool,
    date: &str,
) -> Result<Reply, FileError> {
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
fn not_modified_response(last_modified: Option<&str>, date: &str) -> Reply {
    let mut headers = Vec::with_capacity(2);
    if let Some(lm) = last_modified {
        headers.push(("last-modified", lm));
    }
    headers.push(("date", date));
    response(304, &headers, b"")
}

/// A response without its body: Go writes no body for HEAD but keeps the
/// `content-length` the body would have had.
fn headers_only(mut reply: Reply) -> Reply {
    if reply.header("content-length").is_none() {
        reply
            .headers
            .push(("content-length".into(), reply.body.len().to_string()));
    }
    reply.body.clear();
    reply
}

/// Go's `localRedirect`: 301 to a relative location, the query kept.
fn redirect(location: &str, query: &str, date: &str) -> Reply {
    // The location comes from a decoded path and an on-disk name: escape control
    // characters (a `%0a` in a name), which no field value may hold.
    let mut location = percent_escape(location, |b| !b.is_ascii_control());
    if !query.is_empty() {
        location.push('?');
        location.push_str(query);
    }
    response(301, &[("location", &location), ("date", date)], b"")
}

/// Go's `http.Error`: a plain-text body after `extra` fields; HEAD gets the length but
/// not the body.
fn text_response(status: u16, extra: &[(&str, &str)], body: &str, head: bool, date: &str) -> Reply {
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
    let escaped = percent_escape(name, |b| {
        b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b)
    });
    if name.split('/').next().is_some_and(|s| s.contains(':')) {
        format!("./{escaped}")
    } else {
        escaped
    }
}

// ---------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------

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

/// The raw query of a request target, for redirects.
fn raw_query(target: &str) -> &str {
    target.split_once('?').map_or("", |(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{parse, parse_head, request};
    use super::*;
    use crate::proto::h3::{Response, NOT_FOUND_BODY};

    /// root/ with files, an index, a listing, and symlinks in and out; secret.txt beside it.
    fn site(tag: &str) -> (tempfile::TempDir, FileMasquerade) {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("quelay-file-masquerade-{tag}-"))
            .tempdir()
            .unwrap();
        let root = tmp.path().join("root");
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
        fs::write(tmp.path().join("secret.txt"), "secret").unwrap();
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
            assert_eq!(bytes, crate::proto::h3::not_found_response(Some(&date)));
        }
        // No root at all.
        let gone = FileMasquerade::new(tmp.path().join("does-not-exist"));
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
    fn a_large_file_is_streamed_a_chunk_at_a_time() {
        let (tmp, files) = site("large");
        let path = tmp.path().join("root/big.bin");
        let size = 16 * 1024 * 1024 + 1;
        // Sparse: no 16 MiB written.
        fs::File::create(&path).unwrap().set_len(size).unwrap();
        let reply = files.answer(&request("GET", "/big.bin", &[]));
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(reply.body.len(), super::super::CHUNK, "one chunk in hand");
        let mut tail = reply.tail.expect("the rest follows as it is sent");
        let mut sent = reply.body.len() as u64;
        while let Some(chunk) = tail.next_chunk().unwrap() {
            assert!(chunk.len() <= super::super::CHUNK);
            sent += chunk.len() as u64;
        }
        assert_eq!(sent, size);

        let resp = parse_head(&files.respond(&request("HEAD", "/big.bin", &[])));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-length"),
            Some(size.to_string().as_str())
        );
        let last = request("GET", "/big.bin", &[("range", "bytes=-4")]);
        let (resp, body) = parse(&files.respond(&last));
        assert_eq!((resp.status, body.as_slice()), (206, &[0u8; 4][..]));

        // The file shrinks while it is sent: the body fails instead of ending short.
        let reply = files.answer(&request("GET", "/big.bin", &[]));
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1024 * 1024)
            .unwrap();
        let mut tail = reply.tail.unwrap();
        let err = loop {
            match tail.next_chunk() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a shrunk file ended as if whole"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn file_fifo_is_not_found() {
        let (tmp, files) = site("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(tmp.path().join("root/pipe"))
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
}
