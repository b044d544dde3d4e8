//! The gateway's entry point: a verified-token cache in front of a small blocking
//! thread pool that runs [`verify_token`] (and so any JWKS fetch) off the shard cores.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::limits::{
    AUTH_QUEUE_DEPTH, AUTH_WORKERS, VERIFIED_CACHE_CAPACITY, VERIFIED_CACHE_SHARDS,
};
use super::{
    unix_now, verify_token, AuthConfig, AuthFailure, Authenticated, HttpJwksFetcher, JwksCache,
    KeySource,
};

/// Shared by every core (`Arc<AuthService>`); `authenticate` is async and never blocks
/// the calling thread.
pub struct AuthService {
    shared: Arc<Shared>,
    jobs: flume::Sender<Job>,
}

struct Shared {
    cfg: AuthConfig,
    keys: Arc<dyn KeySource + Send + Sync>,
    verified: VerifiedCache,
    now: Arc<dyn Fn() -> u64 + Send + Sync>,
}

struct Job {
    token: String,
    digest: TokenDigest,
    reply: flume::Sender<Result<Authenticated, AuthFailure>>,
}

impl AuthService {
    /// The production service: a [`JwksCache`] over [`HttpJwksFetcher`] for
    /// `cfg.jwks_url`, the system clock, and [`AUTH_WORKERS`] pool threads (which exit
    /// when the service is dropped). Spawning threads at boot must succeed.
    pub fn new(cfg: AuthConfig) -> Arc<Self> {
        let jwks = JwksCache::new(
            Box::new(HttpJwksFetcher::new(&cfg.jwks_url)),
            cfg.jwks_refresh,
        );
        Self::with_key_source(cfg, Arc::new(jwks), Arc::new(unix_now))
    }

    /// As [`AuthService::new`] with the key source and Unix-seconds clock supplied
    /// (tests, or a gateway test harness with fixed keys).
    pub fn with_key_source(
        cfg: AuthConfig,
        keys: Arc<dyn KeySource + Send + Sync>,
        now: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared {
            cfg,
            keys,
            verified: VerifiedCache::new(VERIFIED_CACHE_CAPACITY),
            now,
        });
        let (jobs, queue) = flume::bounded(AUTH_QUEUE_DEPTH);
        for i in 0..AUTH_WORKERS {
            let (shared, queue) = (Arc::clone(&shared), queue.clone());
            std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || work(&shared, &queue))
                .expect("spawning an auth worker thread");
        }
        Arc::new(AuthService { shared, jobs })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.shared.cfg
    }

    /// Authenticates a token found by [`super::find_token`]. A token verified before
    /// and still valid is answered from the cache without leaving this thread;
    /// otherwise verification runs on the pool and this awaits its reply (flume, so
    /// any async runtime works). Every failure is [`AuthFailure::Invalid`].
    pub async fn authenticate(&self, token: String) -> Result<Authenticated, AuthFailure> {
        let digest = token_digest(&token);
        if let Some(hit) = self.shared.verified.get(&digest, (self.shared.now)()) {
            return Ok(hit);
        }
        let (reply, answer) = flume::bounded(1);
        if self
            .jobs
            .send_async(Job {
                token,
                digest,
                reply,
            })
            .await
            .is_err()
        {
            tracing::error!("auth pool is gone");
            return Err(AuthFailure::Invalid);
        }
        answer
            .recv_async()
            .await
            .unwrap_or(Err(AuthFailure::Invalid))
    }
}

/// One pool thread: verify, remember successes, reply. Ends when the service is dropped.
fn work(shared: &Shared, queue: &flume::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        if job.reply.is_disconnected() {
            continue; // the request went away while queued
        }
        let now = (shared.now)();
        let result = catch_unwind(AssertUnwindSafe(|| {
            verify_token(&job.token, &*shared.keys, &shared.cfg, now)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("token verification panicked; answering 401");
            Err(AuthFailure::Invalid)
        });
        if let Ok(auth) = &result {
            let refresh_secs = shared.cfg.jwks_refresh.as_secs();
            let valid_until = auth
                .expires_at
                .saturating_add(shared.cfg.leeway_secs)
                .min(now.saturating_add(refresh_secs));
            shared
                .verified
                .insert(job.digest, auth.clone(), valid_until, now);
        }
        let _ = job.reply.send(result);
    }
}

/// The cache key: SHA-256 of the exact token bytes. Equivalent to keying by the token
/// (no practical collisions) at 32 bytes per entry instead of the token's length.
type TokenDigest = [u8; 32];

fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified tokens, sharded by digest so cores rarely share a lock.
///
/// An entry is valid while `now <= valid_until`, where `valid_until` is the token's
/// `exp + leeway` (the moment verification would start failing) but at most one JWKS
/// refresh period after verification, so a key removed from the JWKS stops being
/// honoured about as soon as it would without this cache. When a shard is full, its
/// expired entries are dropped, then — if still full — an arbitrary eighth of it.
struct VerifiedCache {
    shards: Vec<Mutex<HashMap<TokenDigest, Entry>>>,
    per_shard: usize,
}

struct Entry {
    auth: Authenticated,
    valid_until: u64,
}

impl VerifiedCache {
    fn new(capacity: usize) -> Self {
        VerifiedCache {
            shards: (0..VERIFIED_CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_shard: (capacity / VERIFIED_CACHE_SHARDS).max(1),
        }
    }

    fn shard(
        &self,
        digest: &TokenDigest,
    ) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Entry>> {
        let i = usize::from(digest[0]) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, digest: &TokenDigest, now: u64) -> Option<Authenticated> {
        let mut shard = self.shard(digest);
        match shard.get(digest) {
            Some(entry) if now <= entry.valid_until => Some(entry.auth.clone()),
            Some(_) => {
                shard.remove(digest);
                None
            }
            None => None,
        }
    }

    fn insert(&self, digest: TokenDigest, auth: Authenticated, valid_until: u64, now: u64) {
        let mut shard = self.shard(&digest);
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, e| now <= e.valid_until);
            if shard.len() >= self.per_shard {
                let victims: Vec<TokenDigest> = shard
                    .keys()
                    .take((self.per_shard / 8).max(1))
                    .copied()
                    .collect();
                for k in &victims {
                    shard.remove(k);
                }
            }
        }
        shard.insert(digest, Entry { auth, valid_until });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::principal::AuthContext;
    use crate::auth::testkit::{self, block_on, claims, sign, TestKeys, KID, NOW};
    use jwt_simple::algorithms::RS256PublicKey;
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts key lookups, so tests can tell a cache hit from a verification.
    #[derive(Default)]
    struct Counting(AtomicUsize);
    impl KeySource for Counting {
        fn key(&self, kid: &str) -> Result<RS256PublicKey, AuthFailure> {
            self.0.fetch_add(1, Ordering::SeqCst);
            TestKeys.key(kid)
        }
    }

    struct Fixture {
        service: Arc<AuthService>,
        keys: Arc<Counting>,
        clock: Arc<AtomicU64>,
    }

    impl Fixture {
        fn new(refresh: Duration) -> Self {
            let keys = Arc::new(Counting::default());
            let clock = Arc::new(AtomicU64::new(NOW));
            let mut cfg = testkit::config();
            cfg.jwks_refresh = refresh;
            let now = Arc::clone(&clock);
            let service = AuthService::with_key_source(
                cfg,
                Arc::clone(&keys) as Arc<dyn KeySource + Send + Sync>,
                Arc::new(move || now.load(Ordering::SeqCst)),
            );
            Fixture {
                service,
                keys,
                clock,
            }
        }
        fn at(&self, t: u64) -> &Self {
            self.clock.store(t, Ordering::SeqCst);
            self
        }
        fn auth(&self, token: &str) -> Result<Authenticated, AuthFailure> {
            block_on(self.service.authenticate(token.to_owned()))
        }
        fn lookups(&self) -> usize {
            self.keys.0.load(Ordering::SeqCst)
        }
    }

    fn token_expiring_at(exp: u64) -> String {
        let mut c = claims();
        c["exp"] = json!(exp);
        sign(KID, &c)
    }

    #[test]
    fn verifies_on_the_pool_then_answers_from_the_cache() {
        let f = Fixture::new(Duration::from_secs(60));
        let token = sign(KID, &claims());
        let first = f.auth(&token).unwrap();
        assert_eq!(first.context.principal.actor(), "user:u-42");
        assert_eq!(f.lookups(), 1);
        assert_eq!(f.auth(&token).unwrap(), first);
        assert_eq!(f.lookups(), 1, "second call is a cache hit");
        // A different token (even for the same identity) is verified on its own.
        let mut c = claims();
        c["jti"] = json!("other");
        f.auth(&sign(KID, &c)).unwrap();
        assert_eq!(f.lookups(), 2);
    }

    #[test]
    fn cached_entries_expire_with_the_token() {
        let f = Fixture::new(Duration::from_secs(3600));
        let token = token_expiring_at(NOW + 10);
        f.at(NOW).auth(&token).unwrap();
        f.at(NOW + 10).auth(&token).unwrap();
        f.at(NOW + 11).auth(&token).unwrap(); // exp + leeway(1): still valid
        assert_eq!(f.lookups(), 1);
        assert_eq!(f.at(NOW + 12).auth(&token), Err(AuthFailure::Invalid));
        assert_eq!(
            f.lookups(),
            2,
            "expired entry is not used; verification runs and fails"
        );
        assert_eq!(f.service.shared.verified.len(), 0);
    }

    #[test]
    fn cached_entries_are_reverified_after_a_jwks_refresh_period() {
        let f = Fixture::new(Duration::from_secs(30));
        let token = sign(KID, &claims()); // exp NOW + 300
        f.at(NOW).auth(&token).unwrap();
        f.at(NOW + 30).auth(&token).unwrap();
        assert_eq!(f.lookups(), 1);
        f.at(NOW + 31).auth(&token).unwrap();
        assert_eq!(f.lookups(), 2);
    }

    #[test]
    fn failures_are_not_cached() {
        let f = Fixture::new(Duration::from_secs(60));
        let unknown = testkit::sign_with(KID, &json!({"alg": "RS256", "kid": "ghost"}), &claims());
        for _ in 0..2 {
            assert_eq!(f.auth(&unknown), Err(AuthFailure::Invalid));
        }
        assert_eq!(f.lookups(), 2);
        assert_eq!(f.auth("garbage"), Err(AuthFailure::Invalid));
        assert_eq!(f.service.shared.verified.len(), 0);
    }

    #[test]
    fn many_threads_authenticate_at_once() {
        let f = Fixture::new(Duration::from_secs(60));
        let tokens: Vec<String> = (0..6)
            .map(|i| {
                let mut c = claims();
                c["sub"] = json!(format!("agent:a{i}"));
                sign(KID, &c)
            })
            .collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (service, tokens) = (&f.service, &tokens);
                s.spawn(move || {
                    for (i, token) in tokens.iter().enumerate().cycle().skip(t).take(12) {
                        let a = block_on(service.authenticate(token.clone())).unwrap();
                        assert_eq!(a.context.principal.id, format!("a{i}"));
                    }
                });
            }
        });
        assert!(f.lookups() >= 6 && f.lookups() <= 24, "{}", f.lookups());
    }

    #[test]
    fn cache_is_bounded() {
        let cache = VerifiedCache::new(VERIFIED_CACHE_SHARDS * 8);
        let auth = Authenticated {
            context: AuthContext::none(),
            expires_at: NOW + 100,
        };
        for i in 0..2000u32 {
            let digest = token_digest(&i.to_string());
            cache.insert(digest, auth.clone(), NOW + 100, NOW);
            assert!(cache.get(&digest, NOW).is_some());
        }
        assert!(cache.len() <= VERIFIED_CACHE_SHARDS * 8, "{}", cache.len());
        // Expired entries go first.
        let cache = VerifiedCache::new(VERIFIED_CACHE_SHARDS);
        let old = token_digest("old");
        cache.insert(old, auth.clone(), NOW, NOW);
        for i in 0..200u32 {
            cache.insert(
                token_digest(&i.to_string()),
                auth.clone(),
                NOW + 100,
                NOW + 50,
            );
        }
        assert!(cache.get(&old, NOW).is_none());
        assert!(cache.len() <= VERIFIED_CACHE_SHARDS);
    }
}
