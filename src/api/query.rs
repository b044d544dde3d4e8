//! Query strings: form-style decoding into a JSON object (§1), and the list (§5.2) and
//! tail (§5.4) parameter rules on top of it.
//!
//! Decoding follows the reference's framework so the same URLs mean the same thing:
//! `&`-separated pairs, `+` is a space, `%XX` escapes, bracket nesting (`a[b]=c` →
//! `{"a":{"b":"c"}}`, `a[]=x` → `["x"]`), and the last assignment to a key wins.
//! Unlike the reference, bad percent escapes are kept literally and invalid UTF-8 is
//! replaced rather than rejected: neither can make a valid request invalid.

use std::collections::BTreeMap;

use percent_encoding::percent_decode;
use serde_json::{Map, Value};

use crate::api::conventions::{int_or_digits_at_least, int_or_digits_in, present};
use crate::api::error::ApiError;

/// Bracket levels honoured below a top-level key; deeper text stays one literal key.
/// Bounds the decoded tree so hostile keys cannot build deep values (whose drop recurses).
pub const MAX_QUERY_NESTING: usize = 32;
/// List `limit` default and range (§12.3).
pub const LIST_LIMIT_DEFAULT: u32 = 100;
pub const LIST_LIMIT_MAX: u32 = 1000;
/// Tail `batch_size` default and range (§12.3).
pub const TAIL_BATCH_DEFAULT: u32 = 1;
pub const TAIL_BATCH_MAX: u32 = 1000;

/// Decodes a raw query string (without the leading `?`) into a JSON object whose leaves
/// are strings. Never fails: every byte sequence decodes to something.
pub fn parse_query(raw: &[u8]) -> Value {
    let mut root = Map::new();
    for pair in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = split_pair(pair);
        insert(&mut root, &decode_component(key), decode_component(value));
    }
    Value::Object(root)
}

/// `k=v` at the first `=`; a bare `k` has the empty value (WHATWG form decoding).
fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|&b| b == b'=') {
        Some(i) => (&pair[..i], &pair[i + 1..]),
        None => (pair, &[]),
    }
}

/// `+` → space first (so `%2B` stays a plus), then percent-decoding, then lossy UTF-8.
fn decode_component(raw: &[u8]) -> String {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&spaced).decode_utf8_lossy().into_owned()
}

/// Splits `a[b][c]` into `["a", "b", "c"]`. Only keys ending in `]` with a non-empty
/// root nest; anything else (`a[b`, `[a]`, `a]`) is one literal key, as in the reference.
fn key_path(key: &str) -> Vec<&str> {
    let nested = key
        .strip_suffix(']')
        .and_then(|inner| inner.split_once('['))
        .filter(|(root, _)| !root.is_empty());
    match nested {
        Some((root, rest)) => {
            let mut path = vec![root];
            path.extend(rest.splitn(MAX_QUERY_NESTING, "]["));
            path
        }
        None => vec![key],
    }
}

/// Stores `value` at `key`'s path, replacing whatever stood in the way (last wins).
fn insert(root: &mut Map<String, Value>, key: &str, value: String) {
    let path = key_path(key);
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let mut slot = root.entry(*first).or_insert(Value::Null);
    for part in rest {
        slot = descend(slot, part);
    }
    *slot = Value::String(value);
}

/// One level down: `[]` appends a new array element, `[k]` selects an object member.
fn descend<'v>(slot: &'v mut Value, part: &str) -> &'v mut Value {
    if part.is_empty() {
        if !slot.is_array() {
            *slot = Value::Array(Vec::new());
        }
        match slot {
            Value::Array(items) => {
                items.push(Value::Null);
                let last = items.len() - 1;
                &mut items[last]
            }
            _ => unreachable!("slot was just made an array"),
        }
    } else {
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(members) => members.entry(part).or_insert(Value::Null),
            _ => unreachable!("slot was just made an object"),
        }
    }
}

/// Validated `GET /v1/sessions` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    pub limit: u32,
    pub cursor: Option<String>,
    /// Exact-match filters on top-level metadata keys, sorted by key.
    pub filters: Vec<(String, String)>,
    /// `archived=false|true|all` (default `false`: sessions not archived).
    pub archived: starcite_shards::shard::ArchivedFilter,
}

/// §5.2, checked in the order of §3: `limit` → `cursor` → nested metadata filter.
pub fn list_params(q: &Value) -> Result<ListParams, ApiError> {
    if !q.is_object() {
        return Err(ApiError::invalid_list_query());
    }
    let limit = list_limit(q)?;
    let cursor = list_cursor(q)?;
    let archived = list_archived(q)?;
    let mut filters = nested_metadata_filters(q)?;
    // Dotted filters win on the same key, so they are applied last.
    filters.extend(dotted_metadata_filters(q));
    Ok(ListParams {
        limit,
        cursor,
        filters: filters.into_iter().collect(),
        archived,
    })
}

/// `archived`: absent or `false` → not archived, `true` → archived, `all`;
/// anything else is `invalid_list_query` (upstream's order: after `cursor`).
fn list_archived(q: &Value) -> Result<starcite_shards::shard::ArchivedFilter, ApiError> {
    use starcite_shards::shard::ArchivedFilter;
    match present(q, "archived") {
        None => Ok(ArchivedFilter::Active),
        Some(Value::String(s)) if s == "false" => Ok(ArchivedFilter::Active),
        Some(Value::String(s)) if s == "true" => Ok(ArchivedFilter::Archived),
        Some(Value::String(s)) if s == "all" => Ok(ArchivedFilter::All),
        Some(_) => Err(ApiError::invalid_list_query()),
    }
}

fn list_limit(q: &Value) -> Result<u32, ApiError> {
    match present(q, "limit") {
        None => Ok(LIST_LIMIT_DEFAULT),
        Some(v) => int_or_digits_in(v, 1, u64::from(LIST_LIMIT_MAX))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(ApiError::invalid_limit),
    }
}

fn list_cursor(q: &Value) -> Result<Option<String>, ApiError> {
    match present(q, "cursor") {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid_cursor()),
    }
}

/// `metadata[k]=v`: must decode to an object of non-empty keys and scalar values.
fn nested_metadata_filters(q: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(metadata) = present(q, "metadata") else {
        return Ok(BTreeMap::new());
    };
    let members = metadata
        .as_object()
        .ok_or_else(ApiError::invalid_metadata)?;
    members
        .iter()
        .map(|(k, v)| match scalar_text(v) {
            Some(text) if !k.is_empty() => Ok((k.clone(), text)),
            _ => Err(ApiError::invalid_metadata()),
        })
        .collect()
}

/// `metadata.<k>=v`: `<k>` is the whole suffix (a literal key, not a path); non-scalar
/// values are dropped silently, as in the reference.
fn dotted_metadata_filters(q: &Value) -> BTreeMap<String, String> {
    let Some(members) = q.as_object() else {
        return BTreeMap::new();
    };
    members
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("metadata.").filter(|s| !s.is_empty())?;
            Some((key.to_string(), scalar_text(v)?))
        })
        .collect()
}

/// Filter values from a query string are always strings; the other scalars of the
/// contract (booleans, numbers) can only come from a programmatic caller and compare
/// by their JSON text.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.as_str().to_string()),
        _ => None,
    }
}

/// Validated `GET /v1/sessions/{id}/tail` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailParams {
    /// Replay starts with the first event whose `seq > cursor`.
    pub cursor: u64,
    pub batch_size: u32,
    /// See [`access_token`].
    pub access_token: Option<String>,
}

/// §5.4, checked in the order of §3: `cursor` → `batch_size`.
pub fn tail_params(q: &Value) -> Result<TailParams, ApiError> {
    let cursor = match present(q, "cursor") {
        None => 0,
        Some(v) => int_or_digits_at_least(v, 0).ok_or_else(ApiError::invalid_cursor)?,
    };
    let batch_size = match present(q, "batch_size") {
        None => TAIL_BATCH_DEFAULT,
        Some(v) => int_or_digits_in(v, 1, u64::from(TAIL_BATCH_MAX))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(ApiError::invalid_tail_batch_size)?,
    };
    Ok(TailParams {
        cursor,
        batch_size,
        access_token: access_token(q),
    })
}

/// The `access_token` query value, URL-decoded but otherwise raw (not trimmed, not
/// checked): the auth layer applies §2.2. Authentication runs before the tail
/// parameter checks, hence a separate function. A non-string value (`access_token[]=…`)
/// is returned as `Some("")` so that auth classifies it as a malformed token, not as
/// a missing one.
pub fn access_token(q: &Value) -> Option<String> {
    match q.get("access_token")? {
        Value::String(s) => Some(s.clone()),
        _ => Some(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(raw: &str) -> Value {
        parse_query(raw.as_bytes())
    }

    #[test]
    fn form_decoding() {
        let table: Vec<(&str, Value)> = vec![
            ("", json!({})),
            ("a=1&b=2", json!({"a": "1", "b": "2"})),
            ("a=1&&b=2&", json!({"a": "1", "b": "2"})),
            ("a", json!({"a": ""})),
            ("a=", json!({"a": ""})),
            ("=x", json!({"": "x"})),
            ("a=b=c", json!({"a": "b=c"})),
            ("a=x+y", json!({"a": "x y"})),
            ("a=x%2By", json!({"a": "x+y"})),
            ("a%20b=%C3%A9", json!({"a b": "é"})),
            ("a=1&a=2", json!({"a": "2"})),
            ("a=%zz%4", json!({"a": "%zz%4"})),
            ("a=%FF%FE", json!({"a": "\u{FFFD}\u{FFFD}"})),
            ("a;b=1", json!({"a;b": "1"})),
        ];
        for (raw, want) in table {
            assert_eq!(q(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn invalid_utf8_bytes_never_panic() {
        assert_eq!(
            parse_query(b"a\xff=\xfe\xfd"),
            json!({"a\u{FFFD}": "\u{FFFD}\u{FFFD}"})
        );
    }

    #[test]
    fn bracket_nesting() {
        let table: Vec<(&str, Value)> = vec![
            ("a[b]=c", json!({"a": {"b": "c"}})),
            ("a[b][c]=d", json!({"a": {"b": {"c": "d"}}})),
            ("a[b]=1&a[c]=2", json!({"a": {"b": "1", "c": "2"}})),
            ("a[]=x&a[]=y", json!({"a": ["x", "y"]})),
            ("a[b][]=x", json!({"a": {"b": ["x"]}})),
            ("a%5Bb%5D=c", json!({"a": {"b": "c"}})),
            // Not nested: no closing bracket, empty root, or no opening bracket.
            ("a[b=c", json!({"a[b": "c"})),
            ("[a]=c", json!({"[a]": "c"})),
            ("a]=c", json!({"a]": "c"})),
            ("a[b]c=d", json!({"a[b]c": "d"})),
            ("a[b]c]=d", json!({"a": {"b]c": "d"}})),
            // Last assignment wins, whatever the shapes.
            ("a=1&a[b]=2", json!({"a": {"b": "2"}})),
            ("a[b]=2&a=1", json!({"a": "1"})),
            ("a[b]=2&a[]=1", json!({"a": ["1"]})),
            ("a[]=1&a[b]=2", json!({"a": {"b": "2"}})),
        ];
        for (raw, want) in table {
            assert_eq!(q(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn nesting_depth_is_bounded() {
        let key = format!("a{}", "[b]".repeat(100_000));
        let v = q(&format!("{key}=x"));
        let mut depth = 0;
        let mut cur = &v["a"];
        while let Some(obj) = cur.as_object() {
            depth += 1;
            cur = obj.values().next().expect("one member");
        }
        assert_eq!(depth, MAX_QUERY_NESTING);
        assert_eq!(cur, &json!("x"));
    }

    #[test]
    fn list_defaults() {
        let want = ListParams {
            limit: 100,
            cursor: None,
            filters: vec![],
            archived: starcite_shards::shard::ArchivedFilter::Active,
        };
        assert_eq!(list_params(&q("")), Ok(want));
    }

    #[test]
    fn list_archived_filter() {
        use starcite_shards::shard::ArchivedFilter;
        let table = [
            ("archived=false", Ok(ArchivedFilter::Active)),
            ("archived=true", Ok(ArchivedFilter::Archived)),
            ("archived=all", Ok(ArchivedFilter::All)),
            ("archived=", Err(ApiError::invalid_list_query())),
            ("archived=1", Err(ApiError::invalid_list_query())),
            ("archived[a]=true", Err(ApiError::invalid_list_query())),
        ];
        for (query, want) in table {
            assert_eq!(list_params(&q(query)).map(|p| p.archived), want, "{query}");
        }
        // limit and cursor are checked first.
        assert_eq!(
            list_params(&q("archived=x&limit=0")),
            Err(ApiError::invalid_limit())
        );
    }

    #[test]
    fn list_limit_rules() {
        let table: Vec<(&str, Result<u32, ApiError>)> = vec![
            ("limit=1", Ok(1)),
            ("limit=1000", Ok(1000)),
            ("limit=%2B7", Ok(7)),
            // A raw `+` is a space in form encoding, so this is " 7".
            ("limit=+7", Err(ApiError::invalid_limit())),
            ("limit=007", Ok(7)),
            ("limit=0", Err(ApiError::invalid_limit())),
            ("limit=1001", Err(ApiError::invalid_limit())),
            ("limit=-1", Err(ApiError::invalid_limit())),
            ("limit=1.0", Err(ApiError::invalid_limit())),
            ("limit=", Err(ApiError::invalid_limit())),
            ("limit=+7+", Err(ApiError::invalid_limit())),
            ("limit=18446744073709551616", Err(ApiError::invalid_limit())),
            ("limit[]=1", Err(ApiError::invalid_limit())),
        ];
        for (raw, want) in table {
            assert_eq!(list_params(&q(raw)).map(|p| p.limit), want, "{raw:?}");
        }
    }

    #[test]
    fn list_cursor_rules() {
        let table: Vec<(&str, Result<Option<String>, ApiError>)> = vec![
            ("cursor=ses_a", Ok(Some("ses_a".into()))),
            ("cursor=+", Ok(Some(" ".into()))),
            ("cursor=", Err(ApiError::invalid_cursor())),
            ("cursor", Err(ApiError::invalid_cursor())),
            ("cursor[a]=b", Err(ApiError::invalid_cursor())),
        ];
        for (raw, want) in table {
            assert_eq!(list_params(&q(raw)).map(|p| p.cursor), want, "{raw:?}");
        }
    }

    #[test]
    fn list_metadata_filters() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        type Filters = Vec<(String, String)>;
        let table: Vec<(&str, Result<Filters, ApiError>)> = vec![
            (
                "metadata[b]=2&metadata[a]=1",
                Ok(pairs(&[("a", "1"), ("b", "2")])),
            ),
            (
                "metadata.b=2&metadata.a.x=1",
                Ok(pairs(&[("a.x", "1"), ("b", "2")])),
            ),
            (
                "metadata[k]=nested&metadata.k=dotted",
                Ok(pairs(&[("k", "dotted")])),
            ),
            (
                "metadata.k=dotted&metadata[k]=nested",
                Ok(pairs(&[("k", "dotted")])),
            ),
            ("metadata.=x&metadata.a[b]=1&metadata.c[]=1", Ok(vec![])),
            ("metadata=x", Err(ApiError::invalid_metadata())),
            ("metadata[]=x", Err(ApiError::invalid_metadata())),
            ("metadata[a][b]=x", Err(ApiError::invalid_metadata())),
            ("metadata[a][]=x", Err(ApiError::invalid_metadata())),
        ];
        for (raw, want) in table {
            assert_eq!(list_params(&q(raw)).map(|p| p.filters), want, "{raw:?}");
        }
    }

    #[test]
    fn list_check_order_is_limit_cursor_metadata() {
        let all_bad = "metadata=x&cursor=&limit=0";
        assert_eq!(list_params(&q(all_bad)), Err(ApiError::invalid_limit()));
        assert_eq!(
            list_params(&q("metadata=x&cursor=")),
            Err(ApiError::invalid_cursor())
        );
        assert_eq!(
            list_params(&q("metadata=x")),
            Err(ApiError::invalid_metadata())
        );
    }

    #[test]
    fn list_params_must_be_a_map() {
        assert_eq!(list_params(&json!([])), Err(ApiError::invalid_list_query()));
    }

    #[test]
    fn tail_defaults() {
        let want = TailParams {
            cursor: 0,
            batch_size: 1,
            access_token: None,
        };
        assert_eq!(tail_params(&q("")), Ok(want));
    }

    #[test]
    fn tail_cursor_rules() {
        let table: Vec<(&str, Result<u64, ApiError>)> = vec![
            ("cursor=0", Ok(0)),
            ("cursor=%2B7", Ok(7)),
            ("cursor=+7", Err(ApiError::invalid_cursor())),
            ("cursor=007", Ok(7)),
            ("cursor=18446744073709551615", Ok(u64::MAX)),
            ("cursor=18446744073709551616", Ok(u64::MAX)),
            ("cursor=-1", Err(ApiError::invalid_cursor())),
            ("cursor=1.0", Err(ApiError::invalid_cursor())),
            ("cursor=", Err(ApiError::invalid_cursor())),
            ("cursor=%207", Err(ApiError::invalid_cursor())),
            ("cursor[]=1", Err(ApiError::invalid_cursor())),
        ];
        for (raw, want) in table {
            assert_eq!(tail_params(&q(raw)).map(|p| p.cursor), want, "{raw:?}");
        }
        // Any non-negative cursor is valid; beyond u64 it saturates (silent until
        // events that can never come).
        let huge = format!("cursor={}", "9".repeat(10_000));
        assert_eq!(tail_params(&q(&huge)).map(|p| p.cursor), Ok(u64::MAX));
    }

    #[test]
    fn tail_batch_size_rules() {
        let table: Vec<(&str, Result<u32, ApiError>)> = vec![
            ("batch_size=1", Ok(1)),
            ("batch_size=1000", Ok(1000)),
            ("batch_size=%2B10", Ok(10)),
            ("batch_size=+10", Err(ApiError::invalid_tail_batch_size())),
            ("batch_size=0", Err(ApiError::invalid_tail_batch_size())),
            ("batch_size=1001", Err(ApiError::invalid_tail_batch_size())),
            ("batch_size=-1", Err(ApiError::invalid_tail_batch_size())),
            ("batch_size=2.0", Err(ApiError::invalid_tail_batch_size())),
            ("batch_size=", Err(ApiError::invalid_tail_batch_size())),
        ];
        for (raw, want) in table {
            assert_eq!(tail_params(&q(raw)).map(|p| p.batch_size), want, "{raw:?}");
        }
    }

    #[test]
    fn tail_check_order_is_cursor_then_batch_size() {
        let both_bad = q("batch_size=0&cursor=x");
        assert_eq!(tail_params(&both_bad), Err(ApiError::invalid_cursor()));
    }

    #[test]
    fn access_token_is_decoded_but_raw() {
        assert_eq!(
            access_token(&q("access_token=+abc%2Ed+")),
            Some(" abc.d ".into())
        );
        assert_eq!(access_token(&q("access_token=")), Some(String::new()));
        assert_eq!(access_token(&q("access_token[]=x")), Some(String::new()));
        assert_eq!(access_token(&q("cursor=1")), None);
        // Available even when the other tail parameters are invalid.
        assert_eq!(
            access_token(&q("cursor=x&access_token=t")),
            Some("t".into())
        );
        let p = tail_params(&q("access_token=t&cursor=3"));
        assert_eq!(p.map(|p| p.access_token), Ok(Some("t".into())));
    }
}
