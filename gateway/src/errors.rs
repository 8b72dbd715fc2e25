//! The one error type of the HTTP API.
//!
//! Every handler returns `Result<_, ApiError>`, so that every failure reaches the client the
//! same way: a status from the table in `API.md` and a body `{"error": "<message>"}`. Errors
//! from the services arrive as gRPC statuses; [`ApiError::from`] maps their code to the HTTP
//! status and passes their message through unchanged (the services already write messages
//! meant for clients, such as "text must be at most 280 characters"). A 5xx is the
//! exception: what failed inside (an address, a backend's error text) is for the operator,
//! so the body says only what kind of failure it was, with a `request_id` under which the
//! gateway logged the details.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tonic::Code;

/// An HTTP error answer: a status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The HTTP status for a gRPC code (API.md: 400, 401, 403, 404, 409, 429, 503, 504).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let http = http_status(status.code());
        let message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_string()
        };
        if http.is_server_error() {
            tracing::warn!(code = ?status.code(), %message, "service call failed");
        }
        Self::new(http, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("JSON body larger than {} bytes", crate::JSON_BODY_LIMIT),
            );
        }
        // A body that did not arrive in time (listener.rs) is the client's slowness, not
        // bad JSON.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&r);
        while let Some(e) = cause {
            if let Some(timed_out) = e.downcast_ref::<crate::BodyTimedOut>() {
                return Self::new(StatusCode::REQUEST_TIMEOUT, timed_out.to_string());
            }
            cause = e.source();
        }
        Self::bad_request(format!("invalid JSON body: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(format!("invalid path: {}", r.body_text()))
    }
}

/// The same failure for a gRPC caller (the gateway's own gRPC methods: `AuthService`, the
/// user-call checks). 5xx details stay in the log, as for HTTP.
impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::BAD_REQUEST => Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT => Code::AlreadyExists,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
                Code::ResourceExhausted
            }
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            _ => Code::Internal,
        };
        if e.status.is_server_error() {
            let request_id = format!("{:016x}", rand::random::<u64>());
            tracing::warn!(%request_id, status = %e.status, error = %e.message, "gRPC request failed");
            return tonic::Status::new(
                code,
                format!(
                    "{} (request id {request_id})",
                    server_error_message(e.status)
                ),
            );
        }
        tonic::Status::new(code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            let request_id = format!("{:016x}", rand::random::<u64>());
            tracing::warn!(%request_id, status = %self.status, error = %self.message, "request failed");
            let body = crate::api::ErrorBody {
                error: server_error_message(self.status).to_string(),
                request_id: Some(request_id),
            };
            return (self.status, Json(body)).into_response();
        }
        let body = crate::api::ErrorBody {
            error: self.message,
            request_id: None,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        resp
    }
}

/// What a client is told of a 5xx: the kind of failure, never its details.
fn server_error_message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => "a service is unavailable; try again shortly",
        StatusCode::GATEWAY_TIMEOUT => "a service did not answer in time; try again",
        _ => "internal error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_the_documented_statuses() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
        ];
        for (code, http) in cases {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[tokio::test]
    async fn server_errors_carry_a_request_id_not_their_details() {
        use http_body_util::BodyExt;
        let e = ApiError::unavailable("account store unavailable: redis: 127.0.0.1:6379 refused");
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "a service is unavailable; try again shortly");
        assert_eq!(
            json["request_id"].as_str().map(str::len),
            Some(16),
            "{json}"
        );
        assert!(!String::from_utf8_lossy(&body).contains("127.0.0.1"));
        // A client error keeps its message: it says what to fix.
        let resp = ApiError::bad_request("text must not be empty").into_response();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("text must not be empty"));
    }

    #[test]
    fn messages_pass_through() {
        let e = ApiError::from(tonic::Status::invalid_argument("text must not be empty"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.message, "text must not be empty");
    }
}
