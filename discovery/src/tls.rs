//! Mutual TLS for the mesh's calls: each endpoint's connection proves the server is the
//! service it was picked for (its certificate names the service as a DNS name, see
//! `starling ca issue`) and presents the caller's own certificate (its identity).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The caller's side of mutual TLS: the CA it trusts and the identity it presents.
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Identity,
}

impl ClientTls {
    pub fn new(ca: Certificate, identity: Identity) -> Self {
        Self { ca, identity }
    }

    /// `dir/ca.crt` and `dir/<name>.crt` + `dir/<name>.key`, as `starling ca` writes them.
    pub fn from_dir(dir: &Path, name: &str) -> std::io::Result<Self> {
        let (ca, identity) = load(dir, name)?;
        Ok(Self::new(ca, identity))
    }

    /// The configuration for calls to `target`.
    pub fn config_for(&self, target: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(target)
    }
}

/// Reads `dir/ca.crt`, `dir/<name>.crt` and `dir/<name>.key`; an error names the file.
pub fn load(dir: &Path, name: &str) -> std::io::Result<(Certificate, Identity)> {
    let read = |file: String| {
        let path = dir.join(&file);
        std::fs::read(&path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        })
    };
    let ca = Certificate::from_pem(read("ca.crt".into())?);
    let identity = Identity::from_pem(read(format!("{name}.crt"))?, read(format!("{name}.key"))?);
    Ok((ca, identity))
}
