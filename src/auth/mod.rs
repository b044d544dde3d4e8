//! JWT authentication (contract §2): finding the bearer token, verifying it against
//! the issuer's JWKS, and turning its claims into an [`AuthContext`].
//!
//! ```text
//!  shard core (async, never blocks)             auth pool (2 std threads)
//!  ------------------------------------         -----------------------------------
//!  find_token(headers, query, upgrade)
//!    | Err(Missing|Malformed) -> 401
//!  AuthService::authenticate(token)
//!    | verified-token cache hit -> Ok
//!    | miss: job --(bounded flume)-----------> verify_token(token, &JwksCache, cfg, now)
//!    |                                           |  header / alg / kid checks (no key use)
//!    |                                           |  JwksCache::key_blocking(kid)
//!    |                                           |     (ureq GET on this thread, single-flight)
//!    |                                           |  RS256 signature, then claims (§2.4)
//!    <---------------(flume reply)---------------+  Ok -> verified-token cache
//! ```
//!
//! Tokens never reach logs: failures are logged by reason only.

mod bearer;
mod config;
mod jwks;
mod service;
mod verify;

#[cfg(test)]
mod testkit;

pub use bearer::find_token;
pub use config::{auth_config_from_env, AuthConfig};
pub use jwks::{parse_jwks, HttpJwksFetcher, JwksCache, JwksFetcher};
pub use service::AuthService;
pub use verify::{verify_token, KeySource};

use crate::api::error::ApiError;
use crate::api::principal::AuthContext;

/// Named bounds of the auth layer, in one place.
pub mod limits {
    use std::time::Duration;

    /// Worker threads verifying tokens and fetching the JWKS off the shard cores.
    pub const AUTH_WORKERS: usize = 2;
    /// Verification jobs queued for the pool before `authenticate` waits for room.
    pub const AUTH_QUEUE_DEPTH: usize = 1024;
    /// Verified tokens remembered at once (spread over the cache's shards).
    pub const VERIFIED_CACHE_CAPACITY: usize = 100_000;
    /// Independent locks of the verified-token cache, so cores rarely contend.
    pub const VERIFIED_CACHE_SHARDS: usize = 16;
    /// A JWKS refetch (for an unknown `kid`, or after a failed fetch) starts at most
    /// this often, so random `kid`s cannot hammer the issuer.
    pub const JWKS_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(1);
    /// Longest a caller waits for a fetch another caller started.
    pub const JWKS_WAIT_BOUND: Duration = Duration::from_secs(5);
    /// JWKS HTTP connect timeout.
    pub const JWKS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// JWKS HTTP timeout for the whole request, body included.
    pub const JWKS_TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
    /// Largest JWKS body accepted.
    pub const JWKS_MAX_BODY_BYTES: u64 = 1024 * 1024;

    const _: () = assert!(
        VERIFIED_CACHE_CAPACITY / VERIFIED_CACHE_SHARDS * VERIFIED_CACHE_SHARDS
            == VERIFIED_CACHE_CAPACITY
    );
    const _: () = assert!(AUTH_WORKERS > 0 && AUTH_QUEUE_DEPTH > 0);
}

/// Why a request is unauthenticated; each maps to one `WWW-Authenticate` value (§2.5).
/// The response is always 401 with [`ApiError::unauthorized`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No token at all.
    Missing,
    /// A malformed `Authorization` header or `access_token` query value.
    Malformed,
    /// Everything else: bad signature, unknown `kid`, JWKS down, expired, bad claims.
    Invalid,
}

impl AuthFailure {
    /// The exact `WWW-Authenticate` header value of §2.5.
    pub fn www_authenticate(&self) -> &'static str {
        match self {
            AuthFailure::Missing => r#"Bearer realm="starcite""#,
            AuthFailure::Malformed => {
                r#"Bearer realm="starcite", error="invalid_request", error_description="Malformed bearer token""#
            }
            AuthFailure::Invalid => r#"Bearer realm="starcite", error="invalid_token""#,
        }
    }

    /// The response body: always `401 unauthorized` (§2.5).
    pub fn api_error(&self) -> ApiError {
        ApiError::unauthorized()
    }
}

/// A verified JWT: what authorization reads, plus when the token stops being valid.
///
/// `expires_at` travels beside the [`AuthContext`] rather than inside it so that
/// existing `AuthContext { .. }` literals elsewhere keep compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub context: AuthContext,
    /// The `exp` claim, Unix seconds (saturated to `u64::MAX` for larger integers).
    pub expires_at: u64,
}

impl Authenticated {
    /// Whether the token is past `exp + leeway` at `now_unix` — the same rule
    /// [`verify_token`] applies, so a tail socket can close with 4001 `token_expired`
    /// exactly when a fresh request with this token would get 401.
    pub fn is_expired(&self, now_unix: u64, leeway_secs: u64) -> bool {
        self.expires_at.saturating_add(leeway_secs) < now_unix
    }
}

/// Current Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn www_authenticate_values_are_exact() {
        assert_eq!(
            AuthFailure::Missing.www_authenticate(),
            "Bearer realm=\"starcite\""
        );
        assert_eq!(
            AuthFailure::Malformed.www_authenticate(),
            "Bearer realm=\"starcite\", error=\"invalid_request\", error_description=\"Malformed bearer token\""
        );
        assert_eq!(
            AuthFailure::Invalid.www_authenticate(),
            "Bearer realm=\"starcite\", error=\"invalid_token\""
        );
        for f in [
            AuthFailure::Missing,
            AuthFailure::Malformed,
            AuthFailure::Invalid,
        ] {
            assert_eq!(f.api_error(), ApiError::unauthorized());
        }
    }

    #[test]
    fn expiry_uses_leeway_like_verification() {
        let a = Authenticated {
            context: AuthContext::none(),
            expires_at: 100,
        };
        assert!(!a.is_expired(100, 0));
        assert!(a.is_expired(101, 0));
        assert!(!a.is_expired(101, 1));
        assert!(a.is_expired(102, 1));
        let far = Authenticated {
            context: AuthContext::none(),
            expires_at: u64::MAX,
        };
        assert!(!far.is_expired(u64::MAX, 5));
    }
}
