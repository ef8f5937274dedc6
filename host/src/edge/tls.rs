//! TLS on the listeners, by rustls (TLS 1.2 and 1.3 only, the ring provider).
//!
//! Each TLS listener holds a [`TlsAcceptor`] whose rustls `ServerConfig` sits in an `ArcSwap`: a
//! handshake takes the one current when it starts, so a certificate rotated on disk serves new
//! connections while the ones already open keep theirs. The cert, key and CA files are watched
//! like routes.yaml ([`spawn_watcher`]) and read again on SIGHUP; a pair that does not load (a
//! broken file, a key that is not the certificate's, an expired certificate) is refused with the
//! file and the cause, and the old one keeps serving.
//!
//! A client certificate verified against the listener's `client_ca` becomes a
//! [`PeerCertificate`]: its common name and subject alternative names, from which
//! `auth.client_certs` picks the client's identity.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::brokers::amqp::ClientTls;
use crate::config::Location;
use crate::edge::auth::CertIdentity;
use crate::metrics::Metrics;

/// A TLS file that cannot serve, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {cause}", file.display())]
pub struct TlsError {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub cause: String,
}

impl TlsError {
    fn new(file: &Path, cause: impl Into<String>) -> Self {
        TlsError {
            file: file.to_path_buf(),
            cause: cause.into(),
        }
    }
}

/// The crypto every TLS config of the proxy uses: rustls's ring provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS versions the proxy speaks: 1.3 and 1.2, nothing older.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads a PEM certificate chain, leaf first.
pub fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(file).map_err(|e| TlsError::new(file, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(file, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(file, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(file).map_err(|e| TlsError::new(file, e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::new(file, format!("not a PEM private key: {e}")))
}

/// The validity of a certificate, checked against the clock: an expired or not yet valid one is
/// an error naming its dates.
pub fn check_validity(file: &Path, cert: &CertificateDer<'_>) -> Result<Validity, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::new(file, format!("cannot read the certificate: {e}")))?;
    let validity = parsed.validity();
    let summary = Validity {
        subject: parsed.subject().to_string(),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
    };
    if !validity.is_valid() {
        let now = x509_parser::time::ASN1Time::now();
        let cause = if now < validity.not_before {
            format!(
                "the certificate of {:?} is not valid before {}",
                summary.subject, summary.not_before
            )
        } else {
            format!(
                "the certificate of {:?} expired on {}",
                summary.subject, summary.not_after
            )
        };
        return Err(TlsError::new(file, cause));
    }
    Ok(summary)
}

/// What `barnabas check` reports of a certificate that loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// Its subject, as a distinguished name.
    pub subject: String,
    /// Its first valid moment.
    pub not_before: String,
    /// Its last valid moment.
    pub not_after: String,
}

/// Builds the rustls server config of `tls`: the certificate chain with its key (which must match
/// it), and a client verifier on `client_ca` when client certificates are asked for. Returns the
/// leaf certificate's validity too.
pub fn server_config(tls: &TlsConfig) -> Result<(ServerConfig, Validity), TlsError> {
    let certs = read_certs(&tls.cert)?;
    let validity = check_validity(&tls.cert, &certs[0])?;
    let key = read_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::new(&tls.cert, e.to_string()))?;
    let builder = match (&tls.client_ca, tls.client_auth) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::new(ca, format!("not a CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if tls.client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::new(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        let cause = match e {
            rustls::Error::InconsistentKeys(_) => {
                format!(
                    "the key is not the one of the certificate in {}",
                    tls.cert.display()
                )
            }
            other => other.to_string(),
        };
        TlsError::new(&tls.key, cause)
    })?;
    Ok((config, validity))
}

/// The client side of TLS towards a broker: its certificate verified against `tls.ca` (or the
/// system's trust store) and its host name, and the proxy's own certificate when configured. The
/// files are read on every call, so each new connection uses what is on disk.
pub fn client_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::new(ca, format!("not a CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store may hold certificates webpki cannot use; the rest still serve.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::new(
                    Path::new("(system trust store)"),
                    "holds no usable CA certificate: set `tls.ca`",
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::new(Path::new("(tls)"), e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::new(key, e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The fields of a verified client certificate that can name its client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// DNS names among the subject alternative names, in order.
    pub dns_names: Vec<String>,
    /// URIs among the subject alternative names, in order.
    pub uris: Vec<String>,
}

impl PeerCertificate {
    /// Reads the names of a DER certificate.
    pub fn parse(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut names = PeerCertificate {
            common_name,
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        names.dns_names.push((*d).to_string())
                    }
                    x509_parser::extensions::GeneralName::URI(u) => {
                        names.uris.push((*u).to_string())
                    }
                    _ => {}
                }
            }
        }
        Some(names)
    }

    /// The name `field` picks, when the certificate has it.
    pub fn identity(&self, field: CertIdentity) -> Option<&str> {
        match field {
            CertIdentity::CommonName => self.common_name.as_deref(),
            CertIdentity::SanDns => self.dns_names.first().map(String::as_str),
            CertIdentity::SanUri => self.uris.first().map(String::as_str),
        }
        .filter(|name| !name.is_empty())
    }
}

/// The TLS side of one listener: its current server config, swapped when its files change.
pub struct TlsAcceptor {
    listener: String,
    tls: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// The bytes the current config was built from, so an unchanged file is not reloaded.
    loaded: Mutex<Vec<Vec<u8>>>,
}

impl TlsAcceptor {
    /// Loads `tls` for the listener named `listener`.
    pub fn new(listener: &str, tls: &TlsConfig) -> Result<Self, TlsError> {
        let (config, validity) = server_config(tls)?;
        tracing::info!(
            listener,
            subject = validity.subject,
            not_after = validity.not_after,
            "tls certificate loaded"
        );
        Ok(TlsAcceptor {
            listener: listener.to_string(),
            tls: tls.clone(),
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(read_all(&files(tls))),
        })
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The files it is built from.
    pub fn files(&self) -> Vec<PathBuf> {
        files(&self.tls)
    }

    /// Runs the TLS handshake on an accepted socket. Returns the stream and the client's
    /// certificate when it sent one (it has been verified against `client_ca` by then).
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, Option<PeerCertificate>)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
        let stream = acceptor.accept(tcp).await?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| PeerCertificate::parse(leaf.as_ref()));
        Ok((stream, peer))
    }

    /// Reads the files again; when they changed and load, new connections get them. Returns
    /// whether the config was replaced; an error leaves the old one serving.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files());
        if self.loaded.lock().is_ok_and(|l| *l == contents) {
            return Ok(false);
        }
        let (config, validity) = server_config(&self.tls)?;
        self.current.store(Arc::new(config));
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = contents;
        }
        tracing::info!(
            listener = self.listener,
            subject = validity.subject,
            not_after = validity.not_after,
            "tls certificate reloaded"
        );
        Ok(true)
    }

    /// [`reload`](Self::reload), logged and counted.
    pub fn reload_logged(&self, metrics: &Metrics) {
        match self.reload() {
            Ok(true) => metrics.tls_reload(&self.listener, "applied"),
            Ok(false) => {}
            Err(error) => {
                metrics.tls_reload(&self.listener, "rejected");
                tracing::error!(listener = self.listener, %error, "tls files rejected; the previous certificate keeps serving");
            }
        }
    }
}

fn files(tls: &TlsConfig) -> Vec<PathBuf> {
    let mut files = vec![tls.cert.clone(), tls.key.clone()];
    files.extend(tls.client_ca.clone());
    files
}

fn read_all(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}

/// Watches the files of `acceptors` and reloads an acceptor when one of its files changes.
pub fn spawn_watcher(
    acceptors: Vec<Arc<TlsAcceptor>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let files: Vec<PathBuf> = acceptors.iter().flat_map(|a| a.files()).collect();
    // Each acceptor compares contents, so an unrelated change in the same directory costs a read
    // and nothing else.
    let reload = move || {
        for acceptor in &acceptors {
            acceptor.reload_logged(&metrics);
        }
        None
    };
    crate::reload::watch_files(files, shutdown, reload, None::<fn()>)
}

/// A listener's `tls:`: the files are read when the listener starts and again whenever one of
/// them changes (see `edge::tls`).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first; resolved against the config's directory.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// Whether clients must, may or may not present a certificate.
    pub client_auth: ClientAuth,
    /// Where `tls:` is written, for errors found when the files are read.
    pub location: Location,
}

/// `client_auth:` of a listener's TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate is asked for and verified when sent; a client without one still connects.
    Optional,
    /// A client without a valid certificate fails the TLS handshake.
    Required,
}
