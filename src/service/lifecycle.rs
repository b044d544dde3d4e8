//! The session lifecycle feed behind the Phoenix `lifecycle` topic.
//!
//! Semantics (upstream's): live only and best effort. A subscriber sees the
//! events published after it subscribed, for its tenant only; there is no
//! replay, no cursor and no delivery guarantee across a disconnect.
//!
//! Where events come from: the node that receives the committed outcome of a
//! session command (create, patch, archive, unarchive) — the node the client
//! called, whichever node leads the group — publishes the event to its own
//! hub and sends it to every other node over the peer transport
//! (`ControlMessage::Lifecycle`), whose inbound handler publishes it to that
//! node's hub. So a subscriber on any node sees every node's events. A
//! command whose outcome the caller never received (a 503 after a timeout,
//! though the entry later committed) publishes nothing; a peer that is
//! disconnected at the time misses the event.
//!
//! Kinds: `session.created` (preceded by `session.activated`, as upstream
//! emits them when a session starts on its owner), `session.updated`,
//! `session.archived` and `session.unarchived` (only when the flag really
//! changed). `session.hydrating`, `session.freezing` and `session.frozen` are
//! never emitted: they describe upstream's per-session processes that are
//! frozen when idle and hydrated back from storage, and here every session of
//! a group stays resident in its replicas' state machines (only archived
//! events leave memory), so nothing is ever frozen or hydrated.
//!
//! Bounds: each subscriber has a queue of [`SUBSCRIBER_QUEUE`] events. A
//! subscriber whose queue is full is dropped (its receiver reports
//! `Disconnected` after draining what it has), so a slow consumer never
//! blocks a publisher or makes the server buffer without bound.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::api::render::format_micros;

/// Events queued per subscriber before it is dropped.
pub const SUBSCRIBER_QUEUE: usize = 1_024;
/// Subscribers per tenant and per node; a subscribe beyond it is refused.
pub const MAX_SUBSCRIBERS_PER_TENANT: usize = 10_000;

pub const CREATED: &str = "session.created";
pub const ACTIVATED: &str = "session.activated";
pub const UPDATED: &str = "session.updated";
pub const ARCHIVED: &str = "session.archived";
pub const UNARCHIVED: &str = "session.unarchived";

/// One lifecycle event: `body` is the whole `{"kind":…,"session_id":…}` object
/// a `lifecycle` push carries as `{"event": body}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub kind: &'static str,
    pub session_id: String,
    pub tenant_id: String,
    pub body: Value,
}

/// The catalog fields an event is built from.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub title: Option<&'a str>,
    pub metadata: &'a Map<String, Value>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub version: u64,
    pub archived: bool,
}

impl LifecycleEvent {
    fn new(kind: &'static str, s: &SessionFacts<'_>, body: Value) -> Self {
        LifecycleEvent {
            kind,
            session_id: s.id.to_owned(),
            tenant_id: s.tenant_id.to_owned(),
            body,
        }
    }

    /// `session.activated` `{kind, session_id, tenant_id}`.
    pub fn activated(s: &SessionFacts<'_>) -> Self {
        let body = json!({"kind": ACTIVATED, "session_id": s.id, "tenant_id": s.tenant_id});
        Self::new(ACTIVATED, s, body)
    }

    /// `session.created` `{kind, session_id, tenant_id, title, metadata, created_at, version}`.
    pub fn created(s: &SessionFacts<'_>) -> Self {
        let body = json!({
            "kind": CREATED,
            "session_id": s.id,
            "tenant_id": s.tenant_id,
            "title": s.title,
            "metadata": s.metadata,
            "created_at": format_micros(s.created_at_us),
            "version": s.version,
        });
        Self::new(CREATED, s, body)
    }

    /// `session.updated` `{kind, session_id, tenant_id, title, metadata, updated_at, version}`.
    pub fn updated(s: &SessionFacts<'_>) -> Self {
        let body = json!({
            "kind": UPDATED,
            "session_id": s.id,
            "tenant_id": s.tenant_id,
            "title": s.title,
            "metadata": s.metadata,
            "updated_at": format_micros(s.updated_at_us),
            "version": s.version,
        });
        Self::new(UPDATED, s, body)
    }

    /// `session.archived` / `session.unarchived` `{kind, session_id, tenant_id, archived}`.
    pub fn archive_state(s: &SessionFacts<'_>) -> Self {
        let kind = if s.archived { ARCHIVED } else { UNARCHIVED };
        let body = json!({
            "kind": kind,
            "session_id": s.id,
            "tenant_id": s.tenant_id,
            "archived": s.archived,
        });
        Self::new(kind, s, body)
    }

    /// The form carried between nodes (`ControlMessage::Lifecycle`): the body.
    pub fn from_body(body: Value) -> Option<Self> {
        let kind = match body.get("kind")?.as_str()? {
            CREATED => CREATED,
            ACTIVATED => ACTIVATED,
            UPDATED => UPDATED,
            ARCHIVED => ARCHIVED,
            UNARCHIVED => UNARCHIVED,
            _ => return None,
        };
        let session_id = body.get("session_id")?.as_str()?.to_owned();
        let tenant_id = body.get("tenant_id")?.as_str()?.to_owned();
        Some(LifecycleEvent {
            kind,
            session_id,
            tenant_id,
            body,
        })
    }
}

/// This node's subscribers, by tenant. Shared by every core (publishing is a
/// short lock and non-blocking sends).
#[derive(Default)]
pub struct LifecycleHub {
    subscribers: Mutex<HashMap<String, Vec<flume::Sender<LifecycleEvent>>>>,
}

impl LifecycleHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A live feed of `tenant`'s events from now on. The receiver disconnects
    /// if it falls [`SUBSCRIBER_QUEUE`] events behind (the subscriber should
    /// then close its channel; the client rejoins). `None` when the tenant has
    /// [`MAX_SUBSCRIBERS_PER_TENANT`] subscribers on this node already.
    pub fn subscribe(&self, tenant: &str) -> Option<flume::Receiver<LifecycleEvent>> {
        let (tx, rx) = flume::bounded(SUBSCRIBER_QUEUE);
        let mut subs = self.lock();
        let list = subs.entry(tenant.to_owned()).or_default();
        list.retain(|s| !s.is_disconnected());
        if list.len() >= MAX_SUBSCRIBERS_PER_TENANT {
            return None;
        }
        list.push(tx);
        Some(rx)
    }

    /// Delivers `event` to this node's subscribers of its tenant; never blocks.
    pub fn publish(&self, event: &LifecycleEvent) {
        let mut subs = self.lock();
        let Some(list) = subs.get_mut(&event.tenant_id) else {
            return;
        };
        // A full queue drops the subscriber (its sender goes away here).
        list.retain(|s| s.try_send(event.clone()).is_ok());
        if list.is_empty() {
            subs.remove(&event.tenant_id);
        }
    }

    /// Live subscribers on this node (metrics, tests).
    pub fn subscriber_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Vec<flume::Sender<LifecycleEvent>>>> {
        // A panic while holding this lock leaves plain data; keep serving.
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(id: &'a str, tenant: &'a str, meta: &'a Map<String, Value>) -> SessionFacts<'a> {
        SessionFacts {
            id,
            tenant_id: tenant,
            title: Some("T"),
            metadata: meta,
            created_at_us: 1_000_000,
            updated_at_us: 2_000_000,
            version: 3,
            archived: true,
        }
    }

    #[test]
    fn tenants_are_isolated_and_order_is_kept() {
        let hub = LifecycleHub::new();
        let meta = Map::new();
        let a = hub.subscribe("acme").unwrap();
        let b = hub.subscribe("other").unwrap();
        hub.publish(&LifecycleEvent::created(&facts("s1", "acme", &meta)));
        hub.publish(&LifecycleEvent::updated(&facts("s1", "acme", &meta)));
        hub.publish(&LifecycleEvent::created(&facts("s2", "other", &meta)));
        let got: Vec<_> = a.try_iter().map(|e| (e.kind, e.session_id)).collect();
        assert_eq!(
            got,
            vec![(CREATED, "s1".to_owned()), (UPDATED, "s1".to_owned())]
        );
        let got: Vec<_> = b.try_iter().map(|e| e.session_id).collect();
        assert_eq!(got, vec!["s2".to_owned()]);
    }

    #[test]
    fn bodies_have_upstreams_fields() {
        let mut meta = Map::new();
        meta.insert("k".into(), json!("v"));
        let f = facts("s1", "acme", &meta);
        assert_eq!(
            LifecycleEvent::created(&f).body,
            json!({"kind":"session.created","session_id":"s1","tenant_id":"acme","title":"T",
                   "metadata":{"k":"v"},"created_at":"1970-01-01T00:00:01.000000Z","version":3})
        );
        assert_eq!(
            LifecycleEvent::updated(&f).body,
            json!({"kind":"session.updated","session_id":"s1","tenant_id":"acme","title":"T",
                   "metadata":{"k":"v"},"updated_at":"1970-01-01T00:00:02.000000Z","version":3})
        );
        assert_eq!(
            LifecycleEvent::archive_state(&f).body,
            json!({"kind":"session.archived","session_id":"s1","tenant_id":"acme","archived":true})
        );
        let un = SessionFacts {
            archived: false,
            ..f
        };
        assert_eq!(LifecycleEvent::archive_state(&un).kind, UNARCHIVED);
        assert_eq!(
            LifecycleEvent::activated(&f).body,
            json!({"kind":"session.activated","session_id":"s1","tenant_id":"acme"})
        );
        let ev = LifecycleEvent::updated(&f);
        assert_eq!(LifecycleEvent::from_body(ev.body.clone()), Some(ev));
        assert_eq!(LifecycleEvent::from_body(json!({"kind":"nope"})), None);
    }

    #[test]
    fn a_slow_subscriber_is_dropped_and_never_blocks() {
        let hub = LifecycleHub::new();
        let meta = Map::new();
        let slow = hub.subscribe("acme").unwrap();
        let fast = hub.subscribe("acme").unwrap();
        let ev = LifecycleEvent::created(&facts("s", "acme", &meta));
        for i in 0..SUBSCRIBER_QUEUE + 10 {
            hub.publish(&ev);
            // The fast one keeps up.
            assert!(fast.try_recv().is_ok(), "event {i}");
        }
        assert_eq!(hub.subscriber_count(), 1);
        // The slow one drains what it had, then learns it was dropped.
        assert_eq!(slow.try_iter().count(), SUBSCRIBER_QUEUE);
        assert!(matches!(
            slow.try_recv(),
            Err(flume::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn dropped_receivers_are_forgotten() {
        let hub = LifecycleHub::new();
        let meta = Map::new();
        drop(hub.subscribe("acme").unwrap());
        hub.publish(&LifecycleEvent::created(&facts("s", "acme", &meta)));
        assert_eq!(hub.subscriber_count(), 0);
    }
}
