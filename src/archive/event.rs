//! The archived forms of events and sessions (contract §11), and their conversions
//! to and from the hot tier's stored frames.
//!
//! One event, three spellings:
//! - the **frame** kept in the hot tier and streamed by tails (decision 3:
//!   `inserted_at` RFC 3339 with `Z`, absent optionals omitted, `tenant_id` present);
//! - the **NDJSON line** of an S3/fs chunk object (§11.1: every key present, nulls for
//!   absent `source`/`idempotency_key`, naive `inserted_at` without zone);
//! - the **row** of the Postgres `events` table (§11.2).
//!
//! [`ArchiveEvent`] is the common parsed form. A frame rendered back from an
//! `ArchiveEvent` is byte-identical to the hot frame it came from (same member order,
//! same escaping), so a tail cannot tell which tier served it.

use std::fmt::Write;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime};
use serde_json::{Map, Value};

use crate::api::render::{push_json_map, push_json_str, push_json_value};
use starcite_shards::time::format_micros;

/// Why a stored event or session could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

fn unreadable(what: impl Into<String>) -> Unreadable {
    Unreadable(what.into())
}

/// One committed event, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveEvent {
    pub seq: u64,
    pub event_type: String,
    pub payload: Value,
    pub actor: String,
    pub producer_id: String,
    pub producer_seq: u64,
    pub source: Option<String>,
    pub metadata: Map<String, Value>,
    pub refs: Map<String, Value>,
    pub idempotency_key: Option<String>,
    /// Unix microseconds (leader-assigned, decision 4).
    pub inserted_at_us: i64,
}

/// A session as the archive keeps it (§11.1 session blob, §11.2 `sessions` row),
/// with its catalog state: `version` (1 at create, +1 per PATCH), `updated_at`
/// and `archived`. Records written by earlier versions lack the last three; they
/// read as version 1, `updated_at` = `created_at`, not archived.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub title: Option<String>,
    pub tenant_id: String,
    pub principal_id: String,
    pub principal_type: String,
    pub metadata: Map<String, Value>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub version: u64,
    pub archived: bool,
}

impl ArchiveEvent {
    /// Parses a hot-tier frame (`{"seq":…,"type":…,…,"inserted_at":"…Z"}`).
    pub fn from_frame(frame: &[u8]) -> Result<Self, Unreadable> {
        let obj: Map<String, Value> =
            serde_json::from_slice(frame).map_err(|e| unreadable(format!("frame: {e}")))?;
        Self::from_object(obj, false)
    }

    /// Parses one NDJSON line of a chunk object; every key of §11.1 must be present.
    pub fn from_line(line: &str) -> Result<Self, Unreadable> {
        let obj: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| unreadable(format!("line: {e}")))?;
        Self::from_object(obj, true)
    }

    fn from_object(mut obj: Map<String, Value>, strict: bool) -> Result<Self, Unreadable> {
        if strict {
            for key in LINE_KEYS {
                if !obj.contains_key(*key) {
                    return Err(unreadable(format!("line without {key:?}")));
                }
            }
        }
        let inserted_at = take_str(&mut obj, "inserted_at")?;
        Ok(ArchiveEvent {
            seq: take_u64(&mut obj, "seq")?,
            event_type: take_str(&mut obj, "type")?,
            payload: obj
                .remove("payload")
                .ok_or_else(|| unreadable("no payload"))?,
            actor: take_str(&mut obj, "actor")?,
            producer_id: take_str(&mut obj, "producer_id")?,
            producer_seq: take_u64(&mut obj, "producer_seq")?,
            source: take_opt_str(&mut obj, "source")?,
            metadata: take_object(&mut obj, "metadata")?,
            refs: take_object(&mut obj, "refs")?,
            idempotency_key: take_opt_str(&mut obj, "idempotency_key")?,
            inserted_at_us: parse_timestamp(&inserted_at)
                .ok_or_else(|| unreadable(format!("bad inserted_at {inserted_at:?}")))?,
        })
    }

    /// The hot-tier/tail frame of this event (decision 3), for `tenant_id`.
    pub fn to_frame(&self, tenant_id: &str) -> Bytes {
        Bytes::from(self.with_parts(Some(tenant_id), |p| render(p, Style::Frame)))
    }

    /// The NDJSON line of a chunk object (§11.1): every key present, `null` for an
    /// absent `source`/`idempotency_key`, `tenant_id` added as the reference does for
    /// lines written from memory, naive `inserted_at` with microseconds.
    pub fn to_line(&self, tenant_id: Option<&str>) -> String {
        self.with_parts(tenant_id, |p| render(p, Style::Line))
    }

    fn with_parts<T>(&self, tenant_id: Option<&str>, f: impl FnOnce(&Parts<'_>) -> T) -> T {
        let json = |push: &dyn Fn(&mut String)| {
            let mut out = String::new();
            push(&mut out);
            out
        };
        let payload = json(&|o| push_json_value(o, &self.payload));
        let metadata = json(&|o| push_json_map(o, &self.metadata));
        let refs = json(&|o| push_json_map(o, &self.refs));
        f(&Parts {
            seq: self.seq,
            event_type: &self.event_type,
            payload: &payload,
            actor: &self.actor,
            producer_id: &self.producer_id,
            producer_seq: self.producer_seq,
            source: self.source.as_deref(),
            metadata: &metadata,
            refs: &refs,
            idempotency_key: self.idempotency_key.as_deref(),
            tenant_id,
            inserted_at_us: self.inserted_at_us,
        })
    }
}

/// One event's members, JSON values already rendered (compact).
struct Parts<'a> {
    seq: u64,
    event_type: &'a str,
    payload: &'a str,
    actor: &'a str,
    producer_id: &'a str,
    producer_seq: u64,
    source: Option<&'a str>,
    metadata: &'a str,
    refs: &'a str,
    idempotency_key: Option<&'a str>,
    tenant_id: Option<&'a str>,
    inserted_at_us: i64,
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// Tail frame: absent optionals omitted, `inserted_at` RFC 3339 with `Z`.
    Frame,
    /// Chunk line: every key, `null` for absent optionals, naive `inserted_at`.
    Line,
}

/// The one member order every spelling shares.
fn render(p: &Parts<'_>, style: Style) -> String {
    let mut out = String::with_capacity(p.payload.len() + p.metadata.len() + 192);
    let _ = write!(out, "{{\"seq\":{},\"type\":", p.seq);
    push_json_str(&mut out, p.event_type);
    out.push_str(",\"payload\":");
    out.push_str(p.payload);
    out.push_str(",\"actor\":");
    push_json_str(&mut out, p.actor);
    out.push_str(",\"producer_id\":");
    push_json_str(&mut out, p.producer_id);
    let _ = write!(out, ",\"producer_seq\":{}", p.producer_seq);
    let optional = |out: &mut String, key: &str, v: Option<&str>| match (v, style) {
        (Some(v), _) => {
            let _ = write!(out, ",\"{key}\":");
            push_json_str(out, v);
        }
        (None, Style::Line) => {
            let _ = write!(out, ",\"{key}\":null");
        }
        (None, Style::Frame) => {}
    };
    optional(&mut out, "source", p.source);
    out.push_str(",\"metadata\":");
    out.push_str(p.metadata);
    out.push_str(",\"refs\":");
    out.push_str(p.refs);
    optional(&mut out, "idempotency_key", p.idempotency_key);
    if let Some(t) = p.tenant_id {
        out.push_str(",\"tenant_id\":");
        push_json_str(&mut out, t);
    }
    out.push_str(",\"inserted_at\":");
    let ts = match style {
        Style::Frame => format_micros(p.inserted_at_us),
        Style::Line => naive_micros(p.inserted_at_us),
    };
    push_json_str(&mut out, &ts);
    out.push('}');
    out
}

impl SessionRecord {
    /// A new session's record: version 1, `updated_at` = `created_at`, not
    /// archived.
    pub fn created(
        id: impl Into<String>,
        title: Option<String>,
        tenant_id: impl Into<String>,
        principal: (&str, &str),
        metadata: Map<String, Value>,
        created_at_us: i64,
    ) -> Self {
        SessionRecord {
            id: id.into(),
            title,
            tenant_id: tenant_id.into(),
            principal_id: principal.0.to_owned(),
            principal_type: principal.1.to_owned(),
            metadata,
            created_at_us,
            updated_at_us: created_at_us,
            version: 1,
            archived: false,
        }
    }

    /// The order of a session's catalog states: a record replaces a stored one
    /// only if its key is greater ("newer version wins"). PATCH bumps `version`;
    /// archive/unarchive keep it and move `updated_at` strictly forward (the
    /// state machine guarantees it), so later states have greater keys.
    pub fn revision(&self) -> (u64, i64) {
        (self.version, self.updated_at_us)
    }

    /// Whether this record should replace `stored` (newer wins; equal keys hold
    /// equal catalog content, so the stored one stays).
    pub fn supersedes(&self, stored: &SessionRecord) -> bool {
        self.revision() > stored.revision()
    }

    /// The session blob of §11.1: its six keys in their order, then
    /// `updated_at`, `version`, `archived`.
    pub fn to_blob(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("{\"id\":");
        push_json_str(&mut out, &self.id);
        out.push_str(",\"title\":");
        push_opt(&mut out, self.title.as_deref());
        out.push_str(",\"tenant_id\":");
        push_json_str(&mut out, &self.tenant_id);
        out.push_str(",\"creator_principal\":");
        out.push_str(&self.principal_json());
        out.push_str(",\"metadata\":");
        push_json_map(&mut out, &self.metadata);
        out.push_str(",\"created_at\":");
        push_json_str(&mut out, &format_micros(self.created_at_us));
        out.push_str(",\"updated_at\":");
        push_json_str(&mut out, &format_micros(self.updated_at_us));
        let _ = write!(
            out,
            ",\"version\":{},\"archived\":{}}}",
            self.version, self.archived
        );
        out
    }

    /// `{"tenant_id","id","type"}` of the creator.
    pub fn principal_json(&self) -> String {
        let mut out = String::from("{\"tenant_id\":");
        push_json_str(&mut out, &self.tenant_id);
        out.push_str(",\"id\":");
        push_json_str(&mut out, &self.principal_id);
        out.push_str(",\"type\":");
        push_json_str(&mut out, &self.principal_type);
        out.push('}');
        out
    }

    /// Parses a session blob. The six keys of §11.1 must be present; the catalog
    /// keys may be absent (blobs written by earlier versions): version 1,
    /// `updated_at` = `created_at`, not archived. Present, they must be well
    /// formed (`version` ≥ 1, `updated_at` a timestamp, `archived` a boolean).
    pub fn from_blob(blob: &str) -> Result<Self, Unreadable> {
        let mut obj: Map<String, Value> =
            serde_json::from_str(blob).map_err(|e| unreadable(format!("session blob: {e}")))?;
        let mut principal = take_object(&mut obj, "creator_principal")?;
        let created_at = take_str(&mut obj, "created_at")?;
        let created_at_us = parse_timestamp(&created_at)
            .ok_or_else(|| unreadable(format!("bad created_at {created_at:?}")))?;
        let updated_at_us = match obj.remove("updated_at") {
            None | Some(Value::Null) => created_at_us,
            Some(Value::String(t)) => {
                parse_timestamp(&t).ok_or_else(|| unreadable(format!("bad updated_at {t:?}")))?
            }
            Some(other) => return Err(unreadable(format!("bad updated_at {other}"))),
        };
        let version = match obj.remove("version") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|v| *v >= 1)
                .ok_or_else(|| unreadable(format!("bad version {v}")))?,
        };
        let archived = match obj.remove("archived") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(other) => return Err(unreadable(format!("bad archived {other}"))),
        };
        Ok(SessionRecord {
            id: take_str(&mut obj, "id")?,
            title: match obj.remove("title") {
                Some(Value::String(t)) => Some(t),
                Some(Value::Null) => None,
                _ => return Err(unreadable("session blob without a title key")),
            },
            tenant_id: take_str(&mut obj, "tenant_id")?,
            principal_id: take_str(&mut principal, "id")?,
            principal_type: take_str(&mut principal, "type")?,
            metadata: take_object(&mut obj, "metadata")?,
            created_at_us,
            updated_at_us,
            version,
            archived,
        })
    }
}

/// A chunk line borrowed, for the cold-read fast path: every key must be present
/// (`&RawValue` fields are required even when their JSON is `null`); unknown keys
/// (`tenant_id`) are ignored.
#[derive(serde::Deserialize)]
struct LineRef<'a> {
    seq: u64,
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    actor: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    producer_id: std::borrow::Cow<'a, str>,
    producer_seq: u64,
    #[serde(borrow)]
    source: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    metadata: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    refs: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    idempotency_key: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    inserted_at: std::borrow::Cow<'a, str>,
}

/// `null` → None, a JSON string → Some, anything else → unreadable.
fn raw_opt_str(raw: &serde_json::value::RawValue, key: &str) -> Result<Option<String>, Unreadable> {
    if raw.get() == "null" {
        return Ok(None);
    }
    serde_json::from_str::<String>(raw.get())
        .map(Some)
        .map_err(|_| unreadable(format!("{key:?} is not a string or null")))
}

fn raw_object<'a>(raw: &'a serde_json::value::RawValue, key: &str) -> Result<&'a str, Unreadable> {
    let text = raw.get();
    if text.starts_with('{') {
        Ok(text)
    } else {
        Err(unreadable(format!("{key:?} is not an object")))
    }
}

/// The tail frame of one chunk line, without building JSON trees: the same bytes
/// as `ArchiveEvent::from_line(line)?.to_frame(tenant_id)` for lines this server
/// wrote (compact JSON), and a valid frame with the same content for any other
/// valid line. Returns the seq too.
pub fn line_to_frame(line: &str, tenant_id: &str) -> Result<(u64, Bytes), Unreadable> {
    let l: LineRef<'_> =
        serde_json::from_str(line).map_err(|e| unreadable(format!("line: {e}")))?;
    let metadata = raw_object(l.metadata, "metadata")?;
    let refs = raw_object(l.refs, "refs")?;
    let source = raw_opt_str(l.source, "source")?;
    let idempotency_key = raw_opt_str(l.idempotency_key, "idempotency_key")?;
    let inserted_at_us = parse_timestamp(&l.inserted_at)
        .ok_or_else(|| unreadable(format!("bad inserted_at {:?}", l.inserted_at)))?;
    let out = render(
        &Parts {
            seq: l.seq,
            event_type: &l.event_type,
            payload: l.payload.get(),
            actor: &l.actor,
            producer_id: &l.producer_id,
            producer_seq: l.producer_seq,
            source: source.as_deref(),
            metadata,
            refs,
            idempotency_key: idempotency_key.as_deref(),
            tenant_id: Some(tenant_id),
            inserted_at_us,
        },
        Style::Frame,
    );
    Ok((l.seq, Bytes::from(out)))
}

/// A hot-tier frame borrowed, for the archiver's fast path: absent optionals
/// are omitted in frames; unknown keys (`tenant_id`) are ignored. It differs
/// from [`LineRef`] only in that `source` and `idempotency_key` may be
/// absent (a line must carry every key, `null` included).
#[derive(serde::Deserialize)]
struct FrameRef<'a> {
    seq: u64,
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    actor: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    producer_id: std::borrow::Cow<'a, str>,
    producer_seq: u64,
    #[serde(default)]
    source: Option<String>,
    #[serde(borrow)]
    metadata: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    refs: &'a serde_json::value::RawValue,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(borrow)]
    inserted_at: std::borrow::Cow<'a, str>,
}

/// The chunk line of one hot-tier frame, without building JSON trees: the
/// same bytes as `ArchiveEvent::from_frame(frame)?.to_line(tenant_id)` for
/// the frames this server renders (compact JSON). Returns the seq too.
pub fn frame_to_line(frame: &[u8], tenant_id: Option<&str>) -> Result<(u64, String), Unreadable> {
    let f: FrameRef<'_> =
        serde_json::from_slice(frame).map_err(|e| unreadable(format!("frame: {e}")))?;
    let inserted_at_us = parse_timestamp(&f.inserted_at)
        .ok_or_else(|| unreadable(format!("bad inserted_at {:?}", f.inserted_at)))?;
    let out = render(
        &Parts {
            seq: f.seq,
            event_type: &f.event_type,
            payload: f.payload.get(),
            actor: &f.actor,
            producer_id: &f.producer_id,
            producer_seq: f.producer_seq,
            source: f.source.as_deref(),
            metadata: raw_object(f.metadata, "metadata")?,
            refs: raw_object(f.refs, "refs")?,
            idempotency_key: f.idempotency_key.as_deref(),
            tenant_id,
            inserted_at_us,
        },
        Style::Line,
    );
    Ok((f.seq, out))
}

/// Keys every chunk line must carry (§11.1).
const LINE_KEYS: &[&str] = &[
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
    "inserted_at",
];

fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff` (naive, UTC, no zone suffix).
pub fn naive_micros(us: i64) -> String {
    let mut s = format_micros(us);
    s.pop();
    s
}

/// Parses RFC 3339 (any offset) or a naive ISO-8601 timestamp taken as UTC, into
/// Unix microseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

fn take_str(obj: &mut Map<String, Value>, key: &str) -> Result<String, Unreadable> {
    match obj.remove(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(unreadable(format!("{key:?} is not a string"))),
    }
}

fn take_opt_str(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, Unreadable> {
    match obj.remove(key) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        _ => Err(unreadable(format!("{key:?} is not a string or null"))),
    }
}

fn take_u64(obj: &mut Map<String, Value>, key: &str) -> Result<u64, Unreadable> {
    obj.remove(key)
        .as_ref()
        .and_then(Value::as_u64)
        .ok_or_else(|| unreadable(format!("{key:?} is not an unsigned integer")))
}

fn take_object(obj: &mut Map<String, Value>, key: &str) -> Result<Map<String, Value>, Unreadable> {
    match obj.remove(key) {
        Some(Value::Object(m)) => Ok(m),
        _ => Err(unreadable(format!("{key:?} is not an object"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ArchiveEvent {
        ArchiveEvent {
            seq: 7,
            event_type: "message".into(),
            payload: serde_json::from_str(
                r#"{"z":1,"a":[1.50,"\u0001"],"big":123456789012345678901234567890}"#,
            )
            .unwrap(),
            actor: "user:alice".into(),
            producer_id: "p1".into(),
            producer_seq: 3,
            source: None,
            metadata: serde_json::from_str(r#"{"k":"v"}"#).unwrap(),
            refs: Map::new(),
            idempotency_key: Some("idem\"1".into()),
            inserted_at_us: 1_772_360_131_004_518,
        }
    }

    #[test]
    fn frame_round_trips_byte_for_byte() {
        let e = sample();
        let frame = e.to_frame("acme");
        let back = ArchiveEvent::from_frame(&frame).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.to_frame("acme"), frame);
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(
            !text.contains("\"source\""),
            "absent source omitted: {text}"
        );
        assert!(text.ends_with("\"inserted_at\":\"2026-03-01T10:15:31.004518Z\"}"));
        assert!(text.contains("123456789012345678901234567890"));
    }

    #[test]
    fn line_has_every_key_and_a_naive_timestamp() {
        let e = sample();
        let line = e.to_line(Some("acme"));
        let v: Value = serde_json::from_str(&line).unwrap();
        for k in LINE_KEYS {
            assert!(v.get(*k).is_some(), "{k} missing in {line}");
        }
        assert_eq!(v["source"], Value::Null);
        assert_eq!(v["inserted_at"], "2026-03-01T10:15:31.004518");
        assert_eq!(ArchiveEvent::from_line(&line).unwrap(), e);
    }

    #[test]
    fn the_fast_line_to_frame_path_matches_the_parsed_one() {
        let mut e = sample();
        for variant in 0..3 {
            if variant == 1 {
                e.source = Some("agent\u{1}\"x".into());
                e.idempotency_key = None;
            }
            if variant == 2 {
                e.payload = Value::String("just a string".into());
                e.refs = serde_json::from_str(r#"{"a":{"b":[1,2]}}"#).unwrap();
            }
            let line = e.to_line(Some("ignored"));
            let (seq, frame) = line_to_frame(&line, "acme").unwrap();
            assert_eq!(seq, e.seq);
            assert_eq!(frame, e.to_frame("acme"), "variant {variant}");
        }
        // Every key is required; wrong shapes are unreadable.
        let line = sample().to_line(None);
        for key in LINE_KEYS {
            let v: Map<String, Value> = serde_json::from_str(&line).unwrap();
            let mut v = v;
            v.remove(*key);
            let broken = serde_json::to_string(&v).unwrap();
            assert!(line_to_frame(&broken, "t").is_err(), "without {key}");
        }
        let bad = line.replace("\"refs\":{}", "\"refs\":[1]");
        assert!(line_to_frame(&bad, "t").is_err());
        let bad = line.replace("\"source\":null", "\"source\":5");
        assert!(line_to_frame(&bad, "t").is_err());
    }

    /// The archiver's fast path gives the bytes of the parsed path for every
    /// shape of event: escapes, non-ASCII, numbers kept as written, nested
    /// values, optionals present or absent, other tenants, and frames from
    /// the engine's own renderer.
    #[test]
    fn the_fast_frame_to_line_path_matches_the_parsed_one() {
        let mut frames: Vec<Bytes> = Vec::new();
        let payloads = [
            r#"{"z":1,"a":[1.50,"\u0001"],"big":123456789012345678901234567890}"#,
            r#""just a string""#,
            r#"null"#,
            r#"[-0,1e5,1E-7,-12.000,{"é":"\n\t\"\\/ \ud83d\ude00"}]"#,
            r#"{"deep":{"deeper":{"deepest":[[[]],{}]}}}"#,
        ];
        for (i, p) in payloads.iter().enumerate() {
            let mut e = sample();
            e.seq = 100 + i as u64;
            e.payload = serde_json::from_str(p).unwrap();
            if i % 2 == 1 {
                e.source = Some("agent\u{1}\"x é".into());
                e.idempotency_key = None;
                e.refs = serde_json::from_str(r#"{"to_seq":"5","a":{"b":[1,2]}}"#).unwrap();
            }
            e.inserted_at_us = [
                0,
                1,
                1_772_360_131_004_518,
                253_402_300_799_999_999,
                86_400_000_000,
            ][i];
            frames.push(e.to_frame("acme"));
        }
        // As the engine stores them: `render_frame` around the gateway's body.
        frames.push(starcite_shards::state::session::render_frame(
            9,
            r#""type":"note","payload":{"t":"é\"\n\u0000","n":[1.0,2]},"actor":"user:u-42","producer_id":"w","producer_seq":1,"source":"web","metadata":{"starcite_principal":{"tenant_id":"acme","id":"u-42","type":"user"}},"refs":{},"idempotency_key":"k-1","tenant_id":"acme""#,
            1_772_360_131_004_518,
        ));
        for frame in &frames {
            for tenant in [Some("acme"), Some("other \"t\""), None] {
                let want = ArchiveEvent::from_frame(frame).unwrap();
                let (seq, line) = frame_to_line(frame, tenant).unwrap();
                assert_eq!(seq, want.seq);
                assert_eq!(
                    line,
                    want.to_line(tenant),
                    "{}",
                    String::from_utf8_lossy(frame)
                );
                assert_eq!(ArchiveEvent::from_line(&line).unwrap(), want);
            }
        }
        // What the parsed path refuses, the fast path refuses.
        let frame = std::str::from_utf8(&frames[0]).unwrap().to_owned();
        for bad in [
            frame.replace("\"metadata\":{\"k\":\"v\"}", "\"metadata\":[1]"),
            frame.replace("\"seq\":100", "\"seq\":\"100\""),
            frame.replace("Z\"}", "\"}").replace("00.000000", "xx"),
            frame.replace(",\"actor\":\"user:alice\"", ""),
            frame[..frame.len() - 1].to_owned(),
        ] {
            assert!(ArchiveEvent::from_frame(bad.as_bytes()).is_err(), "{bad}");
            assert!(frame_to_line(bad.as_bytes(), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_line_missing_a_key_is_unreadable() {
        let line = sample().to_line(None).replace("\"refs\":{},", "");
        assert!(ArchiveEvent::from_line(&line).is_err());
        // A frame may omit optionals; a line may not.
        let frame = sample().to_frame("t");
        let frame = std::str::from_utf8(&frame).unwrap();
        assert!(ArchiveEvent::from_line(frame).is_err());
    }

    fn record() -> SessionRecord {
        SessionRecord::created(
            "ses/1",
            None,
            "acme",
            ("alice", "user"),
            serde_json::from_str(r#"{"a":"b"}"#).unwrap(),
            1_000_001,
        )
    }

    #[test]
    fn session_blob_round_trips() {
        let mut s = record();
        let blob = s.to_blob();
        assert_eq!(
            blob,
            r#"{"id":"ses/1","title":null,"tenant_id":"acme","creator_principal":{"tenant_id":"acme","id":"alice","type":"user"},"metadata":{"a":"b"},"created_at":"1970-01-01T00:00:01.000001Z","updated_at":"1970-01-01T00:00:01.000001Z","version":1,"archived":false}"#
        );
        assert_eq!(SessionRecord::from_blob(&blob).unwrap(), s);
        s.title = Some("t\"2".into());
        s.version = 7;
        s.updated_at_us = 2_500_000;
        s.archived = true;
        let blob = s.to_blob();
        assert!(blob.ends_with(
            r#""updated_at":"1970-01-01T00:00:02.500000Z","version":7,"archived":true}"#
        ));
        assert_eq!(SessionRecord::from_blob(&blob).unwrap(), s);
        assert!(SessionRecord::from_blob(r#"{"id":"x"}"#).is_err());
    }

    /// A blob of an earlier version: the six keys only.
    #[test]
    fn a_six_key_blob_reads_with_catalog_defaults() {
        let old = r#"{"id":"ses/1","title":"old","tenant_id":"acme","creator_principal":{"tenant_id":"acme","id":"alice","type":"user"},"metadata":{"a":"b"},"created_at":"1970-01-01T00:00:01.000001Z"}"#;
        let r = SessionRecord::from_blob(old).unwrap();
        assert_eq!(r.title.as_deref(), Some("old"));
        assert_eq!(
            (r.version, r.updated_at_us, r.archived),
            (1, 1_000_001, false)
        );
        // Every one of the six keys is still required.
        let full: Map<String, Value> = serde_json::from_str(old).unwrap();
        for key in [
            "id",
            "title",
            "tenant_id",
            "creator_principal",
            "metadata",
            "created_at",
        ] {
            let mut v = full.clone();
            v.remove(key);
            let broken = serde_json::to_string(&v).unwrap();
            assert!(SessionRecord::from_blob(&broken).is_err(), "without {key}");
        }
        // Catalog keys, when present, must be well formed.
        let with = |extra: &str| format!("{},{extra}}}", &old[..old.len() - 1]);
        assert_eq!(
            SessionRecord::from_blob(&with(r#""version":3,"archived":true"#))
                .unwrap()
                .revision(),
            (3, 1_000_001)
        );
        for bad in [
            r#""version":0"#,
            r#""version":"2""#,
            r#""version":-1"#,
            r#""archived":"yes""#,
            r#""updated_at":5"#,
            r#""updated_at":"later""#,
        ] {
            assert!(SessionRecord::from_blob(&with(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_newer_revision_supersedes_an_older_one_only() {
        let v1 = record();
        let mut archived = v1.clone();
        archived.archived = true;
        archived.updated_at_us += 1;
        let mut patched = archived.clone();
        patched.version = 2;
        patched.title = Some("new".into());
        patched.updated_at_us += 5;
        assert!(archived.supersedes(&v1));
        assert!(patched.supersedes(&archived));
        assert!(patched.supersedes(&v1));
        assert!(
            !v1.supersedes(&archived),
            "an older state never replaces a newer one"
        );
        assert!(!archived.supersedes(&patched));
        assert!(
            !patched.supersedes(&patched.clone()),
            "equal: the stored one stays"
        );
        // A higher version wins even with an earlier timestamp (leader clocks).
        let mut skewed = patched.clone();
        skewed.version = 3;
        skewed.updated_at_us = 0;
        assert!(skewed.supersedes(&patched));
        // An old six-key blob is superseded by any change of its session.
        let old = SessionRecord::from_blob(&{
            let b = v1.to_blob();
            let cut = b.find(",\"updated_at\"").unwrap();
            format!("{}}}", &b[..cut])
        })
        .unwrap();
        assert_eq!(old, v1);
        assert!(archived.supersedes(&old) && !v1.supersedes(&old));
    }

    #[test]
    fn timestamps_parse_in_both_spellings() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(
            parse_timestamp("1970-01-01T00:00:01.000002"),
            Some(1_000_002)
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:01"), Some(1_000_000));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
