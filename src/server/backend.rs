//! placeholder until the backend branch lands
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::proto::h3::Request;

pub fn http_auth(
    _url: &str,
    _insecure: bool,
    _addr: SocketAddr,
    _auth: &str,
    _tx: u64,
    _timeout: Duration,
) -> Result<Option<String>, String> {
    Err("unsupported".into())
}

#[derive(Debug)]
pub struct FileMasquerade {
    _dir: PathBuf,
}
impl FileMasquerade {
    pub fn new(dir: PathBuf) -> Self {
        FileMasquerade { _dir: dir }
    }
    pub fn respond(&self, _req: &Request) -> Vec<u8> {
        Vec::new()
    }
}
#[derive(Debug)]
pub struct ProxyMasquerade;
impl ProxyMasquerade {
    pub fn new(
        _url: String,
        _rewrite_host: bool,
        _x_forwarded: bool,
        _insecure: bool,
    ) -> Result<Self, String> {
        Ok(ProxyMasquerade)
    }
    pub fn respond(&self, _req: &Request, _body: &[u8], _client: SocketAddr) -> Vec<u8> {
        Vec::new()
    }
}
