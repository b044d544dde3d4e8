//! Validation of request bodies (§1, §3, §5.1, §5.3, §6.4, §6.5, §14.11, §14.16).
//!
//! Each validator checks fields in the contract's order and returns the first failure,
//! so the same bad request always gets the same error as from the reference. The
//! outputs are the normalised inputs the engine stores (enriched metadata, integer
//! `producer_seq`, canonical actor).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::api::conventions::{int_or_digits_at_least, present, present_in};
use crate::api::error::ApiError;
use crate::api::principal::{AuthContext, Principal};

pub use crate::api::fingerprint::fingerprint;
pub use crate::api::render::{
    format_micros, render_event, render_event_body, render_session_created, render_session_page,
    render_session_row, SessionView,
};

/// Deepest accepted nesting of arrays/objects in a request body (the top level is 1).
/// Checked on the raw bytes before parsing so hostile input cannot exhaust the stack.
pub const MAX_BODY_NESTING: usize = 64;

/// Parses a request body as JSON whatever its content type (§14.16). An empty body and a
/// non-object top level both mean "no fields" (§1); malformed JSON, invalid UTF-8,
/// nesting deeper than [`MAX_BODY_NESTING`] and [reserved keys](RESERVED_KEYS) are
/// `invalid_event` (§14.11).
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    prescan(bytes)?;
    let value: Value = serde_json::from_slice(bytes).map_err(|_| ApiError::invalid_event())?;
    Ok(match value {
        Value::Object(_) => value,
        _ => Value::Object(Map::new()),
    })
}

/// Object keys that serde_json (with `arbitrary_precision` and `raw_value`) does not
/// treat as keys when they come first in an object: `{"$serde_json::private::Number":
/// "12"}` parses as the number 12, and the `RawValue` one re-parses its string as JSON,
/// which would also bypass the nesting bound. A client can never mean these, so they
/// are refused instead of silently changing the document.
pub const RESERVED_KEYS: [&str; 2] = [
    "$serde_json::private::Number",
    "$serde_json::private::RawValue",
];

/// One pass over the raw bytes, before any recursive parsing: rejects bracket nesting
/// (outside string literals) deeper than the limit, and reserved first keys. Otherwise
/// malformed input is left for the parser to reject.
fn prescan(bytes: &[u8]) -> Result<(), ApiError> {
    prescan_at(bytes, 0)
}

/// [`parse_body`]'s checks for a JSON value that sits directly inside a request
/// body's object (one level deeper): the binary protocol's raw members.
pub fn prescan_member(bytes: &[u8]) -> Result<(), ApiError> {
    prescan_at(bytes, 1)
}

fn prescan_at(bytes: &[u8], start_depth: usize) -> Result<(), ApiError> {
    let mut depth = start_depth;
    let mut after_open_brace = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                if after_open_brace && is_reserved_key(&bytes[i..end]) {
                    return Err(ApiError::invalid_event());
                }
                after_open_brace = false;
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_BODY_NESTING {
                    return Err(ApiError::invalid_event());
                }
                after_open_brace = bytes[i] == b'{';
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                after_open_brace = false;
            }
            _ => after_open_brace = false,
        }
        i += 1;
    }
    Ok(())
}

/// Index just past the string literal starting at `bytes[start] == b'"'` (or the end of
/// input when it is unterminated).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Whether a complete string literal (quotes included) decodes to a reserved key.
/// Escapes are decoded, so `"\u0024serde_json…"` is caught too.
fn is_reserved_key(literal: &[u8]) -> bool {
    let is_reserved = |key: &[u8]| RESERVED_KEYS.iter().any(|r| r.as_bytes() == key);
    if literal.contains(&b'\\') {
        serde_json::from_slice::<String>(literal).is_ok_and(|k| is_reserved(k.as_bytes()))
    } else {
        literal
            .get(1..literal.len().saturating_sub(1))
            .is_some_and(is_reserved)
    }
}

/// A valid create request (§5.1). `id: None` means "generate one"
/// ([`generate_session_id`]); a locked token without `id` gets its lock as the id.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateInput {
    pub id: Option<String>,
    pub title: Option<String>,
    pub metadata: Map<String, Value>,
}

/// Create-body checks in the order of §3: `id` type → lock vs `id` → `title` →
/// `metadata`. Authentication and the `session:create` scope come before and are the
/// caller's.
pub fn validate_create(body: &Value, auth: &AuthContext) -> Result<CreateInput, ApiError> {
    let id = optional_string(body, "id", false, ApiError::invalid_event)?;
    let id = match (id, &auth.session_lock) {
        (None, Some(lock)) => Some(lock.clone()),
        (Some(id), Some(lock)) if id != *lock => return Err(ApiError::forbidden_session()),
        (id, _) => id,
    };
    let title = optional_string(body, "title", true, ApiError::invalid_event)?;
    let metadata = optional_object(body, "metadata", ApiError::invalid_metadata)?;
    Ok(CreateInput {
        id,
        title,
        metadata,
    })
}

/// A valid PATCH request (upstream `validate_update`).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchInput {
    /// `Some(t)`: replace the title with `t` (`None` clears it).
    pub title: Option<Option<String>>,
    /// Merged one level into the current metadata.
    pub metadata: Option<Map<String, Value>>,
    pub expected_version: Option<u64>,
}

/// PATCH-body checks in upstream's order: neither `title` nor `metadata` →
/// `invalid_session`; `title` not a string or null → `invalid_session`;
/// `metadata` not an object → `invalid_metadata`; only `"metadata":{}` →
/// `invalid_session`; `expected_version` not a positive integer (or its
/// digits) → `invalid_session`.
pub fn validate_patch(body: &Value) -> Result<PatchInput, ApiError> {
    let title = body.get("title");
    let metadata = body.get("metadata");
    if title.is_none() && metadata.is_none() {
        return Err(ApiError::invalid_session());
    }
    let title = match title {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(t)) => Some(Some(t.clone())),
        Some(_) => return Err(ApiError::invalid_session()),
    };
    let metadata = match metadata {
        None => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::invalid_metadata()),
    };
    if title.is_none() && metadata.as_ref().is_some_and(Map::is_empty) {
        return Err(ApiError::invalid_session());
    }
    let expected_version = match body.get("expected_version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            crate::api::conventions::int_or_digits_at_least(v, 1)
                .ok_or_else(ApiError::invalid_session)?,
        ),
    };
    Ok(PatchInput {
        title,
        metadata,
        expected_version,
    })
}

/// Random bytes in a generated session id (16 base64 characters).
const SESSION_ID_RANDOM_BYTES: usize = 12;

/// A fresh session id: `ses_` + unpadded URL-safe base64 of 12 random bytes.
pub fn generate_session_id() -> String {
    session_id_from_bytes(&rand::random::<[u8; SESSION_ID_RANDOM_BYTES]>())
}

/// The deterministic half of [`generate_session_id`], for simulations and tests that
/// supply their own randomness.
pub fn session_id_from_bytes(bytes: &[u8; SESSION_ID_RANDOM_BYTES]) -> String {
    format!("ses_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A valid append request, normalised for fingerprinting and storage.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendInput {
    pub event_type: String,
    /// Always a JSON object.
    pub payload: Value,
    pub producer_id: String,
    pub producer_seq: u64,
    /// The principal's canonical actor, whatever the client sent (§6.4).
    pub actor: String,
    pub source: Option<String>,
    /// Client metadata with `starcite_principal` set (§6.5).
    pub metadata: Map<String, Value>,
    /// Stored as sent (digit strings stay strings).
    pub refs: Map<String, Value>,
    pub idempotency_key: Option<String>,
    pub expected_seq: Option<u64>,
}

/// Append-body checks in the table order of §5.3. The auth, lock, session and tenant
/// checks of §3 come before and are the caller's.
pub fn validate_append(body: &Value, auth: &AuthContext) -> Result<AppendInput, ApiError> {
    let event_type = required_string(body, "type")?;
    let payload = match present(body, "payload") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => return Err(ApiError::invalid_event()),
    };
    let producer_id = required_string(body, "producer_id")?;
    let producer_seq = present(body, "producer_seq")
        .and_then(|v| int_or_digits_at_least(v, 1))
        .ok_or_else(ApiError::invalid_event)?;
    let actor = checked_actor(body, &auth.principal)?;
    let source = optional_string(body, "source", false, ApiError::invalid_event)?;
    let metadata = optional_object(body, "metadata", ApiError::invalid_metadata)?;
    let refs = optional_object(body, "refs", ApiError::invalid_refs)?;
    check_refs(&refs)?;
    let idempotency_key = optional_string(body, "idempotency_key", false, ApiError::invalid_event)?;
    let expected_seq = match present(body, "expected_seq") {
        None => None,
        Some(v) => Some(int_or_digits_at_least(v, 0).ok_or_else(ApiError::invalid_event)?),
    };
    Ok(AppendInput {
        event_type,
        payload,
        producer_id,
        producer_seq,
        actor,
        source,
        metadata: enrich_metadata(metadata, &auth.principal),
        refs,
        idempotency_key,
        expected_seq,
    })
}

/// `actor` may be sent, but only as exactly the principal's canonical actor (§6.4).
fn checked_actor(body: &Value, principal: &Principal) -> Result<String, ApiError> {
    let actor = principal.actor();
    match present(body, "actor") {
        None => Ok(actor),
        Some(Value::String(sent)) if *sent == actor => Ok(actor),
        Some(_) => Err(ApiError::invalid_event()),
    }
}

/// Known `refs` members must be well-formed; other members are kept untouched.
fn check_refs(refs: &Map<String, Value>) -> Result<(), ApiError> {
    for key in ["to_seq", "step"] {
        if let Some(v) = present_in(refs, key) {
            int_or_digits_at_least(v, 0).ok_or_else(ApiError::invalid_event)?;
        }
    }
    for key in ["request_id", "sequence_id"] {
        if present_in(refs, key).is_some_and(|v| !v.is_string()) {
            return Err(ApiError::invalid_event());
        }
    }
    Ok(())
}

/// Sets `metadata.starcite_principal` (§6.5): the four server keys overwrite the
/// client's, other client keys in a client object survive, a non-object is replaced.
fn enrich_metadata(mut metadata: Map<String, Value>, principal: &Principal) -> Map<String, Value> {
    let slot = metadata.entry("starcite_principal").or_insert(Value::Null);
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(sp) = slot {
        sp.insert(
            "tenant_id".into(),
            Value::String(principal.tenant_id.clone()),
        );
        sp.insert("actor".into(), Value::String(principal.actor()));
        sp.insert(
            "principal_type".into(),
            Value::String(principal.kind.as_str().into()),
        );
        sp.insert("principal_id".into(), Value::String(principal.id.clone()));
    }
    metadata
}

/// A required non-empty string; anything else is `invalid_event`.
fn required_string(body: &Value, key: &str) -> Result<String, ApiError> {
    match present(body, key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::invalid_event()),
    }
}

/// An optional string (absent → `None`); `allow_empty` decides whether `""` is valid.
fn optional_string(
    body: &Value,
    key: &str,
    allow_empty: bool,
    error: fn() -> ApiError,
) -> Result<Option<String>, ApiError> {
    match present(body, key) {
        None => Ok(None),
        Some(Value::String(s)) if allow_empty || !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(error()),
    }
}

/// An optional object (absent → `{}`).
fn optional_object(
    body: &Value,
    key: &str,
    error: fn() -> ApiError,
) -> Result<Map<String, Value>, ApiError> {
    match present(body, key) {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::principal::PrincipalType;
    use serde_json::json;

    fn jwt(lock: Option<&str>) -> AuthContext {
        AuthContext {
            principal: Principal {
                tenant_id: "acme".into(),
                id: "u-42".into(),
                kind: PrincipalType::User,
            },
            session_lock: lock.map(str::to_string),
            scopes: vec!["session:create".into(), "session:append".into()],
            none_mode: false,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// `base` with `extra`'s top-level members added or replaced.
    fn with(base: Value, extra: Value) -> Value {
        let mut m = obj(base);
        m.extend(obj(extra));
        Value::Object(m)
    }

    // ---- parse_body -------------------------------------------------------------

    #[test]
    fn parse_body_cases() {
        let ok: Vec<(&[u8], Value)> = vec![
            (b"", json!({})),
            (br#"{"a":1}"#, json!({"a": 1})),
            (
                b" {\"a\" : [1, {\"b\": null}]}\n",
                json!({"a": [1, {"b": null}]}),
            ),
            (b"[1,2]", json!({})),
            (b"\"str\"", json!({})),
            (b"42", json!({})),
            (b"null", json!({})),
        ];
        for (bytes, want) in ok {
            assert_eq!(
                parse_body(bytes),
                Ok(want),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let bad: Vec<&[u8]> = vec![
            b" ",
            b"{",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\":1} x",
            b"{'a':1}",
            b"\xef\xbb\xbf{}",
            b"{\"a\":\"\xff\"}",
            b"{\"\xc3\":1}",
            b"\xff",
        ];
        for bytes in bad {
            assert_eq!(
                parse_body(bytes),
                Err(ApiError::invalid_event()),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn nesting_limit_is_exact() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n - 1), "]".repeat(n - 1));
        let at_limit = format!("{{\"a\":{}}}", nest(MAX_BODY_NESTING));
        assert!(parse_body(at_limit.as_bytes()).is_ok());
        let over = format!("{{\"a\":{}}}", nest(MAX_BODY_NESTING + 1));
        assert_eq!(parse_body(over.as_bytes()), Err(ApiError::invalid_event()));
    }

    #[test]
    fn reserved_first_keys_are_refused() {
        let bad = [
            r#"{"$serde_json::private::Number":"12"}"#,
            r#"{"p":{"$serde_json::private::Number":"12"}}"#,
            r#"{"p":[ { "$serde_json::private::RawValue" : "[[1]]"}]}"#,
            r#"{"p":{"\u0024serde_json::private::Number":"12"}}"#,
            r#"{"p":{"$serde_json::private::Raw\u0056alue":"1"}}"#,
        ];
        for body in bad {
            assert_eq!(
                parse_body(body.as_bytes()),
                Err(ApiError::invalid_event()),
                "{body}"
            );
        }
        // Not a first key, or not a key at all: parsed as written.
        let fine = [
            (
                r#"{"p":{"a":1,"$serde_json::private::Number":"12"}}"#,
                json!({"p": {"a": 1, "$serde_json::private::Number": "12"}}),
            ),
            (
                r#"{"p":"$serde_json::private::Number"}"#,
                json!({"p": "$serde_json::private::Number"}),
            ),
            (
                r#"{"p":["$serde_json::private::RawValue"]}"#,
                json!({"p": ["$serde_json::private::RawValue"]}),
            ),
            (
                r#"{"p":{"$serde_json::private::Numbers":"12"}}"#,
                json!({"p": {"$serde_json::private::Numbers": "12"}}),
            ),
        ];
        for (body, want) in fine {
            assert_eq!(parse_body(body.as_bytes()), Ok(want), "{body}");
        }
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let body = format!(r#"{{"a":"{}","b":"\"[{{\\"}}"#, "[{".repeat(1000));
        assert!(parse_body(body.as_bytes()).is_ok(), "{body}");
    }

    #[test]
    fn hostile_nesting_is_rejected_without_stack_overflow() {
        for open in [b'[', b'{'] {
            let bytes = vec![open; 100_000];
            assert_eq!(parse_body(&bytes), Err(ApiError::invalid_event()));
        }
        let mut mixed = b"{\"a\":".to_vec();
        mixed.extend(b"[{\"k\":".repeat(50_000));
        assert_eq!(parse_body(&mixed), Err(ApiError::invalid_event()));
    }

    // ---- create -----------------------------------------------------------------

    #[test]
    fn create_defaults() {
        let want = CreateInput {
            id: None,
            title: None,
            metadata: Map::new(),
        };
        assert_eq!(validate_create(&json!({}), &jwt(None)), Ok(want.clone()));
        let nulls = json!({"id": null, "title": null, "metadata": null});
        assert_eq!(validate_create(&nulls, &jwt(None)), Ok(want));
    }

    #[test]
    fn create_field_rules() {
        let table: Vec<(Value, Result<CreateInput, ApiError>)> = vec![
            (
                json!({"id": "s1", "title": "", "metadata": {"tenant_id": "beta"}, "tenant_id": "x"}),
                Ok(CreateInput {
                    id: Some("s1".into()),
                    title: Some(String::new()),
                    metadata: obj(json!({"tenant_id": "beta"})),
                }),
            ),
            (
                json!({"id": " "}),
                Ok(CreateInput {
                    id: Some(" ".into()),
                    title: None,
                    metadata: Map::new(),
                }),
            ),
            (json!({"id": ""}), Err(ApiError::invalid_event())),
            (json!({"id": 7}), Err(ApiError::invalid_event())),
            (json!({"id": ["s1"]}), Err(ApiError::invalid_event())),
            (json!({"title": 1}), Err(ApiError::invalid_event())),
            (json!({"title": false}), Err(ApiError::invalid_event())),
            (json!({"metadata": []}), Err(ApiError::invalid_metadata())),
            (json!({"metadata": "x"}), Err(ApiError::invalid_metadata())),
        ];
        for (body, want) in table {
            assert_eq!(validate_create(&body, &jwt(None)), want, "{body}");
        }
    }

    #[test]
    fn create_session_lock() {
        let locked = jwt(Some("S"));
        assert_eq!(
            validate_create(&json!({}), &locked).map(|c| c.id),
            Ok(Some("S".into()))
        );
        assert_eq!(
            validate_create(&json!({"id": "S"}), &locked).map(|c| c.id),
            Ok(Some("S".into()))
        );
        assert_eq!(
            validate_create(&json!({"id": "T"}), &locked),
            Err(ApiError::forbidden_session())
        );
        assert_eq!(
            validate_create(&json!({"id": "T"}), &AuthContext::none()).map(|c| c.id),
            Ok(Some("T".into()))
        );
    }

    #[test]
    fn create_check_order() {
        let locked = jwt(Some("S"));
        let all_bad = json!({"id": 1, "title": 1, "metadata": 1});
        assert_eq!(
            validate_create(&all_bad, &locked),
            Err(ApiError::invalid_event())
        );
        let wrong_id = json!({"id": "T", "title": 1, "metadata": 1});
        assert_eq!(
            validate_create(&wrong_id, &locked),
            Err(ApiError::forbidden_session())
        );
        let bad_title = json!({"title": 1, "metadata": 1});
        assert_eq!(
            validate_create(&bad_title, &locked),
            Err(ApiError::invalid_event())
        );
        assert_eq!(
            validate_create(&json!({"metadata": 1}), &locked),
            Err(ApiError::invalid_metadata())
        );
    }

    #[test]
    fn generated_session_ids() {
        let id = generate_session_id();
        assert_eq!(id.len(), 20, "{id}");
        assert!(id.starts_with("ses_"));
        assert!(
            id[4..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id}"
        );
        assert_ne!(generate_session_id(), id);
        assert_eq!(session_id_from_bytes(&[0xff; 12]), "ses_________________");
        assert_eq!(session_id_from_bytes(&[0; 12]), "ses_AAAAAAAAAAAAAAAA");
        assert_eq!(session_id_from_bytes(&[0xfb; 12]), "ses_-_v7-_v7-_v7-_v7");
    }

    // ---- append -----------------------------------------------------------------

    fn minimal() -> Value {
        json!({"type": "note", "payload": {"x": 1}, "producer_id": "w", "producer_seq": 1})
    }

    fn append(extra: Value) -> Result<AppendInput, ApiError> {
        validate_append(&with(minimal(), extra), &jwt(None))
    }

    fn principal_meta() -> Value {
        json!({"tenant_id": "acme", "actor": "user:u-42", "principal_type": "user", "principal_id": "u-42"})
    }

    #[test]
    fn append_minimal_normalises() {
        let got = append(json!({}));
        let want = AppendInput {
            event_type: "note".into(),
            payload: json!({"x": 1}),
            producer_id: "w".into(),
            producer_seq: 1,
            actor: "user:u-42".into(),
            source: None,
            metadata: obj(json!({"starcite_principal": principal_meta()})),
            refs: Map::new(),
            idempotency_key: None,
            expected_seq: None,
        };
        assert_eq!(got, Ok(want));
    }

    #[test]
    fn append_required_fields() {
        let invalid = Err(ApiError::invalid_event());
        for key in ["type", "payload", "producer_id", "producer_seq"] {
            let mut body = obj(minimal());
            body.remove(key);
            assert_eq!(
                validate_append(&Value::Object(body), &jwt(None)),
                invalid,
                "missing {key}"
            );
            assert_eq!(append(json!({ key: null })), invalid, "null {key}");
        }
    }

    #[test]
    fn append_field_rules() {
        let ev = || Err(ApiError::invalid_event());
        let table: Vec<(Value, Result<(), ApiError>)> = vec![
            (json!({"type": ""}), ev()),
            (json!({"type": 1}), ev()),
            (json!({"type": " "}), Ok(())),
            (json!({"payload": []}), ev()),
            (json!({"payload": "x"}), ev()),
            (json!({"payload": {}}), Ok(())),
            (json!({"producer_id": ""}), ev()),
            (json!({"producer_id": 5}), ev()),
            (json!({"producer_seq": 0}), ev()),
            (json!({"producer_seq": "0"}), ev()),
            (json!({"producer_seq": -1}), ev()),
            (json!({"producer_seq": 1.0}), ev()),
            (json!({"producer_seq": "1.0"}), ev()),
            (json!({"producer_seq": ""}), ev()),
            (json!({"producer_seq": " 7"}), ev()),
            // Beyond u64 is still int-or-digits (only the lower bound applies);
            // it saturates and can only ever conflict.
            (json!({"producer_seq": "18446744073709551616"}), Ok(())),
            (json!({"producer_seq": "9".repeat(500)}), Ok(())),
            (json!({"producer_seq": true}), ev()),
            (json!({"actor": "user:u-42"}), Ok(())),
            (json!({"actor": "user:u-43"}), ev()),
            (json!({"actor": ""}), ev()),
            (json!({"actor": 1}), ev()),
            (json!({"source": "web"}), Ok(())),
            (json!({"source": ""}), ev()),
            (json!({"source": 1}), ev()),
            (json!({"metadata": {}}), Ok(())),
            (json!({"metadata": []}), Err(ApiError::invalid_metadata())),
            (json!({"metadata": "x"}), Err(ApiError::invalid_metadata())),
            (json!({"refs": {"other": [1]}}), Ok(())),
            (json!({"refs": []}), Err(ApiError::invalid_refs())),
            (json!({"refs": "x"}), Err(ApiError::invalid_refs())),
            (json!({"refs": {"to_seq": 0, "step": "+3"}}), Ok(())),
            (json!({"refs": {"to_seq": null, "step": null}}), Ok(())),
            (json!({"refs": {"to_seq": -1}}), ev()),
            (json!({"refs": {"to_seq": 1.5}}), ev()),
            (json!({"refs": {"to_seq": "18446744073709551616"}}), Ok(())),
            (json!({"refs": {"step": "x"}}), ev()),
            (
                json!({"refs": {"request_id": "", "sequence_id": ""}}),
                Ok(()),
            ),
            (json!({"refs": {"request_id": 1}}), ev()),
            (json!({"refs": {"sequence_id": {}}}), ev()),
            (json!({"idempotency_key": "k"}), Ok(())),
            (json!({"idempotency_key": ""}), ev()),
            (json!({"idempotency_key": 1}), ev()),
            (json!({"expected_seq": 0}), Ok(())),
            (json!({"expected_seq": "007"}), Ok(())),
            (json!({"expected_seq": -1}), ev()),
            (json!({"expected_seq": "x"}), ev()),
            (json!({"expected_seq": 2.0}), ev()),
            (json!({"unknown": {"anything": 1}}), Ok(())),
        ];
        for (extra, want) in table {
            assert_eq!(append(extra.clone()).map(|_| ()), want, "{extra}");
        }
    }

    #[test]
    fn append_normalises_numbers_and_keeps_refs_as_sent() {
        let got = append(json!({
            "producer_seq": "+0042",
            "expected_seq": "7",
            "refs": {"to_seq": "5", "step": 2, "x": "y"},
        }));
        let got = got.expect("valid");
        assert_eq!(got.producer_seq, 42);
        assert_eq!(got.expected_seq, Some(7));
        assert_eq!(got.refs, obj(json!({"to_seq": "5", "step": 2, "x": "y"})));
    }

    #[test]
    fn append_actor_in_none_mode() {
        let body = with(minimal(), json!({"actor": "service:service"}));
        let got = validate_append(&body, &AuthContext::none()).map(|a| a.actor);
        assert_eq!(got, Ok("service:service".into()));
        let alias = with(minimal(), json!({"actor": "svc:service"}));
        assert_eq!(
            validate_append(&alias, &AuthContext::none()),
            Err(ApiError::invalid_event())
        );
    }

    #[test]
    fn append_enriches_metadata() {
        let table: Vec<(Value, Value)> = vec![
            (json!({}), json!({"starcite_principal": principal_meta()})),
            (
                json!({"k": 1}),
                json!({"k": 1, "starcite_principal": principal_meta()}),
            ),
            (
                json!({"starcite_principal": "x", "k": 1}),
                json!({"starcite_principal": principal_meta(), "k": 1}),
            ),
            (
                json!({"starcite_principal": null}),
                json!({"starcite_principal": principal_meta()}),
            ),
            (
                json!({"starcite_principal": {"actor": "forged", "extra": true}}),
                json!({"starcite_principal": {
                    "actor": "user:u-42", "extra": true, "tenant_id": "acme",
                    "principal_type": "user", "principal_id": "u-42"
                }}),
            ),
        ];
        for (metadata, want) in table {
            let got = append(json!({ "metadata": metadata.clone() })).map(|a| a.metadata);
            assert_eq!(got, Ok(obj(want)), "{metadata}");
        }
    }

    #[test]
    fn append_check_order_follows_the_table() {
        // Only the order between different error codes is observable.
        let table: Vec<(Value, ApiError)> = vec![
            (
                json!({"type": 1, "payload": 1, "producer_id": 1, "producer_seq": 0, "actor": "x",
                       "source": "", "metadata": 1, "refs": 1, "idempotency_key": "", "expected_seq": -1}),
                ApiError::invalid_event(),
            ),
            (
                json!({"producer_seq": 0, "metadata": 1}),
                ApiError::invalid_event(),
            ),
            (
                json!({"actor": "x", "metadata": 1, "refs": 1}),
                ApiError::invalid_event(),
            ),
            (
                json!({"source": "", "metadata": 1, "refs": 1}),
                ApiError::invalid_event(),
            ),
            (
                json!({"metadata": 1, "refs": 1}),
                ApiError::invalid_metadata(),
            ),
            (
                json!({"metadata": 1, "refs": {"to_seq": -1}}),
                ApiError::invalid_metadata(),
            ),
            (
                json!({"metadata": 1, "idempotency_key": ""}),
                ApiError::invalid_metadata(),
            ),
            (
                json!({"metadata": 1, "expected_seq": -1}),
                ApiError::invalid_metadata(),
            ),
            (
                json!({"refs": 1, "idempotency_key": "", "expected_seq": -1}),
                ApiError::invalid_refs(),
            ),
            (
                json!({"refs": {"step": "x"}, "expected_seq": 0}),
                ApiError::invalid_event(),
            ),
        ];
        for (extra, want) in table {
            assert_eq!(append(extra.clone()), Err(want), "{extra}");
        }
    }

    // ---- event rendering ----------------------------------------------------------

    #[test]
    fn event_body_round_trips_through_the_engine_wrapper() {
        let input = append(json!({
            "payload": {"z": 1, "a": [1.0, "é\"\n"], "big": 123456789012345678901234567890u128},
            "source": "web",
            "refs": {"to_seq": "5"},
            "idempotency_key": "k-1",
        }))
        .expect("valid");
        let body = render_event_body(&input, "acme");
        let frame = render_event(17, &body, 1_772_360_131_004_518);
        let v: Value = serde_json::from_str(&frame).expect("valid JSON");
        let want = json!({
            "seq": 17,
            "type": "note",
            "payload": {"z": 1, "a": [1.0, "é\"\n"], "big": 123456789012345678901234567890u128},
            "actor": "user:u-42",
            "producer_id": "w",
            "producer_seq": 1,
            "source": "web",
            "metadata": {"starcite_principal": principal_meta()},
            "refs": {"to_seq": "5"},
            "idempotency_key": "k-1",
            "tenant_id": "acme",
            "inserted_at": "2026-03-01T10:15:31.004518Z",
        });
        assert_eq!(v, want);
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "seq",
                "type",
                "payload",
                "actor",
                "producer_id",
                "producer_seq",
                "source",
                "metadata",
                "refs",
                "idempotency_key",
                "tenant_id",
                "inserted_at"
            ]
        );
        assert!(
            frame.contains(
                r#""payload":{"z":1,"a":[1.0,"é\"\n"],"big":123456789012345678901234567890}"#
            ),
            "{frame}"
        );
    }

    #[test]
    fn event_body_omits_absent_optionals() {
        let input = append(json!({})).expect("valid");
        let body = render_event_body(&input, "acme");
        assert!(
            !body.contains("source") && !body.contains("idempotency_key"),
            "{body}"
        );
        let v: Value = serde_json::from_str(&render_event(1, &body, 0)).expect("valid JSON");
        assert_eq!(v["refs"], json!({}));
        assert_eq!(v["inserted_at"], json!("1970-01-01T00:00:00.000000Z"));
    }
}
