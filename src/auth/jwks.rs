//! The issuer's JSON Web Key Set (§2.3): strict parsing, a blocking HTTP fetcher, and
//! a thread-safe cache shared by every core.
//!
//! Lives on the auth pool threads only: [`JwksCache::key_blocking`] may wait for an
//! HTTP fetch (bounded by [`limits::JWKS_TOTAL_TIMEOUT`] / [`limits::JWKS_WAIT_BOUND`]).

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::algorithms::RS256PublicKey;
use serde_json::Value;

use super::limits;
use super::{AuthFailure, KeySource};

/// §2.3 parsing: a JSON object with a non-empty `keys` array in which **every** key has
/// `kty="RSA"`, `use="sig"`, `alg="RS256"` and non-empty string `kid`, `n`, `e`
/// (unpadded base64url), builds a valid RSA key, and has a `kid` of its own. Any
/// violation rejects the whole set (fail closed); the error says which key and why.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, RS256PublicKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = match doc.get("keys") {
        Some(Value::Array(keys)) if !keys.is_empty() => keys,
        _ if !doc.is_object() => return Err("not a JSON object".into()),
        _ => return Err("\"keys\" is not a non-empty array".into()),
    };
    let mut set = HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let (kid, public) = parse_key(key).map_err(|why| format!("key #{i}: {why}"))?;
        if set.insert(kid.clone(), public).is_some() {
            return Err(format!("key #{i}: duplicate kid {kid:?}"));
        }
    }
    Ok(set)
}

fn parse_key(key: &Value) -> Result<(String, RS256PublicKey), String> {
    let field = |name: &str| match key.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        _ => Err(format!("{name} is not a non-empty string")),
    };
    for (name, want) in [("kty", "RSA"), ("use", "sig"), ("alg", "RS256")] {
        if field(name)? != want {
            return Err(format!("{name} is not {want:?}"));
        }
    }
    let kid = field("kid")?;
    let n = URL_SAFE_NO_PAD
        .decode(field("n")?)
        .map_err(|_| "n is not base64url".to_string())?;
    let e = URL_SAFE_NO_PAD
        .decode(field("e")?)
        .map_err(|_| "e is not base64url".to_string())?;
    let public = RS256PublicKey::from_components(&n, &e)
        .map_err(|e| format!("not a usable RSA key: {e}"))?;
    Ok((kid.to_owned(), public))
}

/// One GET of the JWKS document.
pub trait JwksFetcher: Send + Sync {
    /// The response body on `200`; otherwise a reason for the logs.
    fn fetch(&self) -> Result<Vec<u8>, String>;
}

/// The production fetcher: blocking `ureq` GET with `Accept: application/json`, no
/// retries, no redirects, only `200` accepted, connect/total timeouts and a body cap
/// from [`limits`]. TLS is rustls with the ring provider and the node's outbound
/// client configuration ([`crate::tls::client_config`]: Mozilla roots plus
/// `STARCITE_TLS_CA_FILE`); the server certificate is always verified.
pub struct HttpJwksFetcher {
    url: String,
    /// `Err`: the TLS client configuration could not be built; every fetch fails.
    agent: Result<ureq::Agent, String>,
}

impl HttpJwksFetcher {
    pub fn new(url: &str) -> Self {
        match crate::tls::client_config() {
            Ok(tls) => Self::with_tls(url, tls),
            Err(e) => HttpJwksFetcher {
                url: url.to_owned(),
                agent: Err(format!("TLS client configuration: {e}")),
            },
        }
    }

    /// A fetcher that verifies HTTPS servers with `tls` (e.g.
    /// [`crate::tls::client_config_with_ca`]).
    pub fn with_tls(url: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(limits::JWKS_CONNECT_TIMEOUT)
            .timeout(limits::JWKS_TOTAL_TIMEOUT)
            .redirects(0)
            .tls_config(tls)
            .build();
        HttpJwksFetcher {
            url: url.to_owned(),
            agent: Ok(agent),
        }
    }
}

impl JwksFetcher for HttpJwksFetcher {
    fn fetch(&self) -> Result<Vec<u8>, String> {
        let agent = self.agent.as_ref().map_err(Clone::clone)?;
        let response = match agent
            .get(&self.url)
            .set("Accept", "application/json")
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => return Err(format!("HTTP status {code}")),
            Err(e) => return Err(format!("request failed: {e}")),
        };
        if response.status() != 200 {
            return Err(format!("HTTP status {}", response.status()));
        }
        let mut body = Vec::new();
        response
            .into_reader()
            .take(limits::JWKS_MAX_BODY_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading body: {e}"))?;
        if body.len() as u64 > limits::JWKS_MAX_BODY_BYTES {
            return Err(format!("body over {} bytes", limits::JWKS_MAX_BODY_BYTES));
        }
        Ok(body)
    }
}

type KeySet = Arc<HashMap<String, RS256PublicKey>>;
type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// Thread-safe JWKS cache (one per node, shared by the auth pool threads).
///
/// * Keys are used for `refresh` from the moment their fetch started; there is no
///   background refresh, and an expired set is never used as a fallback.
/// * A missing or expired set is fetched on demand. A fresh set lacking the `kid` is
///   refetched once — at most one refetch per [`limits::JWKS_MIN_REFETCH_INTERVAL`]
///   (deliberately stricter than the reference, which refetches for every unknown
///   `kid`); inside that interval an unknown `kid` fails at once. A failed fetch is
///   likewise not retried within the interval.
/// * Fetches are single-flight: concurrent callers wait (at most
///   [`limits::JWKS_WAIT_BOUND`]) for the one in progress and use its result.
/// * A failed fetch or parse leaves the cache as it was and fails the callers that
///   needed it with [`AuthFailure::Invalid`].
pub struct JwksCache {
    fetcher: Box<dyn JwksFetcher>,
    refresh: Duration,
    now: Clock,
    state: Mutex<CacheState>,
    fetch_done: Condvar,
}

#[derive(Default)]
struct CacheState {
    /// The last good set and when its fetch started.
    keys: Option<(KeySet, Instant)>,
    in_flight: bool,
    /// When the last fetch started, and whether it succeeded.
    last_attempt: Option<(Instant, bool)>,
}

impl JwksCache {
    pub fn new(fetcher: Box<dyn JwksFetcher>, refresh: Duration) -> Self {
        Self::with_clock(fetcher, refresh, Box::new(Instant::now))
    }

    /// As [`JwksCache::new`] with an injected clock for freshness and rate limiting
    /// (waits for an in-flight fetch still use real time).
    pub fn with_clock(fetcher: Box<dyn JwksFetcher>, refresh: Duration, now: Clock) -> Self {
        JwksCache {
            fetcher,
            refresh,
            now,
            state: Mutex::new(CacheState::default()),
            fetch_done: Condvar::new(),
        }
    }

    /// The key for `kid`, fetching the set if needed. **Blocks** (HTTP, or waiting for
    /// another caller's fetch): call it only from the auth pool, never on a shard core.
    pub fn key_blocking(&self, kid: &str) -> Result<RS256PublicKey, AuthFailure> {
        let deadline = Instant::now() + limits::JWKS_WAIT_BOUND;
        let mut state = self.lock();
        // Set once a fetch has completed during this call: then the answer is final.
        let mut saw_fetch = false;
        loop {
            let now = (self.now)();
            let fresh = state
                .keys
                .as_ref()
                .filter(|(_, at)| now.saturating_duration_since(*at) < self.refresh)
                .map(|(keys, _)| Arc::clone(keys));
            if let Some(key) = fresh.as_ref().and_then(|keys| keys.get(kid)) {
                return Ok(key.clone());
            }
            if state.in_flight {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!("timed out waiting for a JWKS fetch");
                    return Err(AuthFailure::Invalid);
                }
                state = self
                    .fetch_done
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                saw_fetch |= !state.in_flight;
                continue;
            }
            if saw_fetch || !self.may_fetch(&state, now, fresh.is_some()) {
                return Err(AuthFailure::Invalid);
            }
            state = self.fetch(state, now);
            saw_fetch = true;
        }
    }

    /// Rate limit: one fetch per interval, except that an expired set whose last
    /// fetch succeeded is always refetched (relevant only when `refresh` < interval).
    fn may_fetch(&self, state: &CacheState, now: Instant, have_fresh_set: bool) -> bool {
        match state.last_attempt {
            None => true,
            Some((at, ok)) => {
                now.saturating_duration_since(at) >= limits::JWKS_MIN_REFETCH_INTERVAL
                    || (ok && !have_fresh_set)
            }
        }
    }

    /// Runs one fetch with the lock released; publishes the result and wakes waiters.
    fn fetch<'a>(
        &'a self,
        mut state: MutexGuard<'a, CacheState>,
        started: Instant,
    ) -> MutexGuard<'a, CacheState> {
        state.in_flight = true;
        state.last_attempt = Some((started, false));
        drop(state);
        let mut publish = Publish {
            cache: self,
            started,
            keys: None,
        };
        match self.fetcher.fetch().and_then(|body| parse_jwks(&body)) {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS fetched");
                publish.keys = Some(keys);
            }
            Err(why) => tracing::warn!(reason = %why, "JWKS fetch failed; cache unchanged"),
        }
        drop(publish);
        self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends a fetch on drop — also if the fetcher panics, so waiters are never stranded:
/// clears `in_flight`, stores a successful set, wakes every waiter.
struct Publish<'a> {
    cache: &'a JwksCache,
    started: Instant,
    keys: Option<HashMap<String, RS256PublicKey>>,
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        state.in_flight = false;
        if let Some(keys) = self.keys.take() {
            state.keys = Some((Arc::new(keys), self.started));
            state.last_attempt = Some((self.started, true));
        }
        self.cache.fetch_done.notify_all();
    }
}

impl KeySource for JwksCache {
    /// Blocking: see [`JwksCache::key_blocking`].
    fn key(&self, kid: &str) -> Result<RS256PublicKey, AuthFailure> {
        self.key_blocking(kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testkit::{self, jwk, jwks_body, KID, KID2};
    use serde_json::json;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn parses_a_good_set() {
        let set = parse_jwks(jwks_body(&[KID, KID2]).as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(
            set[KID].to_components().n,
            testkit::key_pair(KID).public_key().to_components().n
        );
    }

    #[test]
    fn one_bad_key_rejects_the_whole_set() {
        let good = jwk(KID2);
        let mutations: Vec<(&str, Value)> = vec![
            ("kty", json!("EC")),
            ("kty", Value::Null),
            ("use", json!("enc")),
            ("alg", json!("RS384")),
            ("kid", json!("")),
            ("kid", json!(5)),
            ("n", json!("")),
            ("n", json!("not base64!")),
            ("e", json!(65537)),
            ("e", json!("AQAB==")),
        ];
        for (field, value) in mutations {
            let mut bad = jwk(KID);
            if value.is_null() {
                bad.as_object_mut().unwrap().remove(field);
            } else {
                bad[field] = value.clone();
            }
            let body = json!({"keys": [good.clone(), bad]}).to_string();
            let err = parse_jwks(body.as_bytes()).unwrap_err();
            assert!(err.starts_with("key #1"), "{field}={value}: {err}");
        }
        for missing in ["kty", "use", "alg", "kid", "n", "e"] {
            let mut bad = jwk(KID);
            bad.as_object_mut().unwrap().remove(missing);
            let body = json!({"keys": [bad, good.clone()]}).to_string();
            assert!(parse_jwks(body.as_bytes()).is_err(), "missing {missing}");
        }
    }

    #[test]
    fn duplicate_kid_and_bad_documents() {
        let dup = json!({"keys": [jwk(KID), jwk(KID)]}).to_string();
        assert!(parse_jwks(dup.as_bytes())
            .unwrap_err()
            .contains("duplicate kid"));
        for body in [
            "",
            "[]",
            "{}",
            r#"{"keys":[]}"#,
            r#"{"keys":{}}"#,
            r#"{"keys":null}"#,
            r#"{"keys":[1]}"#,
            "nope",
        ] {
            assert!(parse_jwks(body.as_bytes()).is_err(), "{body:?}");
        }
    }

    /// Serves scripted bodies (or failures) and counts fetches.
    struct Scripted {
        calls: AtomicUsize,
        responses: Mutex<Vec<Result<String, String>>>,
        delay: Duration,
    }

    impl Scripted {
        fn new(responses: Vec<Result<String, String>>) -> Arc<Self> {
            Self::slow(responses, Duration::ZERO)
        }
        fn slow(mut responses: Vec<Result<String, String>>, delay: Duration) -> Arc<Self> {
            responses.reverse();
            Arc::new(Scripted {
                calls: AtomicUsize::new(0),
                responses: Mutex::new(responses),
                delay,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl JwksFetcher for Arc<Scripted> {
        fn fetch(&self) -> Result<Vec<u8>, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            let next = self.responses.lock().unwrap().pop();
            next.unwrap_or_else(|| Err("script exhausted".into()))
                .map(String::into_bytes)
        }
    }

    /// A manual clock: `advance` moves it forward.
    #[derive(Clone)]
    struct ManualClock(Arc<Mutex<Instant>>);
    impl ManualClock {
        fn new() -> Self {
            ManualClock(Arc::new(Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
        fn boxed(&self) -> Clock {
            let me = self.clone();
            Box::new(move || *me.0.lock().unwrap())
        }
    }

    fn cache(f: &Arc<Scripted>, refresh_ms: u64, clock: &ManualClock) -> JwksCache {
        JwksCache::with_clock(
            Box::new(Arc::clone(f)),
            Duration::from_millis(refresh_ms),
            clock.boxed(),
        )
    }

    #[test]
    fn keys_are_cached_for_the_refresh_period() {
        let f = Scripted::new(vec![Ok(jwks_body(&[KID])), Ok(jwks_body(&[KID]))]);
        let clock = ManualClock::new();
        let c = cache(&f, 60_000, &clock);
        assert!(c.key_blocking(KID).is_ok());
        clock.advance(Duration::from_millis(59_999));
        assert!(c.key_blocking(KID).is_ok());
        assert_eq!(f.calls(), 1);
        clock.advance(Duration::from_millis(1));
        assert!(c.key_blocking(KID).is_ok());
        assert_eq!(f.calls(), 2, "expired set is refetched");
    }

    #[test]
    fn unknown_kid_triggers_exactly_one_refetch() {
        let f = Scripted::new(vec![Ok(jwks_body(&[KID])), Ok(jwks_body(&[KID, KID2]))]);
        let clock = ManualClock::new();
        let c = cache(&f, 60_000, &clock);
        assert!(c.key_blocking(KID).is_ok());
        clock.advance(Duration::from_secs(2));
        // Rotation: KID2 appears in the second fetch.
        assert!(c.key_blocking(KID2).is_ok());
        assert_eq!(f.calls(), 2);
        // Still-unknown kid: one refetch (script now fails), then 401, no loop.
        clock.advance(Duration::from_secs(2));
        assert_eq!(c.key_blocking("ghost").unwrap_err(), AuthFailure::Invalid);
        assert_eq!(f.calls(), 3);
        // The failed fetch left the cache alone: known keys still work.
        assert!(c.key_blocking(KID).is_ok());
        assert!(c.key_blocking(KID2).is_ok());
        assert_eq!(f.calls(), 3);
    }

    #[test]
    fn refetches_are_rate_limited() {
        let f = Scripted::new(vec![
            Ok(jwks_body(&[KID])),
            Ok(jwks_body(&[KID])),
            Ok(jwks_body(&[KID, KID2])),
        ]);
        let clock = ManualClock::new();
        let c = cache(&f, 60_000, &clock);
        assert!(c.key_blocking(KID).is_ok());
        // Within a second of the last fetch: unknown kids fail without fetching.
        for kid in ["a", "b", "c"] {
            assert_eq!(c.key_blocking(kid).unwrap_err(), AuthFailure::Invalid);
        }
        assert_eq!(f.calls(), 1);
        clock.advance(Duration::from_millis(1000));
        assert_eq!(c.key_blocking("a").unwrap_err(), AuthFailure::Invalid);
        assert_eq!(f.calls(), 2);
        assert_eq!(c.key_blocking(KID2).unwrap_err(), AuthFailure::Invalid);
        assert_eq!(f.calls(), 2);
        clock.advance(Duration::from_millis(1000));
        assert!(c.key_blocking(KID2).is_ok());
        assert_eq!(f.calls(), 3);
    }

    #[test]
    fn failed_fetch_is_not_cached_and_expired_set_is_no_fallback() {
        let f = Scripted::new(vec![
            Err("down".into()),
            Ok("{\"keys\":[]}".into()),
            Ok(jwks_body(&[KID])),
            Err("down again".into()),
        ]);
        let clock = ManualClock::new();
        let c = cache(&f, 5_000, &clock);
        assert_eq!(c.key_blocking(KID).unwrap_err(), AuthFailure::Invalid);
        // Failure is not retried within the interval...
        assert_eq!(c.key_blocking(KID).unwrap_err(), AuthFailure::Invalid);
        assert_eq!(f.calls(), 1);
        // ...and is retried after it. An unparsable set is a failure too.
        clock.advance(Duration::from_secs(1));
        assert_eq!(c.key_blocking(KID).unwrap_err(), AuthFailure::Invalid);
        clock.advance(Duration::from_secs(1));
        assert!(c.key_blocking(KID).is_ok());
        assert_eq!(f.calls(), 3);
        // Expired, and the refetch fails: the old set is not used.
        clock.advance(Duration::from_secs(5));
        assert_eq!(c.key_blocking(KID).unwrap_err(), AuthFailure::Invalid);
        assert_eq!(f.calls(), 4);
    }

    #[test]
    fn concurrent_callers_share_one_fetch() {
        let f = Scripted::slow(vec![Ok(jwks_body(&[KID]))], Duration::from_millis(200));
        let c = Arc::new(JwksCache::new(
            Box::new(Arc::clone(&f)),
            Duration::from_secs(60),
        ));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    c.key_blocking(if i % 2 == 0 { KID } else { "ghost" })
                        .is_ok()
                })
            })
            .collect();
        let ok: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ok, [true, false, true, false, true, false, true, false]);
        assert_eq!(f.calls(), 1);
    }

    /// Serves each scripted `(status line, body)` once on 127.0.0.1 and records the
    /// request heads it saw.
    fn serve(
        responses: Vec<(&'static str, String)>,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let handle = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for (status, body) in responses {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                heads.push(head);
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).unwrap();
                let _ = stream.write_all(body.as_bytes());
            }
            heads
        });
        (url, handle)
    }

    #[test]
    fn http_fetcher_accepts_only_200_and_caps_the_body() {
        let big = format!(
            "{{\"keys\":[],\"pad\":\"{}\"}}",
            "x".repeat(limits::JWKS_MAX_BODY_BYTES as usize)
        );
        let (url, server) = serve(vec![
            ("200 OK", jwks_body(&[KID])),
            ("201 Created", jwks_body(&[KID])),
            ("302 Found", String::new()),
            ("500 Internal Server Error", jwks_body(&[KID])),
            ("200 OK", big),
        ]);
        let fetcher = HttpJwksFetcher::new(&url);
        let body = fetcher.fetch().unwrap();
        assert_eq!(parse_jwks(&body).unwrap().len(), 1);
        for want in ["201", "302", "500", "body over"] {
            let err = fetcher.fetch().unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let heads = server.join().unwrap();
        assert!(
            heads[0].starts_with("GET /.well-known/jwks.json HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains("\r\naccept: application/json\r\n"),
            "{}",
            heads[0]
        );
    }

    #[test]
    fn http_fetcher_reports_connection_failure() {
        // Bind then drop: nothing listens on that port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = JwksCache::new(
            Box::new(HttpJwksFetcher::new(&format!(
                "http://127.0.0.1:{port}/jwks"
            ))),
            Duration::from_secs(60),
        );
        assert_eq!(c.key_blocking(KID).unwrap_err(), AuthFailure::Invalid);
    }

    #[test]
    fn cache_over_real_http() {
        let (url, server) = serve(vec![("200 OK", jwks_body(&[KID, KID2]))]);
        let c = JwksCache::new(
            Box::new(HttpJwksFetcher::new(&url)),
            Duration::from_secs(60),
        );
        let token = testkit::sign(KID2, &testkit::claims());
        let a = crate::auth::verify_token(&token, &c, &testkit::config(), testkit::NOW).unwrap();
        assert_eq!(a.context.principal.actor(), "user:u-42");
        assert!(c.key_blocking(KID).is_ok());
        assert_eq!(server.join().unwrap().len(), 1);
    }
}
