//! Phoenix Channels message frames (the JSON serializers of Phoenix 1.8).
//!
//! A message is `join_ref, ref, topic, event, payload`. Version 2 (`vsn=2.0.0`)
//! sends it as the array `[join_ref, ref, topic, event, payload]`; version 1
//! (`vsn` absent or `1.x`) as the object `{"topic","event","payload","ref",
//! "join_ref"}`. Inbound, both shapes are accepted on either version; outbound
//! frames use the socket's version. `join_ref` and `ref` are echoed exactly as
//! the client sent them (the JavaScript client uses strings).

use bytes::Bytes;
use serde_json::Value;

use crate::api::render::push_json_str;

/// The serializer a socket speaks, from its `vsn` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// `vsn` absent → 1.0.0 (Phoenix's default); `1.x` or `2.x`; else `None`.
    pub fn parse(vsn: Option<&str>) -> Option<Vsn> {
        match vsn {
            None => Some(Vsn::V1),
            Some(v) if v == "1" || v.starts_with("1.") => Some(Vsn::V1),
            Some(v) if v == "2" || v.starts_with("2.") => Some(Vsn::V2),
            Some(_) => None,
        }
    }
}

/// One client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub join_ref: Value,
    pub msg_ref: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// Parses a text frame in either shape; `None` for anything else.
pub fn decode(text: &[u8]) -> Option<Inbound> {
    match serde_json::from_slice::<Value>(text).ok()? {
        Value::Array(mut parts) if parts.len() == 5 => {
            let payload = parts.pop()?;
            let event = parts.pop()?;
            let topic = parts.pop()?;
            let msg_ref = parts.pop()?;
            let join_ref = parts.pop()?;
            Some(Inbound {
                join_ref: ref_value(join_ref)?,
                msg_ref: ref_value(msg_ref)?,
                topic: into_string(topic)?,
                event: into_string(event)?,
                payload,
            })
        }
        Value::Object(mut m) => Some(Inbound {
            join_ref: ref_value(m.remove("join_ref").unwrap_or(Value::Null))?,
            msg_ref: ref_value(m.remove("ref").unwrap_or(Value::Null))?,
            topic: into_string(m.remove("topic")?)?,
            event: into_string(m.remove("event")?)?,
            payload: m.remove("payload")?,
        }),
        _ => None,
    }
}

fn into_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Refs are strings, numbers or null.
fn ref_value(v: Value) -> Option<Value> {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Null).then_some(v)
}

/// One outbound frame with a pre-rendered JSON payload.
pub fn encode(
    vsn: Vsn,
    join_ref: &Value,
    msg_ref: &Value,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + topic.len() + event.len() + 64);
    let mut text = String::new();
    match vsn {
        Vsn::V2 => {
            text.push('[');
            text.push_str(&join_ref.to_string());
            text.push(',');
            text.push_str(&msg_ref.to_string());
            text.push(',');
            push_json_str(&mut text, topic);
            text.push(',');
            push_json_str(&mut text, event);
            text.push(',');
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(payload);
            out.push(b']');
        }
        Vsn::V1 => {
            text.push_str("{\"topic\":");
            push_json_str(&mut text, topic);
            text.push_str(",\"event\":");
            push_json_str(&mut text, event);
            text.push_str(",\"payload\":");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(
                format!(",\"ref\":{},\"join_ref\":{}}}", msg_ref, join_ref).as_bytes(),
            );
        }
    }
    Bytes::from(out)
}

/// A `phx_reply` payload: `{"status":"ok"|"error","response":<response>}`.
pub fn reply_payload(ok: bool, response: &str) -> Vec<u8> {
    let status = if ok { "ok" } else { "error" };
    format!("{{\"status\":\"{status}\",\"response\":{response}}}").into_bytes()
}

/// `{"reason":"<reason>"}`.
pub fn reason_json(reason: &str) -> String {
    let mut out = String::from("{\"reason\":");
    push_json_str(&mut out, reason);
    out.push('}');
    out
}

/// An `events` push payload: `{"events":[…]}`, each event with `cursor` (= its
/// `seq`) added in front of the stored frame (`{"seq":N,…}`).
pub fn events_payload(events: &[(u64, Bytes)]) -> Vec<u8> {
    let size: usize = events.iter().map(|(_, f)| f.len() + 24).sum();
    let mut out = Vec::with_capacity(size + 16);
    out.extend_from_slice(b"{\"events\":[");
    for (i, (seq, frame)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match frame.strip_prefix(b"{") {
            Some(rest) if rest.first() != Some(&b'}') => {
                out.extend_from_slice(format!("{{\"cursor\":{seq},").as_bytes());
                out.extend_from_slice(rest);
            }
            Some(_) => out.extend_from_slice(format!("{{\"cursor\":{seq}}}").as_bytes()),
            None => out.extend_from_slice(frame),
        }
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_both_generations() {
        let v2 = decode(br#"["1","2","tail:s1","phx_join",{"cursor":3}]"#).unwrap();
        assert_eq!(v2.join_ref, json!("1"));
        assert_eq!(v2.msg_ref, json!("2"));
        assert_eq!(v2.topic, "tail:s1");
        assert_eq!(v2.event, "phx_join");
        assert_eq!(v2.payload, json!({"cursor": 3}));
        let v1 =
            decode(br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":7}"#).unwrap();
        assert_eq!(v1.join_ref, Value::Null);
        assert_eq!(v1.msg_ref, json!(7));
        assert_eq!(v1.topic, "phoenix");
        for bad in [
            &b"nope"[..],
            br#"["1","2","t","e"]"#,
            br#"[1,2,3,"e",{}]"#,
            br#"["1",{},"t","e",{}]"#,
            br#"{"topic":"t","payload":{}}"#,
            br#"42"#,
        ] {
            assert!(decode(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encodes_replies_and_pushes() {
        let reply = encode(
            Vsn::V2,
            &json!("1"),
            &json!("2"),
            "tail:a\"b",
            "phx_reply",
            &reply_payload(false, &reason_json("invalid_cursor")),
        );
        let parsed: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            parsed,
            json!(["1", "2", "tail:a\"b", "phx_reply", {"status": "error", "response": {"reason": "invalid_cursor"}}])
        );
        let v1 = encode(
            Vsn::V1,
            &Value::Null,
            &json!(5),
            "phoenix",
            "phx_reply",
            &reply_payload(true, "{}"),
        );
        let parsed: Value = serde_json::from_slice(&v1).unwrap();
        assert_eq!(
            parsed,
            json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": 5, "join_ref": null})
        );
    }

    #[test]
    fn events_carry_cursor() {
        let events = vec![
            (4, Bytes::from_static(br#"{"seq":4,"type":"x"}"#)),
            (5, Bytes::from_static(br#"{"seq":5,"type":"y"}"#)),
        ];
        let parsed: Value = serde_json::from_slice(&events_payload(&events)).unwrap();
        assert_eq!(
            parsed,
            json!({"events": [{"cursor": 4, "seq": 4, "type": "x"}, {"cursor": 5, "seq": 5, "type": "y"}]})
        );
        let parsed: Value = serde_json::from_slice(&events_payload(&[])).unwrap();
        assert_eq!(parsed, json!({"events": []}));
    }

    #[test]
    fn vsn_selection() {
        assert_eq!(Vsn::parse(None), Some(Vsn::V1));
        assert_eq!(Vsn::parse(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::parse(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::parse(Some("3.0.0")), None);
        assert_eq!(Vsn::parse(Some("")), None);
    }
}
