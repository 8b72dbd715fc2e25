//! The caller's side: a tower `Service<Uri>` for tonic's `connect_with_connector*` that
//! dials TCP and shakes hands with the configuration current at that moment, so a new
//! connection made after a certificate rotation presents the new certificate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{invalid, MeshTls, TlsError};

/// Connects to the URI's `host:port` and requires the server's certificate to name
/// `server_name` (the target service).
#[derive(Clone)]
pub struct Connector {
    tls: MeshTls,
    server_name: ServerName<'static>,
}

impl Connector {
    pub(super) fn new(tls: MeshTls, server_name: &str) -> Result<Self, TlsError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| invalid(format!("server name {server_name:?}"), e))?;
        Ok(Self { tls, server_name })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.tls.client_config());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| format!("no host:port in {uri}"))?
                .as_str()
                .to_string();
            // An io::Error keeps its kind, so a refused connection is still seen as one
            // (the channel may resend a request that was never sent).
            let tcp = TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
