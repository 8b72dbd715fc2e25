//! Authorization by identity: which caller may call which method.
//!
//! With mutual TLS every caller presents a certificate from the mesh's CA, whose URI SAN
//! names it (`spiffe://<namespace>/<name>`, see `starling ca`). [`AuthzLayer`] reads that
//! name from the connection's peer certificate and checks the request's gRPC path against
//! a [`Policy`]: the default one ships in `policy.txt` beside this file. A call no rule
//! allows is answered PERMISSION_DENIED (naming the caller and the method) and counted in
//! `starling_authz_denied_total{caller,method}`; it never reaches the handler.
//!
//! Without TLS there are no identities: the layer is not installed (an insecure mesh, as
//! `serve` warns when started without `--tls-dir`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// The policy in the repository (`services/runtime/src/policy.txt`).
pub const DEFAULT_POLICY: &str = include_str!("policy.txt");

/// Rules: (caller or `*`, exact path or prefix ending in `*`).
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<(String, String)>,
}

impl Policy {
    /// Parses the rule lines of the module docs; an error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(caller), Some(path), None) if path.starts_with('/') => {
                    rules.push((caller.to_string(), path.to_string()));
                }
                _ => {
                    return Err(format!(
                        "policy line {}: want `<caller> <gRPC path>`, got {line:?}",
                        n + 1
                    ))
                }
            }
        }
        Ok(Self { rules })
    }

    pub fn default_policy() -> Self {
        Self::parse(DEFAULT_POLICY)
            .unwrap_or_else(|e| unreachable!("the shipped policy parses: {e}"))
    }

    pub fn allows(&self, caller: &str, path: &str) -> bool {
        self.rules.iter().any(|(who, what)| {
            (who == "*" || who == caller)
                && match what.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => path == what,
                }
        })
    }
}

/// The caller's name from its certificate: the last segment of its `spiffe://` URI SAN
/// in trust domain `namespace`.
pub fn identity(cert_der: &[u8], namespace: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            let rest = uri.strip_prefix("spiffe://")?;
            let (domain, path) = rest.split_once('/')?;
            (domain == namespace && !path.is_empty() && !path.contains('/'))
                .then(|| path.to_string())
        }
        _ => None,
    })
}

/// Certificates already read, by a hash of their DER: parsing X.509 on every call cost
/// more than the rest of the check (a peer presents the same certificate on every call of
/// a connection). An entry is used only if the whole DER matches.
#[derive(Debug, Default)]
struct Identities(std::sync::Mutex<std::collections::HashMap<u64, Known>>);

/// A certificate's DER and the identity read from it (`None`: it names none here).
type Known = (Vec<u8>, Option<Arc<str>>);

/// Certificates remembered at most; past it the memory starts over (a rotation or many
/// peers cost a parse each, no more).
const REMEMBERED: usize = 4_096;

impl Identities {
    fn of(&self, cert_der: &[u8], namespace: &str) -> Option<Arc<str>> {
        let hash = xxhash_rust::xxh3::xxh3_64(cert_der);
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((der, id)) = known.get(&hash) {
            if der.as_slice() == cert_der {
                return id.clone();
            }
        }
        let id: Option<Arc<str>> = identity(cert_der, namespace).map(Into::into);
        if known.len() >= REMEMBERED {
            known.clear();
        }
        known.insert(hash, (cert_der.to_vec(), id.clone()));
        id
    }
}

/// The server layer of the module docs.
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
    namespace: Arc<str>,
    identities: Arc<Identities>,
}

impl AuthzLayer {
    pub fn new(policy: Policy, namespace: &str) -> Self {
        Self {
            policy: Arc::new(policy),
            namespace: namespace.into(),
            identities: Arc::default(),
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    layer: AuthzLayer,
}

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| self.layer.identities.of(c.as_ref(), &self.layer.namespace))
            });
        let path = req.uri().path();
        let allowed = caller
            .as_deref()
            .is_some_and(|c| self.layer.policy.allows(c, path));
        if !allowed {
            let who = caller.map_or_else(|| "unknown".to_string(), |c| c.to_string());
            let method = crate::metrics::method_label(path);
            metrics::counter!("starling_authz_denied_total", "caller" => who.clone(), "method" => method)
                .increment(1);
            tracing::warn!(caller = %who, %path, "call refused by the policy");
            let status = tonic::Status::permission_denied(format!(
                "{who} may not call {path} (services/runtime/src/policy.txt)"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_says_who_calls_what() {
        let p = Policy::default_policy();
        assert!(p.allows("gateway", "/starling.follower.v1.FollowerService/Follow"));
        assert!(p.allows("admin", "/starling.tweet.v1.TweetService/CreateTweet"));
        assert!(p.allows(
            "timeline",
            "/starling.follower.v1.FollowerService/ListFollowers"
        ));
        assert!(!p.allows("timeline", "/starling.follower.v1.FollowerService/Follow"));
        assert!(!p.allows("tagger", "/starling.follower.v1.FollowerService/Follow"));
        assert!(!p.allows("tagger", "/starling.tweet.v1.TweetService/CreateTweet"));
        assert!(p.allows("tagger", "/grpc.health.v1.Health/Check"));
        assert!(p.allows(
            "anyone",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
    }

    #[test]
    fn an_identity_is_read_once_per_certificate_and_never_mixed_up() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = |name: &str| {
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            params.subject_alt_names.push(rcgen::SanType::URI(
                format!("spiffe://starling/{name}").try_into().unwrap(),
            ));
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let (tagger, gateway) = (cert("tagger"), cert("gateway"));
        let ids = Identities::default();
        assert_eq!(ids.of(&tagger, "starling").as_deref(), Some("tagger"));
        assert_eq!(ids.of(&gateway, "starling").as_deref(), Some("gateway"));
        assert_eq!(
            ids.of(&tagger, "starling").as_deref(),
            Some("tagger"),
            "remembered"
        );
        assert_eq!(ids.0.lock().unwrap().len(), 2);
        assert_eq!(ids.of(b"not a certificate", "starling"), None);
    }

    #[test]
    fn bad_policy_lines_are_named() {
        let e = Policy::parse("gateway /ok\nnonsense").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(Policy::parse("gateway no-slash").is_err());
    }
}
