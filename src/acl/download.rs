//! geoip.dat and geosite.dat kept fresh over HTTP(S), as the reference's geo loader does
//! when `acl.geoip` / `acl.geosite` are not set.
//!
//! A configured path is read as is and never downloaded. Otherwise the file is
//! `geoip.dat` / `geosite.dat` in a directory (the working directory in production, as in
//! the reference), fetched again when it is missing, empty, older than
//! `acl.geoUpdateInterval` by modification time, or does not decode. A body must decode
//! before it replaces the file, through a temporary file in the same directory and a
//! rename. When the download fails an existing file is used anyway; only without one does
//! loading fail.
//!
//! This is the ACL's only network I/O. It blocks, and runs only when a rule uses `geoip:`
//! or `geosite:`, each time the rules are compiled (start-up and reload).

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use ureq::http::Uri;
use ureq::Agent;

use super::geo::{decode_geoip, decode_geosite, GeoIpDb, GeoLoader, GeoSiteDb};

/// The reference's geoip.dat source.
pub const GEOIP_URL: &str =
    "https://cdn.jsdelivr.net/gh/Loyalsoldier/v2ray-rules-dat@release/geoip.dat";
/// The reference's geosite.dat source.
pub const GEOSITE_URL: &str =
    "https://cdn.jsdelivr.net/gh/Loyalsoldier/v2ray-rules-dat@release/geosite.dat";
/// The downloaded geoip database's file name, as in the reference.
pub const GEOIP_FILE: &str = "geoip.dat";
/// The downloaded geosite database's file name, as in the reference.
pub const GEOSITE_FILE: &str = "geosite.dat";
/// The longest one download may take, head and body: start-up and reload wait for it.
/// Long enough for a 20 MB file at 200 kB/s; the reference has no limit.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest body accepted. The published files are a few tens of MB; a bigger body is
/// refused rather than held in memory.
pub const MAX_DOWNLOAD: u64 = 64 << 20;

/// Where one database comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeoSource {
    /// A configured file: read as is, never downloaded.
    File(PathBuf),
    /// A file kept fresh from `url`.
    Download { file: PathBuf, url: String },
}

impl GeoSource {
    /// `configured` when set, else the file `name` in `dir`, fetched from `url`.
    pub fn new(configured: Option<&Path>, dir: &Path, name: &str, url: &str) -> GeoSource {
        match configured {
            Some(path) => GeoSource::File(path.to_owned()),
            None => GeoSource::Download {
                file: dir.join(name),
                url: url.to_owned(),
            },
        }
    }
}

/// The databases from their sources, downloaded when due (see the module doc). Nothing
/// happens until a compile asks for one.
#[derive(Clone, Debug)]
pub struct GeoDownload {
    /// geoip.dat.
    pub geoip: GeoSource,
    /// geosite.dat.
    pub geosite: GeoSource,
    /// `acl.geoUpdateInterval`: a downloaded file last modified longer ago is fetched again.
    pub interval: Duration,
}

impl GeoLoader for GeoDownload {
    fn geoip(&mut self) -> Result<Vec<u8>, String> {
        Ok(load(&self.geoip, self.interval, decode_geoip)?.0)
    }

    fn geosite(&mut self) -> Result<Vec<u8>, String> {
        Ok(load(&self.geosite, self.interval, decode_geosite)?.0)
    }

    fn geoip_db(&mut self) -> Result<GeoIpDb, String> {
        Ok(load(&self.geoip, self.interval, decode_geoip)?.1)
    }

    fn geosite_db(&mut self) -> Result<GeoSiteDb, String> {
        Ok(load(&self.geosite, self.interval, decode_geosite)?.1)
    }
}

/// A decoder of one of the two list messages.
type Decode<T> = fn(&[u8]) -> Result<T, String>;

/// The database's bytes and what they decode to, downloaded first when due.
fn load<T>(src: &GeoSource, interval: Duration, decode: Decode<T>) -> Result<(Vec<u8>, T), String> {
    let (file, url) = match src {
        GeoSource::File(path) => return read(path, decode),
        GeoSource::Download { file, url } => (file, url),
    };
    if !due(file, interval) {
        match read(file, decode) {
            Ok(found) => return Ok(found),
            Err(e) => tracing::warn!("acl: {e}; downloading it again"),
        }
    }
    tracing::info!("acl: downloading {} from {url}", file.display());
    match download(file, url, decode) {
        Ok(got) => {
            tracing::info!("acl: downloaded {} ({} bytes)", file.display(), got.0.len());
            Ok(got)
        }
        Err(e) if fs::metadata(file).is_ok() => {
            tracing::warn!("acl: {e}; using the older {}", file.display());
            read(file, decode).map_err(|old| format!("{old} (and {e})"))
        }
        Err(e) => Err(e),
    }
}

/// Whether `file` is missing, empty or older than `interval`. A modification time in the
/// future counts as now.
fn due(file: &Path, interval: Duration) -> bool {
    let Ok(meta) = fs::metadata(file) else {
        return true;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    meta.len() == 0 || age.is_some_and(|age| age > interval)
}

fn read<T>(file: &Path, decode: Decode<T>) -> Result<(Vec<u8>, T), String> {
    let bytes = fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let db = decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((bytes, db))
}

/// Fetches `url`, checks that the body decodes, and puts it in place of `file`.
fn download<T>(file: &Path, url: &str, decode: Decode<T>) -> Result<(Vec<u8>, T), String> {
    let failed = |why: String| format!("download of {url} to {} failed: {why}", file.display());
    let bytes = fetch(url).map_err(failed)?;
    let db = decode(&bytes).map_err(|e| failed(format!("the body does not decode: {e}")))?;
    replace(file, &bytes).map_err(failed)?;
    Ok((bytes, db))
}

/// One GET of `url`, redirects followed. Unlike the reference, a final status other than
/// 2xx is refused: an error page that happened to decode would replace a good file.
/// Proxies come from the environment (`HTTPS_PROXY`, `NO_PROXY`, ...) as with Go's
/// client, which also never proxies a loopback host.
fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let mut config = Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .user_agent(concat!("quelay/", env!("CARGO_PKG_VERSION")));
    if is_loopback(url) {
        config = config.proxy(None);
    }
    let agent = config.build().new_agent();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_DOWNLOAD)
        .read_to_vec()
        .map_err(|e| e.to_string())
}

/// Whether `url`'s host is `localhost` or a loopback address.
fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Writes `bytes` to a new file beside `file` and renames it over `file`, so that no
/// reader ever sees half a database.
fn replace(file: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut out) = temp_file(dir)?;
    let written = out.write_all(bytes).and_then(|()| out.sync_all());
    drop(out);
    let result = match written {
        Err(e) => Err(format!("{}: {e}", tmp.display())),
        Ok(()) => fs::rename(&tmp, file)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), file.display())),
    };
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Numbers the temporary files of this process.
static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

/// A new file `.quelay-geo.dlpart.PID.N` in `dir` (the reference's is
/// `.hysteria-geoloader.dlpart.*`).
fn temp_file(dir: &Path) -> Result<(PathBuf, fs::File), String> {
    let mut tries = 0;
    loop {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".quelay-geo.dlpart.{}.{n}", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            // Left behind by an earlier process that had the same id.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use prost::Message;

    use super::*;
    use crate::acl::geo::tests::{GEOIP_TEST, GEOSITE_TEST};
    use crate::acl::geo::{GeoIp, GeoIpList};
    use crate::acl::Acl;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    /// An HTTP/1.1 server on 127.0.0.1 that answers every request with `status` and `body`.
    struct Server {
        url: String,
        /// Requests seen; counted before the answer is sent.
        requests: Arc<AtomicUsize>,
    }

    impl Server {
        fn start(status: &str, body: Vec<u8>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/geo.dat", listener.local_addr().unwrap());
            let requests = Arc::new(AtomicUsize::new(0));
            let count = requests.clone();
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            std::thread::spawn(move || {
                for tcp in listener.incoming() {
                    let Ok(mut tcp) = tcp else { continue };
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                    let (mut seen, mut buf) = (Vec::new(), [0u8; 1024]);
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = tcp.write_all(head.as_bytes());
                    let _ = tcp.write_all(&body);
                }
            });
            Server { url, requests }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    /// A loopback URL nothing listens on.
    fn dead_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/geoip.dat", listener.local_addr().unwrap())
    }

    /// An empty directory of its own.
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quelay-geo-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The names in `dir`: no temporary file may be left behind.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn loader(dir: &Path, url: &str) -> GeoDownload {
        GeoDownload {
            geoip: GeoSource::new(None, dir, GEOIP_FILE, url),
            geosite: GeoSource::new(None, dir, GEOSITE_FILE, url),
            interval: WEEK,
        }
    }

    /// A valid geoip.dat other than `GEOIP_TEST`, with the one country `new`.
    fn other_geoip() -> Vec<u8> {
        GeoIpList {
            entry: vec![GeoIp {
                country_code: "NEW".into(),
                cidr: vec![],
                inverse_match: false,
            }],
        }
        .encode_to_vec()
    }

    fn age(file: &Path, by: Duration) {
        let f = fs::File::options().write(true).open(file).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    fn countries(db: &GeoIpDb) -> Vec<&str> {
        db.0.keys().map(String::as_str).collect()
    }

    #[test]
    fn missing_file_is_downloaded_and_used() {
        let dir = temp_dir("missing");
        let server = Server::start("200 OK", GEOIP_TEST.to_vec());
        let db = loader(&dir, &server.url).geoip_db().unwrap();
        assert_eq!(countries(&db), ["test"]);
        assert_eq!(server.requests(), 1);
        assert_eq!(fs::read(dir.join(GEOIP_FILE)).unwrap(), GEOIP_TEST);
        assert_eq!(listing(&dir), [GEOIP_FILE]);

        let server = Server::start("200 OK", GEOSITE_TEST.to_vec());
        let db = loader(&dir, &server.url).geosite_db().unwrap();
        assert!(db.0.contains_key("test"));
        assert_eq!(fs::read(dir.join(GEOSITE_FILE)).unwrap(), GEOSITE_TEST);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn fresh_file_is_not_downloaded() {
        let dir = temp_dir("fresh");
        let file = dir.join(GEOIP_FILE);
        fs::write(&file, GEOIP_TEST).unwrap();
        age(&file, WEEK - Duration::from_secs(3600));
        let server = Server::start("200 OK", other_geoip());
        let mut geo = loader(&dir, &server.url);
        assert_eq!(countries(&geo.geoip_db().unwrap()), ["test"]);
        assert_eq!(geo.geoip().unwrap(), GEOIP_TEST);
        assert_eq!(server.requests(), 0);
        assert_eq!(fs::read(&file).unwrap(), GEOIP_TEST);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_file_is_downloaded_again() {
        let dir = temp_dir("stale");
        let file = dir.join(GEOIP_FILE);
        fs::write(&file, GEOIP_TEST).unwrap();
        age(&file, WEEK + Duration::from_secs(3600));
        let server = Server::start("200 OK", other_geoip());
        let db = loader(&dir, &server.url).geoip_db().unwrap();
        assert_eq!(countries(&db), ["new"]);
        assert_eq!(server.requests(), 1);
        assert_eq!(fs::read(&file).unwrap(), other_geoip());
        assert!(!due(&file, WEEK), "the new file is fresh");
        assert_eq!(listing(&dir), [GEOIP_FILE]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn empty_or_broken_file_is_downloaded_again() {
        let dir = temp_dir("broken");
        let file = dir.join(GEOIP_FILE);
        for old in [&[][..], &[0xff; 7][..]] {
            fs::write(&file, old).unwrap();
            let server = Server::start("200 OK", GEOIP_TEST.to_vec());
            let db = loader(&dir, &server.url).geoip_db().unwrap();
            assert_eq!(countries(&db), ["test"], "old file {old:?}");
            assert_eq!(server.requests(), 1);
            assert_eq!(fs::read(&file).unwrap(), GEOIP_TEST);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_download_falls_back_to_the_older_file() {
        let dir = temp_dir("fallback");
        let file = dir.join(GEOIP_FILE);
        let refused = Server::start("404 Not Found", other_geoip());
        let not_a_list = Server::start("200 OK", vec![0xff; 7]);
        for url in [dead_url(), refused.url.clone(), not_a_list.url.clone()] {
            fs::write(&file, GEOIP_TEST).unwrap();
            age(&file, 2 * WEEK);
            let db = loader(&dir, &url).geoip_db().unwrap();
            assert_eq!(countries(&db), ["test"], "{url}");
            assert_eq!(fs::read(&file).unwrap(), GEOIP_TEST);
            assert_eq!(listing(&dir), [GEOIP_FILE]);
        }
        assert_eq!((refused.requests(), not_a_list.requests()), (1, 1));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_download_without_a_file_names_url_and_file() {
        let dir = temp_dir("nofile");
        let file = dir.join(GEOIP_FILE).display().to_string();
        let dead = dead_url();
        let e = loader(&dir, &dead).geoip_db().unwrap_err();
        assert!(
            e.starts_with(&format!("download of {dead} to {file} failed: ")),
            "{e}"
        );

        let not_a_list = Server::start("200 OK", vec![0xff; 7]);
        let e = loader(&dir, &not_a_list.url).geoip_db().unwrap_err();
        assert!(e.contains(&not_a_list.url) && e.contains(&file), "{e}");
        assert!(e.contains("the body does not decode"), "{e}");
        assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn broken_older_file_fails_with_its_parse_error() {
        let dir = temp_dir("brokenold");
        let file = dir.join(GEOIP_FILE);
        fs::write(&file, [0xff; 7]).unwrap();
        let dead = dead_url();
        let e = loader(&dir, &dead).geoip_db().unwrap_err();
        assert!(e.starts_with(&format!("{}: ", file.display())), "{e}");
        assert!(e.contains(&dead), "the download error is kept: {e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn configured_path_is_used_as_is() {
        let dir = temp_dir("configured");
        let path = dir.join("mine.dat");
        assert_eq!(
            GeoSource::new(Some(&path), &dir, GEOIP_FILE, GEOIP_URL),
            GeoSource::File(path.clone())
        );
        assert_eq!(
            GeoSource::new(None, &dir, GEOIP_FILE, GEOIP_URL),
            GeoSource::Download {
                file: dir.join(GEOIP_FILE),
                url: GEOIP_URL.into()
            }
        );
        let mut geo = GeoDownload {
            geoip: GeoSource::File(path.clone()),
            geosite: GeoSource::File(path.clone()),
            interval: WEEK,
        };
        let e = geo.geoip_db().unwrap_err();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        // However old, a configured file is never fetched again.
        fs::write(&path, GEOIP_TEST).unwrap();
        age(&path, 10 * WEEK);
        assert_eq!(countries(&geo.geoip_db().unwrap()), ["test"]);
        assert_eq!(listing(&dir), ["mine.dat"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn compile_downloads_only_for_geo_rules() {
        let dir = temp_dir("compile");
        let server = Server::start("200 OK", GEOIP_TEST.to_vec());
        let mut geo = loader(&dir, &server.url);
        Acl::compile("ob1(all)", "acl.inline", &["ob1"], &mut geo).unwrap();
        assert_eq!(server.requests(), 0);
        assert!(listing(&dir).is_empty());
        let acl = Acl::compile("ob1(geoip:test)", "acl.inline", &["ob1"], &mut geo).unwrap();
        assert_eq!(acl.len(), 1);
        assert_eq!(server.requests(), 1);

        let mut geo = loader(&dir, &dead_url());
        let e = Acl::compile("ob1(geosite:test)", "acl.inline", &["ob1"], &mut geo)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("acl.inline: line 1: download of "), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn loopback_hosts_are_never_proxied() {
        for url in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "https://LOCALHOST/geoip.dat",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [GEOIP_URL, "http://192.0.2.1/x", "not a url"] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
