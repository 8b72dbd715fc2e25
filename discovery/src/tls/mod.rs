//! Mutual TLS for the mesh: every service listener asks callers for a certificate from the
//! mesh's CA, and every mesh call presents the caller's own and checks that the server is
//! the service it was picked for (its certificate names the service as a DNS name, see
//! `starling ca issue`). TLS 1.3 only, through rustls with the ring provider.
//!
//! Certificates rotate without a restart: [`MeshTls::from_dir`] re-reads its files every
//! [`RELOAD_EVERY`], and every connection made after a change, in either direction, uses
//! the new certificate. Connections already open keep the one they were made with, so a
//! rotation fails no call in flight. A file that does not parse, or a key that does not
//! match its certificate (a rotation caught half-written), is logged and the previous
//! certificate is kept.

mod accept;
mod connect;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use accept::{incoming, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES};
pub use connect::Connector;

/// How often [`MeshTls::from_dir`] looks for changed files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why an identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// One process's mesh identity: the CA it trusts and the certificate it presents, as both a
/// server and a client. Cheap to clone; clones share the current certificate.
#[derive(Clone)]
pub struct MeshTls {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the files said last time they were read, and the configurations made from it.
    current: RwLock<Arc<Loaded>>,
}

struct Loaded {
    pem: Pem,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// The three PEM files of an identity, as bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Sizes only: a key never reaches a log.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pem {{ ca: {} bytes, cert: {} bytes, key: hidden }}",
            self.ca.len(),
            self.cert.len()
        )
    }
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshTls")
    }
}

impl MeshTls {
    /// An identity that never changes (`starling up` makes its CA in memory).
    pub fn from_pem(pem: Pem) -> Result<Self, TlsError> {
        let loaded = Loaded::new(pem)?;
        Ok(Self {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(loaded)),
            }),
        })
    }

    /// `dir/ca.crt` and `dir/<name>.crt` + `dir/<name>.key`, as `starling ca` writes them,
    /// re-read every [`RELOAD_EVERY`] while any clone of the result lives. Needs a tokio
    /// runtime.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let files = Files::new(dir, name);
        let tls = Self::from_pem(files.read()?)?;
        tokio::spawn(reload(Arc::downgrade(&tls.inner), files));
        Ok(tls)
    }

    /// The files in use now.
    pub fn pem(&self) -> Pem {
        self.loaded().pem.clone()
    }

    /// The listener's configuration for the next connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded().server.clone()
    }

    /// The caller's configuration for the next connection.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.loaded().client.clone()
    }

    /// A connector for tonic's `Endpoint::connect_with_connector*` whose connections must
    /// reach a server whose certificate names `server_name`.
    pub fn connector(&self, server_name: &str) -> Result<Connector, TlsError> {
        Connector::new(self.clone(), server_name)
    }

    fn loaded(&self) -> Arc<Loaded> {
        match self.inner.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Takes `pem` if it differs from the current files and makes a valid identity.
    fn update(&self, pem: Pem) -> Result<bool, TlsError> {
        if self.loaded().pem == pem {
            return Ok(false);
        }
        let loaded = Arc::new(Loaded::new(pem)?);
        match self.inner.current.write() {
            Ok(mut g) => *g = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(true)
    }
}

/// Makes ring the process's default rustls provider, for libraries that build their TLS
/// configuration from the default (redis-rs for `rediss://`). Idempotent.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

/// ring, the provider tonic's `tls-ring` uses. rustls 0.23.48 deprecates it for lacking a
/// post-quantum key exchange; aws-lc-rs has one but needs a C and CMake build.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Loaded {
    fn new(pem: Pem) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.ca)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("ca.crt", e))?;
        if ca.is_empty() {
            return Err(invalid("ca.crt", "no certificate in it"));
        }
        for c in ca {
            roots.add(c).map_err(|e| invalid("ca.crt", e))?;
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("certificate", e))?;
        if chain.is_empty() {
            return Err(invalid("certificate", "no certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| invalid("key", e))?;
        let provider = provider();
        // `with_single_cert` checks that the key is the certificate's.

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| invalid("ca.crt", e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| invalid("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| invalid("certificate and key", e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| invalid("TLS versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid("certificate and key", e))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            pem,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Where an identity's files are.
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn read(&self) -> Result<Pem, TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok(Pem {
            ca: read(&self.ca)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }
}

/// Re-reads `files` until the identity is dropped.
async fn reload(tls: Weak<Inner>, files: Files) {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let Some(inner) = tls.upgrade() else { return };
        let tls = MeshTls { inner };
        match files.read().and_then(|pem| tls.update(pem)) {
            Ok(true) => {
                last_error.clear();
                tracing::info!(cert = %files.cert.display(), "TLS: new certificate loaded; new connections use it");
            }
            Ok(false) => last_error.clear(),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(cert = %files.cert.display(), error = %e, "TLS: changed files not loaded; keeping the previous certificate");
                    last_error = e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
