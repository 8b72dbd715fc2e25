//! The listener's side: turns accepted TCP connections into TLS connections for tonic's
//! `serve_with_incoming`. Handshakes run concurrently (a slow or silent peer holds up no
//! one) and each must finish within [`HANDSHAKE_TIMEOUT`]; a peer that fails one (no
//! certificate, another CA, an expired certificate) is dropped, logged at debug and
//! counted in `starling_tls_handshake_failures_total`. At most [`MAX_HANDSHAKES`] run at
//! once; past that, accepting waits (new connections queue in the kernel's backlog), so
//! a flood of silent connections costs a bounded number of tasks.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::MeshTls;

/// How long a peer has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, per listener.
pub const MAX_HANDSHAKES: usize = 1_024;

/// The TLS connections made on `tcp`'s accepted connections, each with the configuration
/// current when it was accepted. Ends when `tcp` ends; dropping it stops accepting.
pub fn incoming<S>(
    tcp: S,
    tls: MeshTls,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<TcpStream, std::io::Error>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsStream<TcpStream>>(64);
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let next = tokio::select! {
                next = tcp.next() => next,
                // The server is gone: stop accepting, which closes the listener.
                () = tx.closed() => return,
            };
            let stream = match next {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
                None => return,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("starling_tls_handshake_failures_total").increment(1);
                        tracing::debug!(?peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::counter!("starling_tls_handshake_failures_total").increment(1);
                        tracing::debug!(?peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = Result<T, std::io::Error>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))
}
