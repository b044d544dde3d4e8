//! The object layout shared by the S3 and local-directory adapters (§11.1):
//! keys, 256-seq chunks, and the merge that makes chunk writes idempotent.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::adapter::ArchiveError;
use super::event::{frame_to_line, ArchiveEvent, SessionRecord, Unreadable};

/// Seqs per chunk object (and per read-cache entry). Fixed by the contract.
pub const CHUNK: u64 = 256;

/// First seq of the chunk holding `seq` (`seq ≥ 1`).
pub fn chunk_start(seq: u64) -> u64 {
    (seq.max(1) - 1) / CHUNK * CHUNK + 1
}

/// `STARCITE_S3_PREFIX` normalised: whitespace and `/` trimmed, empty → `starcite`.
pub fn normalise_prefix(raw: Option<&str>) -> String {
    let p = raw.unwrap_or("").trim().trim_matches('/').trim();
    if p.is_empty() {
        "starcite".to_owned()
    } else {
        p.to_owned()
    }
}

/// Unpadded URL-safe base64 of the session id bytes.
pub fn session_b64(session: &str) -> String {
    URL_SAFE_NO_PAD.encode(session.as_bytes())
}

/// `<p>/events/v1/<b64>/<chunk_start>.ndjson`
pub fn event_key(prefix: &str, session: &str, chunk: u64) -> String {
    format!("{prefix}/events/v1/{}/{chunk}.ndjson", session_b64(session))
}

/// `<p>/sessions/v1/<b64>.json`
pub fn session_key(prefix: &str, session: &str) -> String {
    format!("{prefix}/sessions/v1/{}.json", session_b64(session))
}

/// Splits items with ascending seqs into runs that share a chunk:
/// `(chunk_start, items)`.
pub fn by_chunk<T>(items: &[T], seq: impl Fn(&T) -> u64) -> Vec<(u64, &[T])> {
    let mut out = Vec::new();
    let mut rest = items;
    while let Some(first) = rest.first() {
        let chunk = chunk_start(seq(first));
        let n = rest
            .iter()
            .take_while(|e| chunk_start(seq(e)) == chunk)
            .count();
        out.push((chunk, &rest[..n]));
        rest = &rest[n..];
    }
    out
}

/// Parses a chunk body: lines joined by `\n`. Any unreadable line makes the whole
/// chunk unreadable (§11.1).
pub fn parse_chunk(body: &str) -> Result<Vec<ArchiveEvent>, Unreadable> {
    body.split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(ArchiveEvent::from_line)
        .collect()
}

/// Tail frames of the chunk's events with `from ≤ seq ≤ to` (every line is
/// checked, §11.1: one unreadable line makes the chunk unreadable).
pub fn chunk_frames(
    body: &str,
    tenant_id: &str,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, bytes::Bytes)>, Unreadable> {
    let mut out = Vec::new();
    for line in body.split('\n').filter(|l| !l.trim().is_empty()) {
        let (seq, frame) = super::event::line_to_frame(line, tenant_id)?;
        if (from..=to).contains(&seq) {
            out.push((seq, frame));
        }
    }
    Ok(out)
}

/// A store of whole chunk objects by key (an S3 bucket, a directory): the §11.1
/// layout's reads and writes are the same on both.
pub trait ChunkStore {
    /// The key prefix (`STARCITE_S3_PREFIX`).
    fn prefix(&self) -> &str;
    /// A chunk object's body, or None when it does not exist.
    fn get_chunk(&mut self, key: &str) -> Result<Option<String>, ArchiveError>;
    /// The §11.1 write of one chunk's lines (`(seq, line)`, ascending): merge
    /// with what is stored, write if anything is new. Returns how many seqs
    /// were new.
    fn write_chunk(
        &mut self,
        session: &SessionRecord,
        chunk: u64,
        lines: &[(u64, String)],
    ) -> Result<usize, ArchiveError>;
}

/// Writes ascending events of one session, chunk by chunk.
pub fn write_events(
    store: &mut impl ChunkStore,
    session: &SessionRecord,
    events: &[ArchiveEvent],
) -> Result<usize, ArchiveError> {
    let tenant = Some(session.tenant_id.as_str());
    let lines: Vec<(u64, String)> = events.iter().map(|e| (e.seq, e.to_line(tenant))).collect();
    write_lines(store, session, &lines)
}

/// Writes ascending hot-tier frames of one session, chunk by chunk; each
/// line is rendered from its frame without building JSON trees
/// (`frame_to_line`).
pub fn write_frames(
    store: &mut impl ChunkStore,
    session: &SessionRecord,
    frames: &[(u64, bytes::Bytes)],
) -> Result<usize, ArchiveError> {
    let tenant = Some(session.tenant_id.as_str());
    let lines = frames
        .iter()
        .map(|(_, f)| frame_to_line(f, tenant))
        .collect::<Result<Vec<_>, Unreadable>>()?;
    write_lines(store, session, &lines)
}

fn write_lines(
    store: &mut impl ChunkStore,
    session: &SessionRecord,
    lines: &[(u64, String)],
) -> Result<usize, ArchiveError> {
    let mut added = 0;
    for (chunk, part) in by_chunk(lines, |l| l.0) {
        added += store.write_chunk(session, chunk, part)?;
    }
    Ok(added)
}

/// Parses every chunk overlapping `from ..= to` with `parse` (which keeps the range).
fn read_chunks<T>(
    store: &mut impl ChunkStore,
    session: &str,
    from: u64,
    to: u64,
    parse: impl Fn(&str) -> Result<Vec<T>, Unreadable>,
) -> Result<Vec<T>, ArchiveError> {
    let mut out = Vec::new();
    let mut chunk = chunk_start(from);
    while chunk <= to {
        let key = event_key(store.prefix(), session, chunk);
        if let Some(body) = store.get_chunk(&key)? {
            out.extend(parse(&body)?);
        }
        chunk = match chunk.checked_add(CHUNK) {
            Some(c) => c,
            None => break,
        };
    }
    Ok(out)
}

/// Events `from ..= to` of a session.
pub fn read_events(
    store: &mut impl ChunkStore,
    session: &str,
    from: u64,
    to: u64,
) -> Result<Vec<ArchiveEvent>, ArchiveError> {
    read_chunks(store, session, from, to, |body| {
        Ok(parse_chunk(body)?
            .into_iter()
            .filter(|e| (from..=to).contains(&e.seq))
            .collect())
    })
}

/// Tail frames of events `from ..= to` (the cold-read fast path).
pub fn read_frames(
    store: &mut impl ChunkStore,
    session: &str,
    tenant_id: &str,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, bytes::Bytes)>, ArchiveError> {
    read_chunks(store, session, from, to, |body| {
        chunk_frames(body, tenant_id, from, to)
    })
}

/// The session-blob write rule: the blob to store for `incoming` given the
/// stored one, or None when the stored record is as new or newer (its
/// `(version, updated_at)` is not smaller). A stored blob that cannot be parsed
/// is replaced: the incoming record is the replicated state, the stored one
/// holds nothing readable.
pub fn session_update(
    key: &str,
    existing: Option<&str>,
    incoming: &SessionRecord,
) -> Option<String> {
    if let Some(body) = existing {
        match SessionRecord::from_blob(body) {
            Ok(stored) if !incoming.supersedes(&stored) => return None,
            Ok(_) => {}
            Err(e) => tracing::warn!(key, error = %e, "replacing an unreadable session blob"),
        }
    }
    Some(incoming.to_blob())
}

/// Step 2 of the §11.1 write algorithm: the existing lines win, incoming seqs not
/// yet present are added. Returns the merged body and how many seqs were new
/// (0 → nothing to write).
pub fn merge_chunk(
    existing: Option<&str>,
    incoming: &[(u64, String)],
) -> Result<(String, usize), Unreadable> {
    let mut lines: BTreeMap<u64, &str> = BTreeMap::new();
    if let Some(body) = existing {
        for line in body.split('\n').filter(|l| !l.trim().is_empty()) {
            // The reference drops `tenant_id` again when it rewrites an existing
            // line; we keep existing lines verbatim (extra keys are ignored on read).
            lines.insert(line_seq(line)?, line);
        }
    }
    let mut added = 0;
    for (seq, line) in incoming {
        if let std::collections::btree_map::Entry::Vacant(v) = lines.entry(*seq) {
            v.insert(line);
            added += 1;
        }
    }
    let body = lines.into_values().collect::<Vec<_>>().join("\n");
    Ok((body, added))
}

/// Every key of a chunk line (§11.1), values skipped unparsed.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct LineKeys {
    seq: u64,
    #[serde(rename = "type")]
    event_type: serde::de::IgnoredAny,
    payload: serde::de::IgnoredAny,
    actor: serde::de::IgnoredAny,
    producer_id: serde::de::IgnoredAny,
    producer_seq: serde::de::IgnoredAny,
    source: serde::de::IgnoredAny,
    metadata: serde::de::IgnoredAny,
    refs: serde::de::IgnoredAny,
    idempotency_key: serde::de::IgnoredAny,
    inserted_at: serde::de::IgnoredAny,
}

/// The seq of an existing chunk line, checking that every key of §11.1 is
/// there without building its values (a merge keeps existing lines verbatim;
/// reads still parse them fully).
fn line_seq(line: &str) -> Result<u64, Unreadable> {
    serde_json::from_str::<LineKeys>(line)
        .map(|k| k.seq)
        .map_err(|e| Unreadable(format!("line: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> ArchiveEvent {
        ArchiveEvent {
            seq,
            event_type: "t".into(),
            payload: serde_json::json!({"n": seq}),
            actor: "service:a".into(),
            producer_id: "p".into(),
            producer_seq: seq,
            source: None,
            metadata: Default::default(),
            refs: Default::default(),
            idempotency_key: None,
            inserted_at_us: 1_000_000 * seq as i64,
        }
    }

    #[test]
    fn chunks_are_256_seqs_starting_at_one() {
        assert_eq!(chunk_start(1), 1);
        assert_eq!(chunk_start(256), 1);
        assert_eq!(chunk_start(257), 257);
        assert_eq!(chunk_start(513), 513);
        let evs: Vec<_> = (250..=260).map(ev).collect();
        let parts = by_chunk(&evs, |e| e.seq);
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].0, parts[0].1.len()), (1, 7));
        assert_eq!((parts[1].0, parts[1].1.len()), (257, 4));
    }

    #[test]
    fn keys_follow_the_contract() {
        assert_eq!(normalise_prefix(Some(" /a/b/ ")), "a/b");
        assert_eq!(normalise_prefix(Some(" / ")), "starcite");
        assert_eq!(normalise_prefix(None), "starcite");
        assert_eq!(
            event_key("starcite", "ses?1", 257),
            "starcite/events/v1/c2VzPzE/257.ndjson"
        );
        assert_eq!(session_key("p", "ses?1"), "p/sessions/v1/c2VzPzE.json");
    }

    #[test]
    fn merge_keeps_existing_lines_and_counts_new_ones() {
        let lines =
            |seqs: std::ops::RangeInclusive<u64>, tenant: Option<&str>| -> Vec<(u64, String)> {
                seqs.map(|n| (n, ev(n).to_line(tenant))).collect()
            };
        let first = lines(1..=3, Some("t"));
        let (body, added) = merge_chunk(None, &first).unwrap();
        assert_eq!(added, 3);
        assert!(!body.ends_with('\n'));
        assert_eq!(body.lines().count(), 3);
        let (again, added) = merge_chunk(Some(&body), &first).unwrap();
        assert_eq!((again.as_str(), added), (body.as_str(), 0));
        let more = lines(2..=5, None);
        let (merged, added) = merge_chunk(Some(&body), &more).unwrap();
        assert_eq!(added, 2);
        let seqs: Vec<u64> = parse_chunk(&merged)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert!(merge_chunk(Some("{\"seq\":1}"), &more).is_err());
        // One key short, or a seq that is not a number: still unreadable.
        let line = ev(9).to_line(None);
        assert_eq!(line_seq(&line).unwrap(), 9);
        assert!(line_seq(&line.replace(",\"refs\":{}", "")).is_err());
        assert!(line_seq(&line.replace("\"seq\":9", "\"seq\":\"9\"")).is_err());
    }
}
