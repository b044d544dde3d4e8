//! Content fingerprint of an append, for producer dedupe (§6.2, §14.2).
//!
//! A retry dedupes only if its content is the same as the original's, compared
//! structurally: object key order and whitespace do not matter, integer `1` and float
//! `1.0` differ. We encode the content canonically (objects with sorted keys, every
//! component tagged and length-prefixed, so the encoding is injective) and hash it with
//! xxh3-128, so a collision that would turn a conflict into a dedupe is negligible.
//!
//! Fingerprints are stored in replicated state: changing the encoding changes dedupe
//! decisions across an upgrade, so bump [`ENCODING_VERSION`] when doing so.

use serde_json::{Map, Number, Value};
use xxhash_rust::xxh3::xxh3_128;

use crate::api::validate::AppendInput;

/// Version of the canonical encoding, hashed first.
pub const ENCODING_VERSION: u8 = 1;

/// Structural fingerprint over type, payload, actor, source, metadata (enriched), refs,
/// idempotency_key, producer_id and producer_seq.
pub fn fingerprint(input: &AppendInput) -> u128 {
    let mut enc = Canonical::default();
    enc.buf.push(ENCODING_VERSION);
    enc.str(&input.event_type);
    enc.value(&input.payload);
    enc.str(&input.actor);
    enc.opt_str(input.source.as_deref());
    enc.map(&input.metadata);
    enc.map(&input.refs);
    enc.opt_str(input.idempotency_key.as_deref());
    enc.str(&input.producer_id);
    enc.u64(input.producer_seq);
    xxh3_128(&enc.buf)
}

/// Pending work of the iterative walk (no recursion, so nesting depth costs heap only).
enum Item<'a> {
    Value(&'a Value),
    Object(&'a Map<String, Value>),
    Key(&'a str),
}

/// A prefix-free byte encoding: every value starts with a type tag, strings and
/// containers carry their length, so distinct values never encode alike.
#[derive(Default)]
struct Canonical {
    buf: Vec<u8>,
}

impl Canonical {
    fn u64(&mut self, n: u64) {
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }

    fn bytes(&mut self, tag: u8, b: &[u8]) {
        self.buf.push(tag);
        self.len(b.len());
        self.buf.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(b's', s.as_bytes());
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.buf.push(b'n'),
        }
    }

    fn value(&mut self, v: &Value) {
        self.walk(Item::Value(v));
    }

    fn map(&mut self, m: &Map<String, Value>) {
        self.walk(Item::Object(m));
    }

    fn walk(&mut self, root: Item<'_>) {
        let mut stack = vec![root];
        while let Some(item) = stack.pop() {
            match item {
                Item::Key(k) => self.str(k),
                Item::Object(m) => self.object(m, &mut stack),
                Item::Value(v) => self.one(v, &mut stack),
            }
        }
    }

    /// Encodes a scalar, or a container's header with its children queued after it.
    fn one<'a>(&mut self, v: &'a Value, stack: &mut Vec<Item<'a>>) {
        match v {
            Value::Null => self.buf.push(b'n'),
            Value::Bool(false) => self.buf.push(b'f'),
            Value::Bool(true) => self.buf.push(b't'),
            Value::Number(n) => self.number(n),
            Value::String(s) => self.str(s),
            Value::Array(items) => {
                self.buf.push(b'a');
                self.len(items.len());
                stack.extend(items.iter().rev().map(Item::Value));
            }
            Value::Object(m) => self.object(m, stack),
        }
    }

    /// Members in byte order of their keys, so key order in the request is irrelevant.
    fn object<'a>(&mut self, m: &'a Map<String, Value>, stack: &mut Vec<Item<'a>>) {
        self.buf.push(b'o');
        self.len(m.len());
        let mut members: Vec<(&'a String, &'a Value)> = m.iter().collect();
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in members.into_iter().rev() {
            stack.push(Item::Value(v));
            stack.push(Item::Key(k));
        }
    }

    /// Integers by their decimal text (any size); floats by value, as the reference
    /// decoded them to doubles (`1.0` = `1.00` = `1e0`, but never = `1`).
    fn number(&mut self, n: &Number) {
        let text = n.as_str();
        if !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            let canonical = if text == "-0" { "0" } else { text };
            self.bytes(b'i', canonical.as_bytes());
            return;
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => {
                self.buf.push(b'd');
                self.buf.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            // Out of double range: keep distinct texts distinct.
            _ => self.bytes(b'D', text.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validate::parse_body;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn base() -> AppendInput {
        AppendInput {
            event_type: "note".into(),
            payload: json!({"a": 1, "b": [1, 2, {"c": "d"}]}),
            producer_id: "writer-1".into(),
            producer_seq: 1,
            actor: "user:u-42".into(),
            source: Some("web".into()),
            metadata: obj(json!({"k": "v", "starcite_principal": {"tenant_id": "acme"}})),
            refs: obj(json!({"to_seq": 3})),
            idempotency_key: Some("idem".into()),
            expected_seq: None,
        }
    }

    fn parsed(text: &str) -> Value {
        parse_body(text.as_bytes()).expect("valid body")
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = base();
        let mut b = base();
        b.payload = parsed(
            r#" { "b" : [ 1 , 2 , { "c" : "d" } ] ,
                             "a" : 1 } "#,
        );
        b.metadata = obj(parsed(
            r#"{"starcite_principal":{"tenant_id":"acme"},"k":"v"}"#,
        ));
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn expected_seq_is_not_content() {
        let mut b = base();
        b.expected_seq = Some(7);
        assert_eq!(fingerprint(&base()), fingerprint(&b));
    }

    #[test]
    fn every_component_matters() {
        type Edit = (&'static str, fn(&mut AppendInput));
        let edits: Vec<Edit> = vec![
            ("type", |i| i.event_type.push('x')),
            ("payload", |i| {
                i.payload = json!({"a": 2, "b": [1, 2, {"c": "d"}]})
            }),
            ("nested payload", |i| {
                i.payload = json!({"a": 1, "b": [1, 2, {"c": "e"}]})
            }),
            ("actor", |i| i.actor = "user:u-43".into()),
            ("source", |i| i.source = Some("cli".into())),
            ("source absent", |i| i.source = None),
            ("metadata", |i| i.metadata = obj(json!({"k": "v"}))),
            ("refs", |i| i.refs = Map::new()),
            ("idempotency_key", |i| {
                i.idempotency_key = Some("other".into())
            }),
            ("idempotency_key absent", |i| i.idempotency_key = None),
            ("producer_id", |i| i.producer_id = "writer-2".into()),
            ("producer_seq", |i| i.producer_seq = 2),
        ];
        let original = fingerprint(&base());
        for (name, edit) in edits {
            let mut changed = base();
            edit(&mut changed);
            assert_ne!(fingerprint(&changed), original, "{name}");
        }
    }

    #[test]
    fn numbers_compare_like_the_reference() {
        let fp = |payload: &str| {
            let mut i = base();
            i.payload = parsed(payload);
            fingerprint(&i)
        };
        assert_ne!(fp(r#"{"n":1}"#), fp(r#"{"n":1.0}"#));
        assert_ne!(fp(r#"{"n":1}"#), fp(r#"{"n":"1"}"#));
        assert_ne!(fp(r#"{"n":1.5}"#), fp(r#"{"n":2.5}"#));
        assert_eq!(fp(r#"{"n":1.0}"#), fp(r#"{"n":1.00}"#));
        assert_eq!(fp(r#"{"n":1.0}"#), fp(r#"{"n":1e0}"#));
        assert_eq!(fp(r#"{"n":-0}"#), fp(r#"{"n":0}"#));
        let big = "123456789012345678901234567890";
        assert_ne!(
            fp(&format!(r#"{{"n":{big}}}"#)),
            fp(&format!(r#"{{"n":{big}1}}"#))
        );
        assert_ne!(fp(r#"{"n":1e400}"#), fp(r#"{"n":2e400}"#));
    }

    #[test]
    fn boundaries_between_components_are_unambiguous() {
        let fp_payload = |v: Value| {
            let mut i = base();
            i.payload = v;
            fingerprint(&i)
        };
        assert_ne!(
            fp_payload(json!({"ab": "c"})),
            fp_payload(json!({"a": "bc"}))
        );
        assert_ne!(
            fp_payload(json!({"x": ["ab", "c"]})),
            fp_payload(json!({"x": ["a", "bc"]}))
        );
        assert_ne!(
            fp_payload(json!({"x": [[1], 2]})),
            fp_payload(json!({"x": [[1, 2]]}))
        );
        assert_ne!(
            fp_payload(json!({"x": {"a": {}, "b": 1}})),
            fp_payload(json!({"x": {"a": {"b": 1}}}))
        );
        assert_ne!(
            fp_payload(json!({"x": null})),
            fp_payload(json!({"x": "n"}))
        );
        assert_ne!(fp_payload(json!({})), fp_payload(json!({"": null})));

        let mut a = base();
        a.event_type = "ab".into();
        a.actor = "c".into();
        let mut b = base();
        b.event_type = "a".into();
        b.actor = "bc".into();
        assert_ne!(fingerprint(&a), fingerprint(&b));

        let mut a = base();
        a.source = None;
        a.idempotency_key = Some("x".into());
        let mut b = base();
        b.source = Some("x".into());
        b.idempotency_key = None;
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn deep_values_do_not_recurse() {
        // Deeper than any parsed body can be; built without the parser.
        let mut deep = json!(1);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        let mut i = base();
        i.payload = json!({});
        if let Value::Object(p) = &mut i.payload {
            p.insert("d".into(), deep);
        }
        let _ = fingerprint(&i);
        // Dropping a 100k-deep Value recurses; dismantle it iteratively instead.
        let mut cur = i.payload.get_mut("d").map(std::mem::take);
        while let Some(Value::Array(mut items)) = cur {
            cur = items.pop();
        }
    }
}
