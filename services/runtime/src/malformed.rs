//! Requests a server cannot read get the statuses gRPC defines for them. A body that is not
//! the method's protobuf message is the caller's mistake: INVALID_ARGUMENT, where tonic
//! answers INTERNAL (its codec cannot tell a request it decodes from a response), which
//! sends callers looking for a server bug and counts as a server error in the metrics. A
//! message over the size limit is RESOURCE_EXHAUSTED (gRPC's status for it), where tonic
//! answers OUT_OF_RANGE. These answers are rewritten in the server stack only: a client
//! that cannot decode a response still sees tonic's status.

/// How prost's decode errors begin (`prost::DecodeError`'s `Display`), as tonic sends them
/// in `grpc-message`: percent-encoded, or plain.
const DECODE_ERROR: [&str; 2] = [
    "failed%20to%20decode%20Protobuf%20message",
    "failed to decode Protobuf message",
];

/// How tonic's answer to an oversized request begins, percent-encoded or plain.
const TOO_LARGE: [&str; 2] = [
    "Error,%20decoded%20message%20length%20too%20large",
    "Error, decoded message length too large",
];

/// Rewrites tonic's INTERNAL for an undecodable request into INVALID_ARGUMENT, and its
/// OUT_OF_RANGE for an oversized one into RESOURCE_EXHAUSTED. Such answers are
/// trailers-only, so the status is in the response headers.
pub fn unreadable_request_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers();
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| message.starts_with(p));
    let rewrite = match status {
        Some("13") if starts(&DECODE_ERROR) => Some("3"),
        Some("11") if starts(&TOO_LARGE) => Some("8"),
        _ => None,
    };
    if let Some(code) = rewrite {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(code));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, message: &str) -> http::Response<()> {
        http::Response::builder()
            .header("grpc-status", status)
            .header("grpc-message", message)
            .body(())
            .unwrap()
    }

    fn status(resp: &http::Response<()>) -> &str {
        resp.headers()["grpc-status"].to_str().unwrap()
    }

    #[test]
    fn an_undecodable_request_is_invalid_argument() {
        let garbage: &[u8] = &[0xff, 0xff, 0xff];
        let error = <prost_types::Timestamp as prost::Message>::decode(garbage).unwrap_err();
        let undecodable = tonic::Status::internal(error.to_string());
        let (parts, ()) = undecodable.into_http::<()>().into_parts();
        let resp = unreadable_request_status(http::Response::from_parts(parts, ()));
        assert_eq!(status(&resp), "3");
        let plain = unreadable_request_status(answer(
            "13",
            "failed to decode Protobuf message: buffer underflow",
        ));
        assert_eq!(status(&plain), "3");
    }

    #[test]
    fn an_oversized_request_is_resource_exhausted() {
        let too_large = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let (parts, ()) = too_large.into_http::<()>().into_parts();
        let resp = unreadable_request_status(http::Response::from_parts(parts, ()));
        assert_eq!(status(&resp), "8");
    }

    #[test]
    fn other_answers_are_left_alone() {
        for (code, message) in [
            ("13", "the handler broke"),
            ("14", "failed%20to%20decode%20Protobuf%20message"),
            ("11", "page_token is past the end"),
            ("0", ""),
        ] {
            assert_eq!(
                status(&unreadable_request_status(answer(code, message))),
                code
            );
        }
    }
}
