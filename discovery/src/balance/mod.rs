//! Balancing policies: which endpoint serves the next call.

pub mod ewma;
pub mod ring;

use std::str::FromStr;

/// How a target service's calls are spread over its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Each healthy endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint that owns the hash of this request header on a consistent-hash ring
    /// (for example the user id), so a user's calls land on the same instance and its caches.
    /// Calls without the header are spread round-robin.
    ConsistentHash { header: String },
    /// Power of two choices: of two random healthy endpoints, the one with the lower
    /// peak-EWMA latency times its calls in flight counted against the others' mean (see
    /// `client/endpoint.rs`).
    P2cEwma,
}

/// The metadata header consistent hashing reads when none is configured.
pub const DEFAULT_HASH_HEADER: &str = "x-starling-hash-key";

impl FromStr for Policy {
    type Err = String;

    /// `round_robin`, `p2c_ewma`, `consistent_hash` or `consistent_hash:<header>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "round_robin" => Ok(Policy::RoundRobin),
            None if s == "p2c_ewma" => Ok(Policy::P2cEwma),
            None if s == "consistent_hash" => Ok(Policy::ConsistentHash {
                header: DEFAULT_HASH_HEADER.into(),
            }),
            Some(("consistent_hash", h)) if !h.is_empty() => Ok(Policy::ConsistentHash {
                header: h.to_ascii_lowercase(),
            }),
            _ => Err(format!(
                "unknown policy {s:?}: use round_robin, p2c_ewma, consistent_hash or consistent_hash:<header>"
            )),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::RoundRobin => f.write_str("round_robin"),
            Policy::P2cEwma => f.write_str("p2c_ewma"),
            Policy::ConsistentHash { header } => write!(f, "consistent_hash:{header}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in ["round_robin", "p2c_ewma", "consistent_hash:x-user"] {
            assert_eq!(s.parse::<Policy>().unwrap().to_string(), s);
        }
        assert_eq!(
            "consistent_hash".parse::<Policy>().unwrap(),
            Policy::ConsistentHash {
                header: DEFAULT_HASH_HEADER.into()
            }
        );
        let err = "random".parse::<Policy>().unwrap_err();
        assert!(err.contains("round_robin"), "{err}");
    }
}
