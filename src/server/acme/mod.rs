//! `acme`: the server's certificate from an ACME CA (RFC 8555), obtained at start-up and
//! renewed in the background with a third of its lifetime left, each new one swapped into
//! new handshakes through [`CertSwap`] (live connections keep theirs).
//!
//! Everything here runs off the data path, on a current-thread tokio runtime of its own:
//! start-up blocks on it until a certificate is there (loaded from `acme.dir` or issued),
//! then a thread named `acme` keeps it for renewals. The challenge listeners (HTTP-01 on
//! TCP 80, TLS-ALPN-01 on TCP 443, or the `altPort`s) are up only while an order is being
//! validated; when the masquerade's TCP listeners hold those ports, they answer instead. The protocol itself is instant-acme's; its HTTP requests go through ureq
//! ([`client`]).

mod client;
pub mod dns01;
pub mod http01;
mod store;
pub mod tlsalpn01;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::PrivateKeyDer;

use crate::config::{self, AcmeCa};
use crate::quic::{CertKey, CertSwap};
pub use store::{Store, Validity, DEFAULT_DIR, DIR_ENV};

/// How long the CA gets to validate the challenges of one order.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the CA gets to issue the certificate once the order is finalised.
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);
/// The first wait after a failed renewal; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// The longest wait between renewal attempts.
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);
/// The longest single sleep of the renewal thread, so that a changed clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The ACME side of a server: its config, storage and runtime.
pub struct Acme {
    cfg: config::Acme,
    store: Store,
    rt: tokio::runtime::Runtime,
    http: client::UreqClient,
    /// Where HTTP-01 answers go when another listener (`masquerade.listenHTTP`) holds the
    /// port; `None`: a responder of our own is bound for each order.
    shared_http: Option<http01::Answers>,
    /// The same for TLS-ALPN-01 (`masquerade.listenHTTPS`).
    shared_tls: Option<tlsalpn01::Certs>,
    /// DNS-01 (`acme.type: dns`), which replaces the challenge listeners.
    dns: Option<dns01::Solver>,
}

/// A challenge listener's accepting task (HTTP-01 or TLS-ALPN-01); dropping it stops
/// accepting.
pub struct Responder {
    task: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
}

impl Responder {
    /// Stops accepting and waits until the listening socket is closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The challenges whose listeners are up for an order.
#[derive(Clone, Copy, Debug)]
struct Offered {
    http01: bool,
    tls_alpn01: bool,
}

/// No listener: DNS-01 needs none.
const NONE: Offered = Offered {
    http01: false,
    tls_alpn01: false,
};

/// Clears the challenge answers of an order when it ends, however it ends.
struct Forget(http01::Answers, tlsalpn01::Certs);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.clear();
        self.1.clear();
    }
}

/// A certificate and when it stops being valid.
struct Issued {
    ck: CertKey,
    validity: Validity,
}

impl Acme {
    /// Prepares the runtime and the HTTP client; nothing is contacted yet. `resolver`: where
    /// DNS-01's lookups go.
    pub fn new(cfg: &config::Acme, resolver: &config::Resolver) -> Result<Acme, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(2)
            .thread_name("acme-blocking")
            .build()
            .map_err(|e| format!("acme: cannot start a runtime: {e}"))?;
        Ok(Acme {
            store: Store::new(cfg.dir.as_deref(), cfg.ca.directory(), &cfg.domains),
            cfg: cfg.clone(),
            rt,
            http: client::UreqClient::new().map_err(|e| format!("acme.ca: {e}"))?,
            shared_http: None,
            shared_tls: None,
            dns: cfg.dns.as_ref().map(|d| dns01::Solver::new(d, resolver)),
        })
    }

    /// The certificate to start with: the stored one while it is not due for renewal,
    /// else a new one (the stored one if that fails and it has not expired). Blocks.
    pub fn obtain(&self) -> Result<(CertKey, Validity), String> {
        let stored = self.load_stored();
        if let Some(found) = &stored {
            if SystemTime::now() < found.validity.renew_at() {
                tracing::info!(
                    "acme: certificate for {} loaded from {}",
                    self.cfg.domains.join(", "),
                    self.store.cert().display()
                );
                return Ok((found.ck.clone(), found.validity));
            }
        }
        match self.rt.block_on(self.issue()) {
            Ok(new) => Ok((new.ck, new.validity)),
            Err(e) => match stored {
                Some(old) if SystemTime::now() < old.validity.not_after => {
                    tracing::warn!("{e}; serving the stored certificate until it can be renewed");
                    Ok((old.ck, old.validity))
                }
                _ => Err(e),
            },
        }
    }

    /// The HTTP-01 port the CA connects to, if HTTP-01 is offered.
    pub fn http01_port(&self) -> Option<u16> {
        self.cfg.http_port
    }

    /// From now on, HTTP-01 is answered by whoever serves `answers` on the port (the
    /// masquerade's HTTP listener), not by a responder of our own.
    pub fn share_http01(&mut self, answers: http01::Answers) {
        self.shared_http = Some(answers);
    }

    /// The TLS-ALPN-01 port the CA connects to, if TLS-ALPN-01 is offered.
    pub fn tls_alpn01_port(&self) -> Option<u16> {
        self.cfg.tls_port
    }

    /// From now on, TLS-ALPN-01 is answered by whoever serves `certs` on the port (the
    /// masquerade's HTTPS listener, through [`tlsalpn01::OrSite`]).
    pub fn share_tls_alpn01(&mut self, certs: tlsalpn01::Certs) {
        self.shared_tls = Some(certs);
    }

    /// Renews in the background, from a thread named `acme`, for the life of the process:
    /// each new certificate goes to `swap`.
    pub fn spawn_renewal(self, swap: Arc<CertSwap>, validity: Validity) -> Result<(), String> {
        std::thread::Builder::new()
            .name("acme".into())
            .spawn(move || self.renew_forever(&swap, validity))
            .map(|_| ())
            .map_err(|e| format!("acme: cannot start a thread: {e}"))
    }

    fn renew_forever(&self, swap: &CertSwap, mut validity: Validity) {
        let mut retry = FIRST_RETRY;
        let mut next = validity.renew_at();
        loop {
            let now = SystemTime::now();
            if let Ok(wait) = next.duration_since(now) {
                std::thread::sleep(wait.min(MAX_SLEEP));
                continue;
            }
            match self.rt.block_on(self.issue()) {
                Ok(new) => match swap.set(&new.ck) {
                    Ok(()) => {
                        tracing::info!("acme: renewed certificate in use for new connections");
                        validity = new.validity;
                        next = validity.renew_at();
                        retry = FIRST_RETRY;
                    }
                    Err(e) => {
                        tracing::error!("acme: renewed certificate refused: {e}");
                        next = now + retry;
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                },
                Err(e) => {
                    tracing::error!("{e}; trying again in {retry:?}");
                    next = now + retry;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// The stored certificate and key, when they load and cover every domain.
    fn load_stored(&self) -> Option<Issued> {
        let (cert, key) = (self.store.cert(), self.store.key());
        if !cert.exists() {
            return None;
        }
        let ck = match crate::quic::load_pem(&cert, &key) {
            Ok(ck) => ck,
            Err(e) => {
                tracing::warn!("acme: stored certificate unusable: {e}");
                return None;
            }
        };
        let leaf = ck.chain.first()?;
        if !store::covers(leaf, &self.cfg.domains) {
            tracing::info!(
                "acme: stored certificate does not cover {}; ordering a new one",
                self.cfg.domains.join(", ")
            );
            return None;
        }
        let validity = store::validity(leaf)?;
        Some(Issued { ck, validity })
    }

    /// The account: the stored one for this CA, else a new one (stored).
    async fn account(&self, fresh: bool) -> Result<Account, String> {
        let ca = self.cfg.ca.directory();
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        if !fresh {
            if let Ok(json) = std::fs::read(self.store.account()) {
                match serde_json::from_slice::<AccountCredentials>(&json) {
                    Ok(creds) => {
                        return builder()
                            .from_credentials(creds)
                            .await
                            .map_err(|e| format!("acme.ca: {ca}: {e}"))
                    }
                    Err(e) => tracing::warn!(
                        "acme: {}: {e}; registering a new account",
                        self.store.account().display()
                    ),
                }
            }
        }
        let contact = format!("mailto:{}", self.cfg.email);
        let contacts: Vec<&str> = if self.cfg.email.is_empty() {
            Vec::new()
        } else {
            vec![contact.as_str()]
        };
        let eab = match self.cfg.ca {
            AcmeCa::ZeroSsl => Some(self.zerossl_eab().await?),
            _ => None,
        };
        let new = NewAccount {
            contact: &contacts,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = builder()
            .create(&new, ca.to_owned(), eab.as_ref())
            .await
            .map_err(|e| format!("acme.ca: {ca}: cannot register an account: {e}"))?;
        let json = serde_json::to_vec(&creds).map_err(|e| format!("acme: {e}"))?;
        self.store.save_account(&json).map_err(|e| {
            format!(
                "acme.dir: cannot write {}: {e}",
                self.store.account().display()
            )
        })?;
        tracing::info!("acme: registered an account with {ca}");
        Ok(account)
    }

    /// ZeroSSL's External Account Binding for `acme.email`, as the reference fetches it.
    async fn zerossl_eab(&self) -> Result<ExternalAccountKey, String> {
        let email = self.cfg.email.clone();
        let url = config::ZEROSSL_EAB_URL;
        let fetched = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let form = format!(
                "email={}",
                percent_encoding::utf8_percent_encode(&email, percent_encoding::NON_ALPHANUMERIC)
            );
            let agent = ureq::Agent::config_builder()
                .timeout_global(Some(client::REQUEST_TIMEOUT))
                .build()
                .new_agent();
            let mut rsp = agent
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .send(form.as_bytes())
                .map_err(|e| e.to_string())?;
            rsp.body_mut()
                .with_config()
                .limit(client::MAX_RESPONSE)
                .read_to_vec()
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| format!("acme.email: ZeroSSL account binding from {url}: {e}"))?;
        let eab: serde_json::Value = serde_json::from_slice(&fetched)
            .map_err(|e| format!("acme.email: ZeroSSL account binding: {e}"))?;
        let field = |name: &str| {
            eab.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("acme.email: ZeroSSL account binding lacks {name}: {eab}"))
        };
        let (kid, hmac) = (field("eab_kid")?, field("eab_hmac_key")?);
        use base64::Engine;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(hmac.trim_end_matches('='))
            .map_err(|e| format!("acme.email: ZeroSSL account binding key: {e}"))?;
        Ok(ExternalAccountKey::new(kid, &key))
    }

    /// Orders, validates and stores a new certificate, with the challenge listeners up
    /// meanwhile.
    async fn issue(&self) -> Result<Issued, String> {
        if let Some(solver) = &self.dns {
            let records = solver.order().await?;
            let issued = self
                .issue_order(
                    &Default::default(),
                    &Default::default(),
                    NONE,
                    Some(&records),
                )
                .await;
            records.clean_up().await;
            return issued;
        }
        // The listeners first, so that the CA finds them when told to look.
        let answers = self.shared_http.clone().unwrap_or_default();
        let certs = self.shared_tls.clone().unwrap_or_default();
        let _forget = Forget(answers.clone(), certs.clone());
        let host = self
            .cfg
            .listen_host
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        // A challenge whose port is taken is left out while the other can still be used.
        let (mut http, mut tls) = (None, None);
        let (mut shared_http, mut shared_tls) = (false, false);
        let mut failures = Vec::new();
        if let Some(port) = self.cfg.http_port {
            if self.shared_http.is_some() {
                tracing::info!("acme: answering http-01 on masquerade.listenHTTP (port {port})");
                shared_http = true;
            } else {
                match http01::start(SocketAddr::new(host, port), answers.clone()) {
                    Ok(r) => {
                        tracing::info!("acme: answering http-01 on {}", r.addr);
                        http = Some(r);
                    }
                    Err(e) => failures.push(format!(
                        "acme.http.altPort: http-01 cannot listen on port {port}: {e}"
                    )),
                }
            }
        }
        if let Some(port) = self.cfg.tls_port {
            if self.shared_tls.is_some() {
                tracing::info!(
                    "acme: answering tls-alpn-01 on masquerade.listenHTTPS (port {port})"
                );
                shared_tls = true;
            } else {
                match tlsalpn01::start(SocketAddr::new(host, port), certs.clone()) {
                    Ok(r) => {
                        tracing::info!("acme: answering tls-alpn-01 on {}", r.addr);
                        tls = Some(r);
                    }
                    Err(e) => failures.push(format!("acme.tls.altPort: tls-alpn-01: {e}")),
                }
            }
        }
        let offered = Offered {
            http01: http.is_some() || shared_http,
            tls_alpn01: tls.is_some() || shared_tls,
        };
        if !offered.http01 && !offered.tls_alpn01 {
            return Err(failures.join("; "));
        }
        for f in failures {
            tracing::warn!("{f}; trying the other challenge");
        }

        let issued = self.issue_order(&answers, &certs, offered, None).await;
        // Closed before the port is wanted again (by the masquerade's listener, say).
        if let Some(r) = http {
            r.stop().await;
        }
        if let Some(r) = tls {
            r.stop().await;
        }
        issued
    }

    /// [`Self::issue`] once the listeners are up (or, for DNS-01, with `dns` to write the
    /// records).
    async fn issue_order(
        &self,
        answers: &http01::Answers,
        certs: &tlsalpn01::Certs,
        offered: Offered,
        dns: Option<&dns01::Order>,
    ) -> Result<Issued, String> {
        let ca = self.cfg.ca.directory();
        let names = self.cfg.domains.join(", ");
        tracing::info!("acme: ordering a certificate for {names} from {ca}");
        let identifiers: Vec<Identifier> = self
            .cfg
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut account = self.account(false).await?;
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(order) => order,
            Err(instant_acme::Error::Api(p))
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
            {
                tracing::warn!("acme: {ca} no longer knows the stored account; registering anew");
                account = self.account(true).await?;
                account
                    .new_order(&NewOrder::new(&identifiers))
                    .await
                    .map_err(|e| format!("acme.domains: {names}: {ca} refused the order: {e}"))?
            }
            Err(e) => {
                return Err(format!(
                    "acme.domains: {names}: {ca} refused the order: {e}"
                ))
            }
        };

        let mut pending: Vec<(String, &'static str)> = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("acme.domains: {names}: {ca}: {e}"))?;
            let domain = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(format!(
                        "acme.domains: {domain}: the authorization is {other:?} at {ca}"
                    ))
                }
            }
            let (kind, name) = if offered.http01
                && authz
                    .challenges
                    .iter()
                    .any(|c| c.r#type == ChallengeType::Http01)
            {
                (ChallengeType::Http01, "http-01")
            } else if offered.tls_alpn01
                && authz
                    .challenges
                    .iter()
                    .any(|c| c.r#type == ChallengeType::TlsAlpn01)
            {
                (ChallengeType::TlsAlpn01, "tls-alpn-01")
            } else if dns.is_some()
                && authz
                    .challenges
                    .iter()
                    .any(|c| c.r#type == ChallengeType::Dns01)
            {
                (ChallengeType::Dns01, "dns-01")
            } else {
                return Err(format!(
                    "acme.domains: {domain}: {ca} offers none of the configured challenges"
                ));
            };
            let Some(mut challenge) = authz.challenge(kind) else {
                continue;
            };
            let key_auth = challenge.key_authorization();
            match (name, dns) {
                ("http-01", _) => answers.insert(&domain, &challenge.token, key_auth.as_str()),
                ("dns-01", Some(records)) => {
                    records.present(&domain, &key_auth.dns_value()).await?
                }
                _ => certs.insert(&domain, key_auth.digest().as_ref())?,
            }
            challenge.set_ready().await.map_err(|e| {
                format!("acme.domains: {domain}: {name} challenge: {ca} answered: {e}")
            })?;
            pending.push((domain, name));
        }

        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(VALIDATION_TIMEOUT);
        let status = order.poll_ready(&retries).await;
        if !matches!(status, Ok(OrderStatus::Ready)) {
            let why = match &status {
                Ok(s) => format!("order {s:?}"),
                Err(e) => e.to_string(),
            };
            return Err(self.failed_challenge(&mut order, &pending, &why).await);
        }

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("acme: cannot generate a key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(self.cfg.domains.clone())
            .map_err(|e| format!("acme.domains: {names}: {e}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("acme: cannot make the certificate request: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("acme.domains: {names}: {ca} refused to finalise: {e}"))?;
        let chain_pem = order
            .poll_certificate(&RetryPolicy::new().timeout(ISSUANCE_TIMEOUT))
            .await
            .map_err(|e| format!("acme.domains: {names}: {ca} issued no certificate: {e}"))?;

        let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("acme.domains: {names}: {ca} sent an unreadable chain: {e}"))?;
        let leaf = chain
            .first()
            .ok_or_else(|| format!("acme.domains: {names}: {ca} sent an empty chain"))?;
        let validity = store::validity(leaf)
            .ok_or_else(|| format!("acme.domains: {names}: {ca} sent an unreadable leaf"))?;
        let ck = CertKey {
            chain,
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        };
        self.store
            .save_cert(chain_pem.as_bytes(), key.serialize_pem().as_bytes())
            .map_err(|e| {
                format!(
                    "acme.dir: cannot write {}: {e}",
                    self.store.cert().display()
                )
            })?;
        tracing::info!(
            "acme: certificate for {names} issued by {ca}, stored in {}",
            self.store.cert().display()
        );
        Ok(Issued { ck, validity })
    }

    /// Why an order did not become ready: the first challenge the CA marked invalid, with
    /// its domain, its type and the CA's answer.
    async fn failed_challenge(
        &self,
        order: &mut instant_acme::Order,
        pending: &[(String, &'static str)],
        why: &str,
    ) -> String {
        let ca = self.cfg.ca.directory();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            let Ok(state) = authz.refresh().await else {
                continue;
            };
            let domain = state.identifier().to_string();
            for c in &state.challenges {
                if let Some(problem) = &c.error {
                    let name = pending
                        .iter()
                        .find(|(d, _)| *d == domain)
                        .map_or("challenge", |(_, n)| n);
                    return format!(
                        "acme.domains: {domain}: {name} challenge failed; {ca} answered: {problem}"
                    );
                }
            }
        }
        let which: Vec<String> = pending.iter().map(|(d, n)| format!("{d} ({n})")).collect();
        format!(
            "acme.domains: {}: validation did not complete; {ca} answered: {why}",
            which.join(", ")
        )
    }
}
