//! JSON rendering of API responses and stored events (§4, §5.3, §14.3, §14.18).
//!
//! Bodies are written directly into a `String` with a fixed member order, so the bytes
//! we store and stream are deterministic and no intermediate `Value` is built.
//! Timestamps are Unix microseconds rendered as RFC 3339 UTC with exactly six
//! fractional digits and `Z` (§14.3), whatever tier they come from.

use std::fmt::Write;

use serde_json::{Map, Value};

use crate::api::principal::Principal;
use crate::api::validate::AppendInput;

/// Appends `s` as a JSON string literal (quotes, `\"`, `\\`, control characters escaped).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `v` as compact JSON, members in stored order, numbers with their digits
/// kept (exponents are normalised by serde_json, e.g. `1E5` → `1e+5`).
pub fn push_json_value(out: &mut String, v: &Value) {
    // Writing a `Value` into a `String` cannot fail: `Value` keys are strings and
    // `String` never refuses bytes.
    let _ = write!(out, "{v}");
}

/// Appends an object given as a `Map` without cloning it into a `Value`.
pub fn push_json_map(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, k);
        out.push(':');
        push_json_value(out, v);
    }
    out.push('}');
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// Unix microseconds → `YYYY-MM-DDTHH:MM:SS.ffffffZ` (one implementation, shared
/// with the engine that renders `inserted_at` at apply time).
pub use starcite_shards::time::format_micros;

/// The stored event's members without braces, `seq` and `inserted_at` (the engine adds
/// those at apply time, see [`render_event`]). Absent `source` and `idempotency_key` are
/// omitted rather than `null` (§14.18); `tenant_id` is always present (§14.3).
pub fn render_event_body(input: &AppendInput, tenant_id: &str) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("\"type\":");
    push_json_str(&mut out, &input.event_type);
    out.push_str(",\"payload\":");
    push_json_value(&mut out, &input.payload);
    out.push_str(",\"actor\":");
    push_json_str(&mut out, &input.actor);
    out.push_str(",\"producer_id\":");
    push_json_str(&mut out, &input.producer_id);
    let _ = write!(out, ",\"producer_seq\":{}", input.producer_seq);
    if let Some(source) = &input.source {
        out.push_str(",\"source\":");
        push_json_str(&mut out, source);
    }
    out.push_str(",\"metadata\":");
    push_json_map(&mut out, &input.metadata);
    out.push_str(",\"refs\":");
    push_json_map(&mut out, &input.refs);
    if let Some(key) = &input.idempotency_key {
        out.push_str(",\"idempotency_key\":");
        push_json_str(&mut out, key);
    }
    out.push_str(",\"tenant_id\":");
    push_json_str(&mut out, tenant_id);
    out
}

/// A complete event frame: `{"seq":N,` + body + `,"inserted_at":"…"}`.
pub fn render_event(seq: u64, body: &str, inserted_at_us: i64) -> String {
    let mut out = String::with_capacity(body.len() + 64);
    out.push_str("{\"seq\":");
    out.push_str(itoa::Buffer::new().format(seq));
    out.push(',');
    out.push_str(body);
    out.push_str(",\"inserted_at\":\"");
    starcite_shards::time::push_micros(&mut out, inserted_at_us);
    out.push_str("\"}");
    out
}

/// What the session responses need to know about one session.
#[derive(Debug, Clone, Copy)]
pub struct SessionView<'a> {
    pub id: &'a str,
    pub title: Option<&'a str>,
    pub tenant_id: &'a str,
    pub creator: &'a Principal,
    pub metadata: &'a Map<String, Value>,
    pub last_seq: u64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    /// Catalog version (1 at create, +1 per PATCH).
    pub version: u64,
    pub archived: bool,
}

/// `POST /v1/sessions` 201 body (§4.1): no top-level `tenant_id`.
pub fn render_session_created(s: &SessionView<'_>) -> String {
    render_session(s, false)
}

/// One `GET /v1/sessions` row (§4.2 plus `last_seq`/`updated_at`, §14.8).
pub fn render_session_row(s: &SessionView<'_>) -> String {
    render_session(s, true)
}

fn render_session(s: &SessionView<'_>, with_tenant: bool) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"id\":");
    push_json_str(&mut out, s.id);
    out.push_str(",\"title\":");
    push_opt_str(&mut out, s.title);
    if with_tenant {
        out.push_str(",\"tenant_id\":");
        push_json_str(&mut out, s.tenant_id);
    }
    out.push_str(",\"creator_principal\":");
    push_principal(&mut out, s.creator);
    out.push_str(",\"metadata\":");
    push_json_map(&mut out, s.metadata);
    let _ = write!(out, ",\"last_seq\":{},\"created_at\":", s.last_seq);
    push_json_str(&mut out, &format_micros(s.created_at_us));
    out.push_str(",\"updated_at\":");
    push_json_str(&mut out, &format_micros(s.updated_at_us));
    let _ = write!(
        out,
        ",\"version\":{},\"archived\":{}}}",
        s.version, s.archived
    );
    out
}

fn push_principal(out: &mut String, p: &Principal) {
    out.push_str("{\"tenant_id\":");
    push_json_str(out, &p.tenant_id);
    out.push_str(",\"id\":");
    push_json_str(out, &p.id);
    out.push_str(",\"type\":");
    push_json_str(out, p.kind.as_str());
    out.push('}');
}

/// `GET /v1/sessions` 200 body: `{"sessions":[…],"next_cursor":…}`.
pub fn render_session_page(rows: &[SessionView<'_>], next_cursor: Option<&str>) -> String {
    let mut out = String::from("{\"sessions\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&render_session_row(row));
    }
    out.push_str("],\"next_cursor\":");
    push_opt_str(&mut out, next_cursor);
    out.push('}');
    out
}

/// Append 201 body (§5.3), for fresh appends and dedupes alike, with the
/// current API's `cursor` (= `seq`) and `committed_cursor` (= `last_seq`:
/// an acknowledged append is committed, see docs/api.md).
pub fn render_append_result(seq: u64, last_seq: u64, deduped: bool) -> String {
    format!("{{\"seq\":{seq},\"last_seq\":{last_seq},\"deduped\":{deduped},\"cursor\":{seq},\"committed_cursor\":{last_seq}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::principal::PrincipalType;
    use serde_json::json;

    #[test]
    fn json_strings_match_serde() {
        let samples = [
            "",
            "plain",
            "q\"b\\s/",
            "\n\r\t\u{8}\u{c}",
            "\u{0}\u{1f}\u{7f}",
            "é😀",
        ];
        for s in samples {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(
                serde_json::from_str::<String>(&out).ok().as_deref(),
                Some(s)
            );
            assert_eq!(Some(out), serde_json::to_string(s).ok());
        }
    }

    #[test]
    fn format_micros_known_instants() {
        let table: [(i64, &str); 9] = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (1_709_164_800_123_456, "2024-02-29T00:00:00.123456Z"),
            (1_772_360_130_482_113, "2026-03-01T10:15:30.482113Z"),
            (4_107_542_399_999_999, "2100-02-28T23:59:59.999999Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000000Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
        ];
        for (us, want) in table {
            assert_eq!(format_micros(us), want, "{us}");
        }
    }

    #[test]
    fn format_micros_agrees_with_chrono() {
        let mut us: i64 = -62_135_596_800_000_000; // 0001-01-01
        let step = 7_777_777_777_777; // ~90 days plus odd hours/micros
        while us < 253_402_300_799_999_999 {
            let want = chrono::DateTime::from_timestamp_micros(us)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
            assert_eq!(Some(format_micros(us)), want, "{us}");
            us += step;
        }
    }

    #[test]
    fn format_micros_is_total() {
        for us in [i64::MIN, i64::MIN + 1, i64::MAX] {
            let s = format_micros(us);
            assert!(s.ends_with('Z') && s.len() > 20, "{s}");
        }
    }

    fn principal() -> Principal {
        Principal {
            tenant_id: "acme".into(),
            id: "u-42".into(),
            kind: PrincipalType::User,
        }
    }

    fn session<'a>(
        p: &'a Principal,
        m: &'a Map<String, Value>,
        title: Option<&'a str>,
    ) -> SessionView<'a> {
        SessionView {
            id: "ses_Q2x0cHZ3bXhyZ2Fq",
            title,
            tenant_id: "acme",
            creator: p,
            metadata: m,
            last_seq: 0,
            created_at_us: 1_772_360_130_482_113,
            updated_at_us: 1_772_360_130_482_113,
            version: 1,
            archived: false,
        }
    }

    #[test]
    fn created_session_shape() {
        let p = principal();
        let m = json!({"workflow": "legal"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let body = render_session_created(&session(&p, &m, Some("Contract review")));
        assert_eq!(
            body,
            concat!(
                r#"{"id":"ses_Q2x0cHZ3bXhyZ2Fq","title":"Contract review","#,
                r#""creator_principal":{"tenant_id":"acme","id":"u-42","type":"user"},"#,
                r#""metadata":{"workflow":"legal"},"last_seq":0,"#,
                r#""created_at":"2026-03-01T10:15:30.482113Z","#,
                r#""updated_at":"2026-03-01T10:15:30.482113Z","version":1,"archived":false}"#
            )
        );
    }

    #[test]
    fn list_row_and_page_shape() {
        let p = principal();
        let m = Map::new();
        let mut row = session(&p, &m, None);
        row.last_seq = 5;
        row.updated_at_us = 0;
        row.version = 3;
        row.archived = true;
        let page: Value =
            serde_json::from_str(&render_session_page(&[row], Some("ses_Q2x0cHZ3bXhyZ2Fq")))
                .expect("valid JSON");
        assert_eq!(
            page,
            json!({
                "sessions": [{
                    "id": "ses_Q2x0cHZ3bXhyZ2Fq",
                    "title": null,
                    "tenant_id": "acme",
                    "creator_principal": {"tenant_id": "acme", "id": "u-42", "type": "user"},
                    "metadata": {},
                    "last_seq": 5,
                    "created_at": "2026-03-01T10:15:30.482113Z",
                    "updated_at": "1970-01-01T00:00:00.000000Z",
                    "version": 3,
                    "archived": true
                }],
                "next_cursor": "ses_Q2x0cHZ3bXhyZ2Fq"
            })
        );
        assert_eq!(
            render_session_page(&[], None),
            r#"{"sessions":[],"next_cursor":null}"#
        );
    }

    #[test]
    fn append_result_shape() {
        assert_eq!(
            render_append_result(17, 17, false),
            r#"{"seq":17,"last_seq":17,"deduped":false,"cursor":17,"committed_cursor":17}"#
        );
        assert_eq!(
            render_append_result(1, 2, true),
            r#"{"seq":1,"last_seq":2,"deduped":true,"cursor":1,"committed_cursor":2}"#
        );
    }
}
