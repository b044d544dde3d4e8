//! S3-compatible adapter (§11.1): chunk objects of 256 seqs in NDJSON and one JSON
//! blob per session, in any S3-compatible store.
//!
//! Requests are presigned with SigV4 by `rusty-s3` (credentials, optional session
//! token, path-style or virtual-host addressing, custom endpoint) and sent with a
//! blocking `ureq` agent (rustls, the process's outbound TLS configuration), with a
//! connect timeout and an overall timeout on every request.
//!
//! Writes are idempotent and safe against a concurrent writer of the same object
//! (two archivers across a leader change): read the object, decide (a chunk:
//! merge, existing lines win; a session blob: keep the newer revision), and write
//! it back conditionally — `If-None-Match: *` when it did not exist,
//! `If-Match: <etag>` otherwise — starting over on `409`/`412`, at most
//! `STARCITE_S3_MAX_WRITE_RETRIES` times.

use std::io::Read;
use std::time::Duration;

use rusty_s3::actions::S3Action;
use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::adapter::{Adapter, ArchiveError, S3Config};
use super::event::{ArchiveEvent, SessionRecord};
use super::layout::{self, event_key, merge_chunk, session_key, session_update, ChunkStore};

/// TCP connect timeout of every request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Overall timeout of every request (connect, send, receive the whole body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Validity of a presigned request URL (it is used at once).
const SIGN_FOR: Duration = Duration::from_secs(300);
/// Upper bound of the first random pause before retrying a conflicting chunk write
/// (doubling per retry, up to 16×).
const CONFLICT_BACKOFF_MS: u64 = 10;
/// Largest object body we accept (a chunk of 256 events of up to 8 MB each).
const MAX_BODY: u64 = 2 << 30;

pub const NDJSON: &str = "application/x-ndjson";
pub const JSON: &str = "application/json";

pub struct S3Adapter {
    bucket: Bucket,
    credentials: Option<Credentials>,
    prefix: String,
    max_write_retries: u32,
    agent: ureq::Agent,
}

/// The precondition of a `PUT`.
#[derive(Debug, Clone, Copy)]
enum Precondition<'a> {
    /// `If-None-Match: *`: only if the object does not exist.
    Absent,
    /// `If-Match: <etag>`: only if the object is still the version we read.
    Matches(&'a str),
}

/// What a conditional `PUT` did.
#[derive(Debug, PartialEq, Eq)]
enum Put {
    Stored,
    /// `409`/`412`: someone else wrote first.
    PreconditionFailed,
}

/// An object read with `GET`.
struct Object {
    body: String,
    etag: Option<String>,
}

fn unavailable(what: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Unavailable(what.to_string())
}

/// The S3 endpoint: the configured one, else AWS's regional endpoint.
fn endpoint_url(config: &S3Config) -> Result<url::Url, ArchiveError> {
    let raw = match &config.endpoint {
        Some(e) => e.trim_end_matches('/').to_owned(),
        None => format!("https://s3.{}.amazonaws.com", config.region),
    };
    url::Url::parse(&raw).map_err(|e| unavailable(format!("S3 endpoint {raw:?}: {e}")))
}

/// The blocking HTTP agent: timeouts on every request, and the process's outbound
/// TLS configuration (Mozilla roots plus `STARCITE_TLS_CA_FILE`).
pub fn http_agent() -> Result<ureq::Agent, ArchiveError> {
    let tls = crate::tls::client_config().map_err(|e| unavailable(format!("TLS: {e}")))?;
    Ok(ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tls_config(tls)
        // Keep a few idle connections to the store across requests of a tick.
        .max_idle_connections_per_host(4)
        // Never follow a redirect (a redirected PUT could come back as a GET's 200):
        // a 3xx is an answer we do not expect, hence "unavailable" (§11.1).
        .redirects(0)
        .build())
}

impl S3Adapter {
    pub fn open(config: &S3Config) -> Result<Self, ArchiveError> {
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint_url(config)?,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| unavailable(format!("S3 bucket {:?}: {e:?}", config.bucket)))?;
        let credentials = match (&config.access_key_id, &config.secret_access_key) {
            (Some(key), Some(secret)) => Some(match &config.session_token {
                Some(token) => Credentials::new_with_token(key, secret, token),
                None => Credentials::new(key, secret),
            }),
            // No credentials configured: unsigned (anonymous) requests.
            _ => None,
        };
        Ok(S3Adapter {
            bucket,
            credentials,
            prefix: config.prefix.clone(),
            max_write_retries: config.max_write_retries,
            agent: http_agent()?,
        })
    }

    /// `GET key`: `None` on 404.
    fn get(&self, key: &str) -> Result<Option<Object>, ArchiveError> {
        let url = self
            .bucket
            .get_object(self.credentials.as_ref(), key)
            .sign(SIGN_FOR);
        let resp = match self.agent.request_url("GET", &url).call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(404, _)) => return Ok(None),
            Err(e) => return Err(request_error("GET", key, e)),
        };
        if !(200..300).contains(&resp.status()) {
            return Err(unavailable(format!("GET {key}: HTTP {}", resp.status())));
        }
        let etag = resp.header("etag").map(str::to_owned);
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_BODY)
            .read_to_end(&mut body)
            .map_err(|e| unavailable(format!("GET {key}: reading the body: {e}")))?;
        let body = String::from_utf8(body)
            .map_err(|_| ArchiveError::Unreadable(format!("{key} is not UTF-8")))?;
        Ok(Some(Object { body, etag }))
    }

    /// Conditional `PUT key`.
    fn put(
        &self,
        key: &str,
        body: &[u8],
        content_type: &str,
        precondition: Precondition<'_>,
    ) -> Result<Put, ArchiveError> {
        let mut action = self.bucket.put_object(self.credentials.as_ref(), key);
        let (name, value) = match precondition {
            Precondition::Absent => ("if-none-match", "*"),
            Precondition::Matches(etag) => ("if-match", etag),
        };
        // Signed headers: a proxy cannot strip the precondition without breaking
        // the signature.
        action.headers_mut().insert("content-type", content_type);
        action.headers_mut().insert(name, value);
        let url = action.sign(SIGN_FOR);
        match self
            .agent
            .request_url("PUT", &url)
            .set("Content-Type", content_type)
            .set(name, value)
            .send_bytes(body)
        {
            Ok(resp) if (200..300).contains(&resp.status()) => Ok(Put::Stored),
            Ok(resp) => Err(unavailable(format!("PUT {key}: HTTP {}", resp.status()))),
            Err(ureq::Error::Status(409 | 412, _)) => Ok(Put::PreconditionFailed),
            Err(e) => Err(request_error("PUT", key, e)),
        }
    }
}

impl ChunkStore for S3Adapter {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn get_chunk(&mut self, key: &str) -> Result<Option<String>, ArchiveError> {
        Ok(self.get(key)?.map(|o| o.body))
    }

    /// The §11.1 write algorithm for one `(session, chunk)`.
    fn write_chunk(
        &mut self,
        session: &SessionRecord,
        chunk: u64,
        lines: &[(u64, String)],
    ) -> Result<usize, ArchiveError> {
        let key = event_key(&self.prefix, &session.id, chunk);
        for attempt in 0..=self.max_write_retries {
            conflict_pause(attempt);
            let existing = self.get(&key)?;
            let (body, added) = merge_chunk(existing.as_ref().map(|o| o.body.as_str()), lines)?;
            if added == 0 {
                return Ok(0);
            }
            match self.put(
                &key,
                body.as_bytes(),
                NDJSON,
                precondition(&key, &existing)?,
            )? {
                Put::Stored => return Ok(added),
                Put::PreconditionFailed => continue,
            }
        }
        Err(self.still_conflicting(&key))
    }
}

impl S3Adapter {
    /// One session blob, newer revision wins: GET, compare, conditional PUT,
    /// starting over on a conflict. Returns whether it stored the blob.
    fn write_session(&mut self, session: &SessionRecord) -> Result<bool, ArchiveError> {
        let key = session_key(&self.prefix, &session.id);
        for attempt in 0..=self.max_write_retries {
            conflict_pause(attempt);
            let existing = self.get(&key)?;
            let Some(blob) =
                session_update(&key, existing.as_ref().map(|o| o.body.as_str()), session)
            else {
                return Ok(false);
            };
            match self.put(&key, blob.as_bytes(), JSON, precondition(&key, &existing)?)? {
                Put::Stored => return Ok(true),
                Put::PreconditionFailed => continue,
            }
        }
        Err(self.still_conflicting(&key))
    }

    fn still_conflicting(&self, key: &str) -> ArchiveError {
        unavailable(format!(
            "PUT {key}: still conflicting after {} retries",
            self.max_write_retries
        ))
    }
}

/// Before retry `attempt` (≥ 1) of a conditional write someone else beat: a short
/// random pause, so two writers in lockstep drift apart instead of colliding on
/// every round.
fn conflict_pause(attempt: u32) {
    if attempt > 0 {
        let cap_ms = CONFLICT_BACKOFF_MS << (attempt - 1).min(4);
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % (cap_ms + 1)));
    }
}

/// The precondition replacing exactly what was read (`None`: nothing was there).
fn precondition<'a>(
    key: &str,
    existing: &'a Option<Object>,
) -> Result<Precondition<'a>, ArchiveError> {
    match existing {
        None => Ok(Precondition::Absent),
        Some(Object {
            etag: Some(etag), ..
        }) => Ok(Precondition::Matches(etag)),
        Some(Object { etag: None, .. }) => {
            Err(unavailable(format!("GET {key}: the store sent no ETag")))
        }
    }
}

/// Anything but the statuses the algorithm handles is "unavailable" (§11.1).
fn request_error(method: &str, key: &str, e: ureq::Error) -> ArchiveError {
    match e {
        ureq::Error::Status(code, resp) => {
            let mut text = String::new();
            let _ = resp.into_reader().take(512).read_to_string(&mut text);
            unavailable(format!("{method} {key}: HTTP {code}: {}", text.trim()))
        }
        ureq::Error::Transport(t) => unavailable(format!("{method} {key}: {t}")),
    }
}

impl Adapter for S3Adapter {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn write_sessions(&mut self, sessions: &[SessionRecord]) -> Result<usize, ArchiveError> {
        let mut stored = 0;
        for s in sessions {
            stored += usize::from(self.write_session(s)?);
        }
        Ok(stored)
    }

    fn read_session(&mut self, session: &str) -> Result<Option<SessionRecord>, ArchiveError> {
        let key = session_key(&self.prefix, session);
        match self.get(&key)? {
            None => Ok(None),
            Some(o) => SessionRecord::from_blob(&o.body)
                .map(Some)
                .map_err(|e| ArchiveError::Unreadable(format!("{key}: {e}"))),
        }
    }

    fn write_events(
        &mut self,
        session: &SessionRecord,
        events: &[ArchiveEvent],
    ) -> Result<usize, ArchiveError> {
        layout::write_events(self, session, events)
    }

    fn write_frames(
        &mut self,
        session: &SessionRecord,
        frames: &[(u64, bytes::Bytes)],
    ) -> Result<usize, ArchiveError> {
        layout::write_frames(self, session, frames)
    }

    fn read_events(
        &mut self,
        session: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<ArchiveEvent>, ArchiveError> {
        layout::read_events(self, session, from, to)
    }

    fn read_frames(
        &mut self,
        session: &str,
        tenant_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, bytes::Bytes)>, ArchiveError> {
        layout::read_frames(self, session, tenant_id, from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        S3Config {
            bucket: "archive".into(),
            region: "eu-west-1".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            access_key_id: Some("AK".into()),
            secret_access_key: Some("SK".into()),
            session_token: Some("TOKEN".into()),
            path_style: true,
            prefix: "starcite".into(),
            max_write_retries: 4,
        }
    }

    #[test]
    fn presigned_urls_use_the_configured_addressing_and_token() {
        let a = S3Adapter::open(&config()).unwrap();
        let url = a
            .bucket
            .get_object(a.credentials.as_ref(), "starcite/events/v1/YQ/1.ndjson")
            .sign(SIGN_FOR);
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        assert!(url
            .path()
            .starts_with("/archive/starcite/events/v1/YQ/1.ndjson"));
        let q = url.query().unwrap();
        assert!(q.contains("X-Amz-Security-Token=TOKEN"), "{q}");
        assert!(q.contains("eu-west-1"), "{q}");

        let mut c = config();
        c.path_style = false;
        c.endpoint = None;
        let a = S3Adapter::open(&c).unwrap();
        let url = a.bucket.get_object(None, "k").sign(SIGN_FOR);
        assert_eq!(url.host_str(), Some("archive.s3.eu-west-1.amazonaws.com"));
        assert_eq!((url.scheme(), url.path()), ("https", "/k"));
    }

    /// A loopback listener answering every request with `status` (this checks the
    /// status mapping of §11.1 only; the behaviour against a real store is in
    /// tests/archive_s3_adapter.rs).
    fn answering(status: &'static str) -> String {
        answering_by_method(status, status)
    }

    /// Like [`answering`], with one status for GETs and another for the rest.
    fn answering_by_method(get: &'static str, other: &'static str) -> String {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(32) {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if got.starts_with(b"GET ") { get } else { other };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nLocation: http://127.0.0.1:9/elsewhere\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        format!("http://{addr}")
    }

    fn session() -> SessionRecord {
        SessionRecord::created("s", None, "t", ("p", "user"), Default::default(), 0)
    }

    #[test]
    fn statuses_map_as_the_contract_says() {
        let with = |status| {
            let mut c = config();
            c.endpoint = Some(answering(status));
            S3Adapter::open(&c).unwrap()
        };
        // A conflicting session-blob PUT (409/412) is read again and retried, at
        // most STARCITE_S3_MAX_WRITE_RETRIES times, then "unavailable".
        for status in ["412 Precondition Failed", "409 Conflict"] {
            let mut c = config();
            c.endpoint = Some(answering_by_method("404 Not Found", status));
            c.max_write_retries = 2;
            let r = S3Adapter::open(&c).unwrap().write_sessions(&[session()]);
            assert!(
                matches!(&r, Err(ArchiveError::Unavailable(m)) if m.contains("after 2 retries")),
                "{status}: {r:?}"
            );
        }
        let mut c = config();
        c.endpoint = Some(answering_by_method("404 Not Found", "200 OK"));
        let mut a = S3Adapter::open(&c).unwrap();
        assert_eq!(a.write_sessions(&[session()]), Ok(1));
        assert_eq!(a.read_session("s"), Ok(None));
        // A redirect is never followed, and like any other status is "unavailable".
        for status in [
            "307 Temporary Redirect",
            "301 Moved Permanently",
            "500 Oops",
            "403 Forbidden",
        ] {
            let r = with(status).write_sessions(&[session()]);
            assert!(
                matches!(r, Err(ArchiveError::Unavailable(_))),
                "{status}: {r:?}"
            );
            let r = with(status).read_events("s", 1, 10);
            assert!(
                matches!(r, Err(ArchiveError::Unavailable(_))),
                "{status}: {r:?}"
            );
        }
        // 404 on GET is an absent chunk.
        assert_eq!(with("404 Not Found").read_events("s", 1, 10), Ok(vec![]));
    }

    #[test]
    fn an_unreachable_store_is_unavailable_quickly() {
        // Port 9 (discard) on loopback: nothing listens, the connect is refused.
        let mut a = S3Adapter::open(&config()).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            a.read_events("s", 1, 10),
            Err(ArchiveError::Unavailable(_))
        ));
        assert!(started.elapsed() < REQUEST_TIMEOUT);
    }
}
