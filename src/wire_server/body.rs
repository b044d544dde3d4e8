//! Binary-protocol requests as the HTTP API's request bodies, so that
//! validation, its order and its errors are the HTTP path's (`parse_body`,
//! `validate_append`, `validate_create`).

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::render::push_json_str;
use crate::api::validate::{parse_body, prescan_member};
use starcite_wire::proto::AppendFields;

/// Room for an append body's keys, punctuation and two `u64`s.
const APPEND_FRAME_BYTES: usize = 256;

/// The parsed body of an `Append`: the value `parse_body` returns for the
/// equivalent HTTP body (`append_json`), with the same errors, without
/// rendering the body and parsing it again. A request that could exceed the
/// HTTP body limit once rendered takes the rendering path, which checks the
/// limit where the HTTP path does.
pub(super) fn append_value(f: &AppendFields) -> Result<Value, ApiError> {
    if rendered_bound(f) > starcite_wire::limits::REQUEST_BODY {
        return append_json(f).and_then(|b| {
            if b.len() > starcite_wire::limits::REQUEST_BODY {
                Err(ApiError::payload_too_large())
            } else {
                parse_body(&b)
            }
        });
    }
    let mut m = Map::new();
    let string = |s: &str| Value::String(s.to_owned());
    m.insert("type".into(), string(&f.event_type));
    if !f.payload.is_empty() {
        m.insert("payload".into(), member(&f.payload)?);
    }
    m.insert("producer_id".into(), string(&f.producer_id));
    m.insert("producer_seq".into(), Value::from(f.producer_seq));
    for (key, v) in [
        ("actor", &f.actor),
        ("source", &f.source),
        ("idempotency_key", &f.idempotency_key),
    ] {
        if let Some(v) = v {
            m.insert(key.into(), string(v));
        }
    }
    for (key, v) in [("metadata", &f.metadata), ("refs", &f.refs)] {
        if let Some(v) = v {
            m.insert(key.into(), member(v)?);
        }
    }
    if let Some(e) = f.expected_seq {
        m.insert("expected_seq".into(), Value::from(e));
    }
    Ok(Value::Object(m))
}

/// One raw JSON member: UTF-8, `parse_body`'s nesting and key checks one level
/// down, then one parse.
fn member(bytes: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::invalid_event())?;
    prescan_member(bytes)?;
    serde_json::from_str(text).map_err(|_| ApiError::invalid_event())
}

/// At least the length of `append_json(f)`: a string member escapes to at
/// most 6 bytes per byte (`\u00XX`) plus its quotes.
fn rendered_bound(f: &AppendFields) -> usize {
    let strings = [
        Some(&f.event_type),
        Some(&f.producer_id),
        f.actor.as_ref(),
        f.source.as_ref(),
        f.idempotency_key.as_ref(),
    ];
    let raws = [Some(&f.payload), f.metadata.as_ref(), f.refs.as_ref()];
    APPEND_FRAME_BYTES
        + strings
            .iter()
            .flatten()
            .map(|s| 6 * s.len() + 2)
            .sum::<usize>()
        + raws.iter().flatten().map(|r| r.len()).sum::<usize>()
}

/// A JSON document given as bytes: one complete JSON value, else `invalid_event`.
fn raw_json(bytes: &[u8]) -> Result<&str, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::invalid_event())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| ApiError::invalid_event())?;
    Ok(text)
}

/// The HTTP body equivalent of an `Append`, so validation is the HTTP path's
/// (`parse_body` + `validate_append`, same checks, same order, same errors).
fn append_json(f: &AppendFields) -> Result<Vec<u8>, ApiError> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(128 + f.payload.len());
    out.push_str("{\"type\":");
    push_json_str(&mut out, &f.event_type);
    if !f.payload.is_empty() {
        out.push_str(",\"payload\":");
        out.push_str(raw_json(&f.payload)?);
    }
    out.push_str(",\"producer_id\":");
    push_json_str(&mut out, &f.producer_id);
    let _ = write!(out, ",\"producer_seq\":{}", f.producer_seq);
    for (key, v) in [
        ("actor", &f.actor),
        ("source", &f.source),
        ("idempotency_key", &f.idempotency_key),
    ] {
        if let Some(v) = v {
            let _ = write!(out, ",\"{key}\":");
            push_json_str(&mut out, v);
        }
    }
    for (key, v) in [("metadata", &f.metadata), ("refs", &f.refs)] {
        if let Some(v) = v {
            let _ = write!(out, ",\"{key}\":");
            out.push_str(raw_json(v)?);
        }
    }
    if let Some(e) = f.expected_seq {
        let _ = write!(out, ",\"expected_seq\":{e}");
    }
    out.push('}');
    Ok(out.into_bytes())
}

/// The HTTP body equivalent of a `CreateSession`.
pub(super) fn create_json(
    id: Option<&str>,
    title: Option<&str>,
    metadata: Option<&[u8]>,
) -> Result<Vec<u8>, ApiError> {
    let mut out = String::from("{");
    let mut sep = "";
    for (key, v) in [("id", id), ("title", title)] {
        if let Some(v) = v {
            out.push_str(sep);
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            push_json_str(&mut out, v);
            sep = ",";
        }
    }
    if let Some(m) = metadata {
        out.push_str(sep);
        out.push_str("\"metadata\":");
        out.push_str(raw_json(m)?);
    }
    out.push('}');
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the wire path did before `append_value`: render, check the HTTP
    /// body limit, parse.
    fn through_http_body(f: &AppendFields) -> Result<Value, ApiError> {
        append_json(f).and_then(|b| {
            if b.len() > starcite_wire::limits::REQUEST_BODY {
                Err(ApiError::payload_too_large())
            } else {
                parse_body(&b)
            }
        })
    }

    fn base() -> AppendFields {
        AppendFields {
            event_type: "m\"x".into(),
            payload: b"{\"a\":[1,2]}".to_vec(),
            producer_id: "p".into(),
            producer_seq: 3,
            source: Some("s".into()),
            refs: Some(b" {} ".to_vec()),
            expected_seq: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn append_body_is_the_http_body() {
        let f = base();
        let v: Value = serde_json::from_slice(&append_json(&f).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"m\"x","payload":{"a":[1,2]},"producer_id":"p",
                "producer_seq":3,"source":"s","refs":{},"expected_seq":0})
        );
        // Splicing cannot smuggle fields: each part must be one JSON value.
        let evil = AppendFields {
            payload: b"{}, \"actor\": \"x\"".to_vec(),
            ..f.clone()
        };
        assert_eq!(append_json(&evil), Err(ApiError::invalid_event()));
        assert_eq!(append_value(&evil), Err(ApiError::invalid_event()));
        let bad = AppendFields {
            metadata: Some(b"{".to_vec()),
            ..f
        };
        assert_eq!(append_json(&bad), Err(ApiError::invalid_event()));
        let c = create_json(Some("x"), None, Some(b"{\"k\":1}")).unwrap();
        assert_eq!(c, b"{\"id\":\"x\",\"metadata\":{\"k\":1}}".to_vec());
        assert_eq!(create_json(None, None, None).unwrap(), b"{}".to_vec());
    }

    #[test]
    fn the_parsed_body_equals_the_rendered_and_parsed_one() {
        let limit = starcite_wire::limits::REQUEST_BODY;
        let nested = |depth: usize| {
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s.into_bytes()
        };
        let payloads: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"{}".to_vec(),
            b" {\"k\": \"\\u0000\\u2028\\\"\", \"n\": 1e400, \"big\": 123456789012345678901234567890} ".to_vec(),
            b"{\"k\":1,\"k\":2}".to_vec(),
            b"\"just a string\"".to_vec(),
            b"[1, {\"a\": null}, true]".to_vec(),
            b"{\"$serde_json::private::Number\":\"12\"}".to_vec(),
            b"{\"\\u0024serde_json::private::RawValue\":\"{}\"}".to_vec(),
            b"{\"a\":\"$serde_json::private::Number\"}".to_vec(),
            nested(crate::api::validate::MAX_BODY_NESTING - 1),
            nested(crate::api::validate::MAX_BODY_NESTING),
            nested(200),
            b"{".to_vec(),
            b"{} {}".to_vec(),
            vec![b'"', 0xff, b'"'],
            format!("{{\"x\":\"{}\"}}", "y".repeat(limit)).into_bytes(),
            format!("{{\"x\":\"{}\"}}", "y".repeat(limit - 200)).into_bytes(),
            format!("[{}]", "[".repeat(100)).into_bytes(),
        ];
        let strings = [
            "",
            "plain",
            "ctl\u{1}\n\t\"\\",
            "ünï\u{2028}😀",
            "$serde_json::private::Number",
        ];
        let mut cases = 0;
        for payload in &payloads {
            for (i, s) in strings.iter().enumerate() {
                let f = AppendFields {
                    event_type: s.to_string(),
                    payload: payload.clone(),
                    producer_id: strings[(i + 1) % strings.len()].into(),
                    producer_seq: [0, 1, u64::MAX][i % 3],
                    actor: (i % 2 == 0).then(|| s.to_string()),
                    source: (i % 3 == 0).then(|| "src".into()),
                    metadata: (i % 2 == 1).then(|| payload.clone()),
                    refs: (i == 2).then(|| b"{\"r\":[\"\\n\"]}".to_vec()),
                    idempotency_key: (i == 3).then(|| "\u{7f}k".into()),
                    expected_seq: (i % 2 == 0).then_some(i as u64),
                };
                assert_eq!(append_value(&f), through_http_body(&f), "case {f:?}");
                cases += 1;
            }
        }
        // Long strings cross the rendered-size bound and take the rendering path.
        for len in [limit / 7, limit / 6, limit - 300, limit, limit + 1] {
            let f = AppendFields {
                event_type: "\u{1}".repeat(len),
                ..base()
            };
            assert_eq!(
                append_value(&f),
                through_http_body(&f),
                "type of {len} bytes"
            );
            cases += 1;
        }
        assert_eq!(cases, payloads.len() * strings.len() + 5);
    }
}
