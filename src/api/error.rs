//! The API error envelope (contract §1.1, §1.2, §14.11).
//!
//! Every error the API layer produces is an [`ApiError`]: an HTTP status, a stable
//! machine-readable `code` and an informational `message`. The constructors mirror the
//! contract's catalogue row by row so status, code and text can never drift apart; the
//! wire body is always `{"error":…,"message":…}` (both keys, §14.11).

use crate::api::render::push_json_str;

/// One API failure, ready to be rendered as the standard envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// `current_version` of a 409 `expected_version_conflict`.
    pub current_version: Option<u64>,
}

/// Generates one constructor per fixed-text catalogue row, so a row is one line.
macro_rules! fixed_errors {
    ($($(#[$doc:meta])* $name:ident => $status:literal, $code:literal, $message:literal;)*) => {
        impl ApiError {
            $(
                $(#[$doc])*
                pub fn $name() -> Self {
                    Self::new($status, $code, $message)
                }
            )*
        }
    };
}

fixed_errors! {
    /// 401: any authentication failure (the HTTP layer adds `WWW-Authenticate`, §2.5).
    unauthorized => 401, "unauthorized", "Unauthorized";
    /// 403: defensive list-path failure; not normally reachable.
    forbidden => 403, "forbidden", "Forbidden";
    /// 403: the token lacks the scope the operation needs.
    forbidden_scope => 403, "forbidden_scope", "Token scope does not allow this operation";
    /// 403: the token is locked to another session.
    forbidden_session => 403, "forbidden_session", "Token is not allowed to access this session";
    /// 403: the token's tenant is not the session's tenant.
    forbidden_tenant => 403, "forbidden_tenant", "Token tenant does not match session tenant";
    /// 404: the session does not exist.
    session_not_found => 404, "session_not_found", "Session was not found";
    /// 409: create with an id that already exists (§14.20: clients rely on this exact code).
    session_exists => 409, "session_exists", "Session already exists";
    /// 409: same `(producer_id, producer_seq)` as a remembered append, different content.
    producer_replay_conflict => 409, "producer_replay_conflict",
        "Producer sequence was already used with different event content";
    /// 429: the hot tier is full because archiving is behind (§14.10).
    event_store_backpressure => 429, "event_store_backpressure",
        "Node is backpressuring writes due to event-store capacity";
    /// 400: most body-field failures, and malformed JSON (§14.11).
    invalid_event => 400, "invalid_event", "Invalid event payload";
    /// 400: `metadata` not an object, or a bad nested list filter.
    invalid_metadata => 400, "invalid_metadata", "Invalid metadata payload";
    /// 400: append `refs` present but not an object.
    invalid_refs => 400, "invalid_refs", "Invalid refs payload";
    /// 400: bad tail or list `cursor`.
    invalid_cursor => 400, "invalid_cursor", "Invalid cursor value";
    /// 400: tail `batch_size` outside 1..=1000 or unparsable.
    invalid_tail_batch_size => 400, "invalid_tail_batch_size", "Invalid tail batch size value";
    /// 400: list `limit` outside 1..=1000 or unparsable.
    invalid_limit => 400, "invalid_limit", "Invalid limit value";
    /// 400: defensive (list params not a map); not normally reachable.
    invalid_list_query => 400, "invalid_list_query", "Invalid list query";
    /// 400: tail request without `Upgrade: websocket`.
    invalid_websocket_upgrade => 400, "invalid_websocket_upgrade", "WebSocket upgrade required";
    /// 400: defensive create-path failure; not normally reachable.
    invalid_session => 400, "invalid_session", "Invalid session payload";
    /// 400: defensive; not normally reachable.
    invalid_session_id => 400, "invalid_session_id", "Invalid session id";
    /// 400: operator helpers only; never on the public API.
    invalid_write_node => 400, "invalid_write_node", "Invalid write node";
    /// 400: operator helpers only; never on the public API.
    invalid_group_id => 400, "invalid_group_id", "Invalid write group id";
    /// 503: a consensus command timed out on the local path.
    raft_timeout => 503, "raft_timeout", "Cluster request timed out";
    /// 503: every candidate replica failed or none exists.
    raft_unavailable => 503, "raft_unavailable", "No available replicas";
    /// 503: the session catalog / archive could not be read.
    archive_read_unavailable => 503, "archive_read_unavailable", "Archive read unavailable";
    /// 503: an ordered replay found a gap (only inside tail in practice).
    event_gap_detected => 503, "event_gap_detected", "Ordered replay gap detected";
    /// 500: any other failure.
    internal_error => 500, "internal_error", "Internal server error";
    /// 404: unknown method/path (§14.11: our envelope, with a message).
    not_found => 404, "not_found", "Not found";
    /// 413: request body over the limit (§14.11).
    payload_too_large => 413, "payload_too_large", "Payload too large";
    /// 406: `Accept` excludes JSON on a `/v1` route (§1, §14.11).
    not_acceptable => 406, "not_acceptable", "Not acceptable";
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            current_version: None,
        }
    }

    /// 409: PATCH `expected_version` differs from the session's `version`.
    pub fn expected_version_conflict(expected: u64, current: u64) -> Self {
        Self {
            current_version: Some(current),
            ..Self::new(
                409,
                "expected_version_conflict",
                format!("Expected version {expected}, current version is {current}"),
            )
        }
    }

    /// 409: `expected_seq` differs from the session's current `last_seq` (§6.3).
    pub fn expected_seq_conflict(expected: u64, current: u64) -> Self {
        Self::new(
            409,
            "expected_seq_conflict",
            format!("Expected seq {expected}, current seq is {current}"),
        )
    }

    /// 409: `producer_seq` is neither the next value nor a remembered one (§6.2).
    pub fn producer_seq_conflict(producer_id: &str, expected: u64, got: u64) -> Self {
        Self::new(
            409,
            "producer_seq_conflict",
            format!("Producer {producer_id} expected seq {expected}, got {got}"),
        )
    }

    /// The wire body: `{"error":<code>,"message":<message>}`, JSON-escaped.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = String::with_capacity(32 + self.code.len() + self.message.len());
        out.push_str("{\"error\":");
        push_json_str(&mut out, self.code);
        out.push_str(",\"message\":");
        push_json_str(&mut out, &self.message);
        if let Some(v) = self.current_version {
            out.push_str(&format!(",\"current_version\":{v}"));
        }
        out.push('}');
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// (constructor result, status, code, message) for every fixed-text row.
    fn catalogue() -> Vec<(ApiError, u16, &'static str, &'static str)> {
        vec![
            (
                ApiError::unauthorized(),
                401,
                "unauthorized",
                "Unauthorized",
            ),
            (ApiError::forbidden(), 403, "forbidden", "Forbidden"),
            (
                ApiError::forbidden_scope(),
                403,
                "forbidden_scope",
                "Token scope does not allow this operation",
            ),
            (
                ApiError::forbidden_session(),
                403,
                "forbidden_session",
                "Token is not allowed to access this session",
            ),
            (
                ApiError::forbidden_tenant(),
                403,
                "forbidden_tenant",
                "Token tenant does not match session tenant",
            ),
            (
                ApiError::session_not_found(),
                404,
                "session_not_found",
                "Session was not found",
            ),
            (
                ApiError::session_exists(),
                409,
                "session_exists",
                "Session already exists",
            ),
            (
                ApiError::producer_replay_conflict(),
                409,
                "producer_replay_conflict",
                "Producer sequence was already used with different event content",
            ),
            (
                ApiError::event_store_backpressure(),
                429,
                "event_store_backpressure",
                "Node is backpressuring writes due to event-store capacity",
            ),
            (
                ApiError::invalid_event(),
                400,
                "invalid_event",
                "Invalid event payload",
            ),
            (
                ApiError::invalid_metadata(),
                400,
                "invalid_metadata",
                "Invalid metadata payload",
            ),
            (
                ApiError::invalid_refs(),
                400,
                "invalid_refs",
                "Invalid refs payload",
            ),
            (
                ApiError::invalid_cursor(),
                400,
                "invalid_cursor",
                "Invalid cursor value",
            ),
            (
                ApiError::invalid_tail_batch_size(),
                400,
                "invalid_tail_batch_size",
                "Invalid tail batch size value",
            ),
            (
                ApiError::invalid_limit(),
                400,
                "invalid_limit",
                "Invalid limit value",
            ),
            (
                ApiError::invalid_list_query(),
                400,
                "invalid_list_query",
                "Invalid list query",
            ),
            (
                ApiError::invalid_websocket_upgrade(),
                400,
                "invalid_websocket_upgrade",
                "WebSocket upgrade required",
            ),
            (
                ApiError::invalid_session(),
                400,
                "invalid_session",
                "Invalid session payload",
            ),
            (
                ApiError::invalid_session_id(),
                400,
                "invalid_session_id",
                "Invalid session id",
            ),
            (
                ApiError::invalid_write_node(),
                400,
                "invalid_write_node",
                "Invalid write node",
            ),
            (
                ApiError::invalid_group_id(),
                400,
                "invalid_group_id",
                "Invalid write group id",
            ),
            (
                ApiError::raft_timeout(),
                503,
                "raft_timeout",
                "Cluster request timed out",
            ),
            (
                ApiError::raft_unavailable(),
                503,
                "raft_unavailable",
                "No available replicas",
            ),
            (
                ApiError::archive_read_unavailable(),
                503,
                "archive_read_unavailable",
                "Archive read unavailable",
            ),
            (
                ApiError::event_gap_detected(),
                503,
                "event_gap_detected",
                "Ordered replay gap detected",
            ),
            (
                ApiError::internal_error(),
                500,
                "internal_error",
                "Internal server error",
            ),
            (ApiError::not_found(), 404, "not_found", "Not found"),
            (
                ApiError::payload_too_large(),
                413,
                "payload_too_large",
                "Payload too large",
            ),
            (
                ApiError::not_acceptable(),
                406,
                "not_acceptable",
                "Not acceptable",
            ),
        ]
    }

    #[test]
    fn catalogue_rows_have_exact_status_code_and_text() {
        for (err, status, code, message) in catalogue() {
            assert_eq!(
                (err.status, err.code, err.message.as_str()),
                (status, code, message)
            );
        }
    }

    #[test]
    fn every_row_renders_both_keys() {
        for (err, _, code, message) in catalogue() {
            let v: Value = serde_json::from_slice(&err.to_json()).expect("valid JSON");
            assert_eq!(v, json!({"error": code, "message": message}));
        }
    }

    #[test]
    fn expected_seq_conflict_message() {
        let e = ApiError::expected_seq_conflict(1, 2);
        assert_eq!((e.status, e.code), (409, "expected_seq_conflict"));
        assert_eq!(e.message, "Expected seq 1, current seq is 2");
    }

    #[test]
    fn producer_seq_conflict_message() {
        let e = ApiError::producer_seq_conflict("writer-7", 4, 6);
        assert_eq!((e.status, e.code), (409, "producer_seq_conflict"));
        assert_eq!(e.message, "Producer writer-7 expected seq 4, got 6");
        assert_eq!(
            e.to_json(),
            br#"{"error":"producer_seq_conflict","message":"Producer writer-7 expected seq 4, got 6"}"#
        );
    }

    #[test]
    fn hostile_producer_id_is_escaped() {
        let e = ApiError::producer_seq_conflict("a\"b\\c\n\u{1}é", 1, 2);
        let v: Value = serde_json::from_slice(&e.to_json()).expect("valid JSON");
        assert_eq!(
            v["message"],
            json!("Producer a\"b\\c\n\u{1}é expected seq 1, got 2")
        );
        assert_eq!(v.as_object().map(|o| o.len()), Some(2));
    }
}
