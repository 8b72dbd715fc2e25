//! The mesh's own failures, as opposed to a server's answer: what tonic turns into a
//! status for the caller, and what the retry policy reads to decide whether another
//! attempt may help.

use tonic::Status;
use tower::BoxError;

/// A failure of the mesh itself. Tonic turns it into the carried [`Status`]; `retryable`
/// tells the retry policy whether another endpoint might succeed, `unsent` that the
/// request certainly never reached a server (the connection was refused), so even a call
/// that must not run twice may be sent again.
#[derive(Debug)]
pub struct MeshError {
    pub status: Status,
    pub retryable: bool,
    pub unsent: bool,
}

impl std::fmt::Display for MeshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.status.code(), self.status.message())
    }
}

impl std::error::Error for MeshError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.status)
    }
}

/// A [`MeshError`] that was sent (or never got that far for another reason).
pub(crate) fn fail(status: Status, retryable: bool) -> BoxError {
    Box::new(MeshError {
        status,
        retryable,
        unsent: false,
    })
}

/// The status for a request body that could not be buffered: RESOURCE_EXHAUSTED if it was
/// over `limit`, else the body's own error.
pub(crate) fn too_large_or(e: BoxError, limit: usize) -> Status {
    if e.is::<http_body_util::LengthLimitError>() {
        Status::resource_exhausted(format!(
            "request message larger than the {limit} bytes a call may carry"
        ))
    } else {
        match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(e) => Status::unknown(format!("reading the request: {e}")),
        }
    }
}

/// Whether `e` says the connection was refused: the request was never sent.
pub(crate) fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as hyper and tonic wrap the connector's.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connect error")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_refused_connection_is_found_under_wrappers() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let wrapped: BoxError = Box::new(Wrapper(refused));
        assert!(connection_refused(wrapped.as_ref()));
        let other: BoxError = Box::new(std::io::Error::other("reset"));
        assert!(!connection_refused(other.as_ref()));
    }
}
