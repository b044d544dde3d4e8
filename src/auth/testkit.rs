//! Test fixtures: two RSA key pairs (generated once per test binary), a JWKS built
//! from them, and a signer for arbitrary headers and claims.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::algorithms::{RS256KeyPair, RS256PublicKey};
use rsa::pkcs1v15::SigningKey;
use rsa::sha2::{Sha256, Sha384};
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

use super::{AuthConfig, AuthFailure, KeySource};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "starcite-api";
pub const KID: &str = "key-1";
pub const KID2: &str = "key-2";
/// A fixed "now" for claim checks.
pub const NOW: u64 = 1_700_000_000;

pub fn config() -> AuthConfig {
    AuthConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: "http://127.0.0.1:9/unused".into(),
        leeway_secs: 1,
        jwks_refresh: Duration::from_secs(60),
    }
}

struct TestKey {
    pair: RS256KeyPair,
    private: RsaPrivateKey,
}

fn test_key(kid: &str) -> &'static TestKey {
    static K1: OnceLock<TestKey> = OnceLock::new();
    static K2: OnceLock<TestKey> = OnceLock::new();
    let cell = match kid {
        KID => &K1,
        KID2 => &K2,
        other => panic!("no test key {other:?}"),
    };
    cell.get_or_init(|| {
        let pair = RS256KeyPair::generate(2048)
            .expect("RSA key generation")
            .with_key_id(kid);
        let der = pair.to_der().expect("private key DER");
        let private = {
            use rsa::pkcs1::DecodeRsaPrivateKey as _;
            use rsa::pkcs8::DecodePrivateKey as _;
            RsaPrivateKey::from_pkcs1_der(&der)
                .or_else(|_| RsaPrivateKey::from_pkcs8_der(&der))
                .expect("private key from DER")
        };
        TestKey { pair, private }
    })
}

pub fn key_pair(kid: &str) -> &'static RS256KeyPair {
    &test_key(kid).pair
}

/// Resolves `KID` and `KID2`; anything else is unknown.
pub struct TestKeys;

impl KeySource for TestKeys {
    fn key(&self, kid: &str) -> Result<RS256PublicKey, AuthFailure> {
        match kid {
            KID | KID2 => Ok(key_pair(kid).public_key()),
            _ => Err(AuthFailure::Invalid),
        }
    }
}

/// Claims that pass every check with [`config`] at [`NOW`].
pub fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 300,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "tenant_id": "acme",
        "sub": "user:u-42",
        "scope": "session:read",
        "scopes": ["session:append"],
    })
}

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// An RS256 token with the standard header naming `kid`, signed by that key.
pub fn sign(kid: &str, claims: &Value) -> String {
    sign_with(
        kid,
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        claims,
    )
}

/// Any header and claims, signed RS256 (PKCS#1 v1.5, SHA-256) by key `key_kid`.
pub fn sign_with(key_kid: &str, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let signer = SigningKey::<Sha256>::new(test_key(key_kid).private.clone());
    let sig = signer.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// A genuine RS384 token (header `alg: RS384`).
pub fn rs384(kid: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "RS384", "kid": kid})),
        b64(claims)
    );
    let signer = SigningKey::<Sha384>::new(test_key(kid).private.clone());
    let sig = signer.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The classic algorithm-confusion forgery: HS256 keyed with the public key's PEM.
pub fn hs256_with_public_key(kid: &str, claims: &Value) -> String {
    use hmac::{Hmac, Mac as _};
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "HS256", "typ": "JWT", "kid": kid})),
        b64(claims)
    );
    let pem = key_pair(kid).public_key().to_pem().expect("public PEM");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(pem.as_bytes()).expect("any key length");
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// The JWK of test key `kid`.
pub fn jwk(kid: &str) -> Value {
    let parts = key_pair(kid).public_key().to_components();
    json!({
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(parts.n),
        "e": URL_SAFE_NO_PAD.encode(parts.e),
    })
}

pub fn jwks_body(kids: &[&str]) -> String {
    json!({"keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>()}).to_string()
}

/// Minimal executor: polls `fut` on this thread, parking between wake-ups.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
