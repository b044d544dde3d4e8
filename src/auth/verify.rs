//! Token verification in the order of §2.4: header, key, RS256 signature, claims,
//! identity.
//!
//! Only the signature uses a crypto library. The claims are decoded from the raw
//! payload with `serde_json` and checked here, because a JWT library's own claim
//! parsing differs from the contract in both directions (it rejects e.g. a numeric
//! `jti` or `"iat": null`, and accepts float or negative timestamps).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::algorithms::RS256PublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::sha2::Sha256;
use rsa::signature::Verifier as _;
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Map, Value};

use super::{AuthConfig, AuthFailure, Authenticated};
use crate::api::principal::{AuthContext, Principal, PrincipalType};

/// Where verification gets the public key for a `kid`.
///
/// The production source is [`super::JwksCache`], whose lookup may block on an HTTP
/// fetch: call `verify_token` only off the shard cores (see [`super::AuthService`]).
pub trait KeySource {
    /// The RS256 key for `kid`; a `kid` that cannot be resolved is
    /// [`AuthFailure::Invalid`].
    fn key(&self, kid: &str) -> Result<RS256PublicKey, AuthFailure>;
}

/// Verifies `token` (already found per §2.2) at `now_unix` and extracts its identity.
/// Every failure is [`AuthFailure::Invalid`]; the reason is logged at debug level,
/// never the token.
pub fn verify_token(
    token: &str,
    keys: &dyn KeySource,
    cfg: &AuthConfig,
    now_unix: u64,
) -> Result<Authenticated, AuthFailure> {
    verify(token, keys, cfg, now_unix).map_err(|reason| {
        tracing::debug!(reason, "bearer token rejected");
        AuthFailure::Invalid
    })
}

type Reason = &'static str;

fn verify(
    token: &str,
    keys: &dyn KeySource,
    cfg: &AuthConfig,
    now: u64,
) -> Result<Authenticated, Reason> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three dot-separated parts");
    };

    // 1. Header. The algorithm is pinned before any key is looked up, so `none`, HS*
    //    (with the public key as HMAC secret) and other RSA/EC variants never get that far.
    let header = json_object(header_b64).ok_or("header is not a base64url JSON object")?;
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid,
        _ => return Err("header kid missing or not a non-empty string"),
    };
    if header.get("alg") != Some(&Value::String("RS256".into())) {
        return Err("header alg is not RS256");
    }

    // 2. Key.
    let key = keys.key(kid).map_err(|_| "no key for kid")?;

    // 3. Signature over the exact bytes `header.payload`.
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| "signature is not base64url")?;
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    rs256_verify(&key, signed.as_bytes(), &signature)?;

    // 4–5. Claims and identity, from the payload exactly as signed.
    let claims = json_object(payload_b64).ok_or("payload is not a base64url JSON object")?;
    let expires_at = check_registered_claims(&claims, cfg, now)?;
    Ok(Authenticated {
        context: identity(&claims)?,
        expires_at,
    })
}

/// Decodes one base64url (unpadded) segment holding a JSON object.
fn json_object(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// RSASSA-PKCS1-v1_5 with SHA-256.
fn rs256_verify(key: &RS256PublicKey, message: &[u8], signature: &[u8]) -> Result<(), Reason> {
    let parts = key.to_components();
    let public = RsaPublicKey::new(
        BigUint::from_bytes_be(&parts.n),
        BigUint::from_bytes_be(&parts.e),
    )
    .map_err(|_| "unusable RSA key")?;
    let signature = Signature::try_from(signature).map_err(|_| "bad signature encoding")?;
    VerifyingKey::<Sha256>::new(public)
        .verify(message, &signature)
        .map_err(|_| "signature mismatch")
}

/// `iss`, `exp`, `aud`, `nbf`, `iat` (§2.4 step 4); returns `exp`.
fn check_registered_claims(
    claims: &Map<String, Value>,
    cfg: &AuthConfig,
    now: u64,
) -> Result<u64, Reason> {
    let leeway = cfg.leeway_secs;
    match present(claims, "iss") {
        Some(Value::String(iss)) if *iss == cfg.issuer => {}
        _ => return Err("iss missing or not the configured issuer"),
    }
    let exp = present(claims, "exp")
        .ok_or("exp missing")
        .and_then(|v| non_negative_int(v).ok_or("exp is not an integer >= 0"))?;
    if exp.saturating_add(leeway) < now {
        return Err("token expired");
    }
    let audience_ok = match present(claims, "aud") {
        Some(Value::String(aud)) => *aud == cfg.audience,
        Some(Value::Array(auds)) => {
            auds.iter().all(Value::is_string) && auds.iter().any(|a| a == cfg.audience.as_str())
        }
        _ => false,
    };
    if !audience_ok {
        return Err("aud missing or not the configured audience");
    }
    if let Some(v) = present(claims, "nbf") {
        let nbf = non_negative_int(v).ok_or("nbf is not an integer >= 0")?;
        if nbf > now.saturating_add(leeway) {
            return Err("token not yet valid (nbf)");
        }
    }
    if let Some(v) = present(claims, "iat") {
        let iat = non_negative_int(v).ok_or("iat is not an integer >= 0")?;
        if iat > now.saturating_add(leeway) {
            return Err("token issued in the future (iat)");
        }
    }
    Ok(exp)
}

/// §2.4 step 5: tenant, scopes, session lock and principal.
fn identity(claims: &Map<String, Value>) -> Result<AuthContext, Reason> {
    let tenant_id = match present(claims, "tenant_id") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err("tenant_id missing or not a non-empty string"),
    };

    let mut scopes: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if !scopes.iter().any(|have| have == s) {
            scopes.push(s.to_owned());
        }
    };
    match present(claims, "scope") {
        None => {}
        Some(Value::String(s)) => s.split_whitespace().for_each(&mut add),
        Some(_) => return Err("scope is not a string"),
    }
    match present(claims, "scopes") {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) if !s.is_empty() => add(s),
                    _ => return Err("scopes has an element that is not a non-empty string"),
                }
            }
        }
        Some(_) => return Err("scopes is not an array"),
    }
    if scopes.is_empty() {
        return Err("no scopes");
    }

    let session_lock = match present(claims, "session_id") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => return Err("session_id is not a non-empty string"),
    };

    let (kind, id) = match present(claims, "sub") {
        Some(Value::String(sub)) => sub.split_once(':').ok_or("sub has no type prefix")?,
        _ => return Err("sub missing or not a string"),
    };
    if id.is_empty() {
        return Err("sub id is empty");
    }
    let kind =
        PrincipalType::from_sub_type(kind).ok_or("sub type is not user/agent/service/svc/org")?;

    Ok(AuthContext {
        principal: Principal {
            tenant_id,
            id: id.to_owned(),
            kind,
        },
        session_lock,
        scopes,
        none_mode: false,
    })
}

/// The claim's value unless it is absent or `null` (the contract never distinguishes).
fn present<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    claims.get(name).filter(|v| !v.is_null())
}

/// A JSON integer ≥ 0 (not `1.0`, not `"1"`). Integers beyond `u64` — which an
/// arbitrary-precision JSON reader keeps as integers — saturate to `u64::MAX`.
fn non_negative_int(v: &Value) -> Option<u64> {
    let Value::Number(n) = v else { return None };
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let literal = n.to_string();
    let (negative, digits) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal.as_str()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None; // fraction or exponent: not an integer
    }
    let zero = digits.bytes().all(|b| b == b'0');
    match (negative, zero) {
        (_, true) => Some(0),
        (true, false) => None,
        (false, false) => Some(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testkit::{self, claims, sign, TestKeys, KID, KID2, NOW};
    use serde_json::json;

    fn cfg() -> AuthConfig {
        testkit::config()
    }

    fn check(token: &str) -> Result<Authenticated, AuthFailure> {
        verify_token(token, &TestKeys, &cfg(), NOW)
    }

    fn ok(c: &Value) -> Authenticated {
        check(&sign(KID, c)).unwrap_or_else(|e| panic!("{c}: {e:?}"))
    }

    fn bad(c: &Value) {
        assert_eq!(check(&sign(KID, c)), Err(AuthFailure::Invalid), "{c}");
    }

    /// `claims()` with `key` set to `value` (`Value::Null` here means "remove it").
    fn with(key: &str, value: Value) -> Value {
        let mut c = claims();
        let map = c.as_object_mut().unwrap();
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.to_owned(), value);
        }
        c
    }

    #[test]
    fn a_good_token_yields_its_identity() {
        let a = ok(&claims());
        assert_eq!(a.expires_at, NOW + 300);
        let ctx = a.context;
        assert_eq!(ctx.principal.tenant_id, "acme");
        assert_eq!(ctx.principal.id, "u-42");
        assert_eq!(ctx.principal.kind, PrincipalType::User);
        assert_eq!(ctx.principal.actor(), "user:u-42");
        assert_eq!(ctx.scopes, vec!["session:read", "session:append"]);
        assert_eq!(ctx.session_lock, None);
        assert!(!ctx.none_mode);
    }

    #[test]
    fn tokens_issued_by_jwt_simple_verify() {
        use jwt_simple::prelude::*;
        let custom =
            json!({"tenant_id": "acme", "sub": "svc:billing:eu", "scope": "session:create"});
        let c = Claims::with_custom_claims(custom, Duration::from_secs(60))
            .with_issuer(testkit::ISSUER)
            .with_audience(testkit::AUDIENCE);
        let token = testkit::key_pair(KID).sign(c).unwrap();
        let now = unix_now_for_test();
        let a = verify_token(&token, &TestKeys, &cfg(), now).unwrap();
        assert_eq!(a.context.principal.actor(), "service:billing:eu");
        assert_eq!(a.context.scopes, vec!["session:create"]);
    }

    fn unix_now_for_test() -> u64 {
        crate::auth::unix_now()
    }

    #[test]
    fn second_key_of_the_set_verifies_and_unknown_kid_fails() {
        assert!(check(&sign(KID2, &claims())).is_ok());
        // Signed by key 1 but naming key 2: the signature does not match that key.
        let forged = testkit::sign_with(KID, &json!({"alg": "RS256", "kid": KID2}), &claims());
        assert_eq!(check(&forged), Err(AuthFailure::Invalid));
        let unknown = testkit::sign_with(KID, &json!({"alg": "RS256", "kid": "nope"}), &claims());
        assert_eq!(check(&unknown), Err(AuthFailure::Invalid));
    }

    #[test]
    fn header_must_name_kid_and_rs256() {
        let c = claims();
        for header in [
            json!({"alg": "RS256"}),
            json!({"alg": "RS256", "kid": ""}),
            json!({"alg": "RS256", "kid": 7}),
            json!({"alg": "RS256", "kid": null}),
            json!({"kid": KID}),
            json!({"alg": "rs256", "kid": KID}),
            json!({"alg": "RS384", "kid": KID}),
            json!({"alg": "PS256", "kid": KID}),
            json!({"alg": "ES256", "kid": KID}),
            json!({"alg": "none", "kid": KID}),
            json!({"alg": ["RS256"], "kid": KID}),
        ] {
            let token = testkit::sign_with(KID, &header, &c);
            assert_eq!(check(&token), Err(AuthFailure::Invalid), "{header}");
        }
        // Unknown header fields (typ, crit-free extras) do not matter.
        let token = testkit::sign_with(
            KID,
            &json!({"alg": "RS256", "kid": KID, "typ": "at+jwt", "x": 1}),
            &c,
        );
        assert!(check(&token).is_ok());
    }

    /// A key source that fails the test if asked: proves rejection before key use.
    struct NoKeys;
    impl KeySource for NoKeys {
        fn key(&self, kid: &str) -> Result<RS256PublicKey, AuthFailure> {
            panic!("key {kid:?} looked up for a token that should fail on its header")
        }
    }

    #[test]
    fn algorithm_confusion_fails_before_any_key_lookup() {
        let c = claims();
        let none = format!(
            "{}.{}.",
            testkit::b64(&json!({"alg": "none", "kid": KID})),
            testkit::b64(&c)
        );
        let hs256 = testkit::hs256_with_public_key(KID, &c);
        let rs384 = testkit::rs384(KID, &c);
        for token in [none, hs256, rs384] {
            assert_eq!(
                verify_token(&token, &NoKeys, &cfg(), NOW),
                Err(AuthFailure::Invalid)
            );
            assert_eq!(check(&token), Err(AuthFailure::Invalid));
        }
    }

    #[test]
    fn structural_garbage_fails() {
        let good = sign(KID, &claims());
        let (head, rest) = good.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        for token in [
            String::new(),
            "a.b".into(),
            format!("{good}."),
            format!("{head}.{payload}"),
            format!("{head}.{payload}.{sig}.x"),
            format!("{head}=.{payload}.{sig}"),
            format!("{head}.{payload}.{sig}="),
            format!("{head}.{payload}.{}", &sig[1..]),
            format!("eyJ.{payload}.{sig}"),
            format!("{}.{payload}.{sig}", URL_SAFE_NO_PAD.encode("[1]")),
        ] {
            assert_eq!(check(&token), Err(AuthFailure::Invalid), "{token}");
        }
    }

    #[test]
    fn tampered_payload_fails() {
        let good = sign(KID, &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let evil = testkit::b64(&with("tenant_id", json!("other")));
        assert_eq!(
            check(&format!("{}.{}.{}", parts[0], evil, parts[2])),
            Err(AuthFailure::Invalid)
        );
        // Flipping one signature bit fails too.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(check(&flipped), Err(AuthFailure::Invalid));
    }

    #[test]
    fn exp_and_its_leeway_edge() {
        // leeway 1: valid while exp + 1 >= now.
        ok(&with("exp", json!(NOW - 1)));
        bad(&with("exp", json!(NOW - 2)));
        ok(&with("exp", json!(NOW)));
        let mut zero = cfg();
        zero.leeway_secs = 0;
        let at =
            |exp: u64| verify_token(&sign(KID, &with("exp", json!(exp))), &TestKeys, &zero, NOW);
        assert!(at(NOW).is_ok());
        assert_eq!(at(NOW - 1), Err(AuthFailure::Invalid));
        for v in [
            json!(null),
            json!("9999999999"),
            json!(9999999999.0),
            json!(-1),
            json!(true),
            json!(1e10),
        ] {
            bad(&with("exp", v));
        }
        // Integers beyond u64 are integers, and far in the future.
        let huge: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert_eq!(ok(&with("exp", huge)).expires_at, u64::MAX);
        bad(&with(
            "exp",
            serde_json::from_str("-123456789012345678901234567890").unwrap(),
        ));
    }

    #[test]
    fn nbf_and_iat_with_leeway() {
        ok(&with("nbf", json!(NOW + 1)));
        bad(&with("nbf", json!(NOW + 2)));
        ok(&with("nbf", json!(0)));
        ok(&with("iat", json!(NOW + 1)));
        bad(&with("iat", json!(NOW + 2)));
        ok(&with("iat", json!(0)));
        for claim in ["nbf", "iat"] {
            let mut c = claims();
            c[claim] = Value::Null; // explicit null is "absent"
            ok(&c);
            for v in [
                json!(-1),
                json!("1"),
                json!(1.5),
                json!(1.0),
                json!([1]),
                json!({}),
            ] {
                bad(&with(claim, v));
            }
        }
        let mut zero = cfg();
        zero.leeway_secs = 0;
        let nbf = |v: u64| verify_token(&sign(KID, &with("nbf", json!(v))), &TestKeys, &zero, NOW);
        assert!(nbf(NOW).is_ok());
        assert_eq!(nbf(NOW + 1), Err(AuthFailure::Invalid));
    }

    #[test]
    fn issuer_and_audience() {
        bad(&with("iss", Value::Null));
        bad(&with("iss", json!("https://issuer.test/")));
        bad(&with("iss", json!("HTTPS://ISSUER.TEST")));
        bad(&with("iss", json!(["https://issuer.test"])));
        ok(&with("aud", json!("starcite-api")));
        ok(&with("aud", json!(["other", "starcite-api"])));
        bad(&with("aud", Value::Null));
        bad(&with("aud", json!("other")));
        bad(&with("aud", json!([])));
        bad(&with("aud", json!(["other"])));
        bad(&with("aud", json!(["starcite-api", 1])));
        bad(&with("aud", json!({"starcite-api": true})));
        bad(&with("aud", json!("Starcite-api")));
    }

    #[test]
    fn unrelated_claims_of_any_type_are_ignored() {
        let mut c = claims();
        c["jti"] = json!(5);
        c["nonce"] = json!({"a": 1});
        c["metadata"] = json!([1, 2]);
        ok(&c);
    }

    #[test]
    fn tenant_id_forms() {
        ok(&with("tenant_id", json!(" ")));
        for v in [Value::Null, json!(""), json!(7), json!(["acme"]), json!({})] {
            bad(&with("tenant_id", v));
        }
    }

    #[test]
    fn scope_and_scopes() {
        let scopes = |c: &Value| ok(c).context.scopes;
        let base = with("scopes", Value::Null);
        let mut c = base.clone();
        c["scope"] = json!("  session:read\t\nsession:append  session:read ");
        assert_eq!(scopes(&c), vec!["session:read", "session:append"]);
        let mut c = with("scope", Value::Null);
        c["scopes"] = json!(["session:create", "session:create"]);
        assert_eq!(scopes(&c), vec!["session:create"]);
        let mut c = claims();
        c["scope"] = json!("a b");
        c["scopes"] = json!(["b", "c"]);
        assert_eq!(scopes(&c), vec!["a", "b", "c"]);
        // The union must be non-empty.
        let mut none = with("scope", Value::Null);
        none["scopes"] = Value::Null;
        bad(&none);
        let mut blank = with("scopes", Value::Null);
        blank["scope"] = json!("   ");
        bad(&blank);
        let mut empty = with("scope", Value::Null);
        empty["scopes"] = json!([]);
        bad(&empty);
        // Wrong types fail even when the other claim has scopes.
        for v in [json!(["session:read"]), json!(1), json!(true), json!({})] {
            bad(&with("scope", v));
        }
        for v in [
            json!("session:read"),
            json!([""]),
            json!(["ok", 1]),
            json!([null]),
            json!({}),
        ] {
            bad(&with("scopes", v));
        }
    }

    #[test]
    fn session_id_forms() {
        assert_eq!(
            ok(&with("session_id", json!("s-1")))
                .context
                .session_lock
                .as_deref(),
            Some("s-1")
        );
        let mut null = claims();
        null["session_id"] = Value::Null;
        assert_eq!(ok(&null).context.session_lock, None);
        for v in [json!(""), json!(1), json!(["s-1"]), json!({}), json!(false)] {
            bad(&with("session_id", v));
        }
    }

    #[test]
    fn sub_forms_and_aliases() {
        let table = [
            ("user:u-1", "user", "u-1"),
            ("agent:planner", "agent", "planner"),
            ("service:billing", "service", "billing"),
            ("svc:billing", "service", "billing"),
            ("org:acme", "service", "acme"),
            ("user:a:b:c", "user", "a:b:c"),
            ("user: ", "user", " "),
        ];
        for (sub, kind, id) in table {
            let ctx = ok(&with("sub", json!(sub))).context;
            assert_eq!(
                (ctx.principal.kind.as_str(), ctx.principal.id.as_str()),
                (kind, id),
                "{sub}"
            );
            assert_eq!(ctx.principal.actor(), format!("{kind}:{id}"));
        }
        for v in [
            Value::Null,
            json!(""),
            json!("user"),
            json!("user:"),
            json!(":u-1"),
            json!("User:u-1"),
            json!("bot:x"),
            json!(" user:x"),
            json!(5),
            json!(["user:x"]),
        ] {
            bad(&with("sub", v));
        }
    }

    #[test]
    fn payload_must_be_an_object() {
        for payload in [json!([1]), json!("x"), json!(1)] {
            bad(&payload);
        }
    }

    #[test]
    fn non_negative_int_classification() {
        let parse = |s: &str| non_negative_int(&serde_json::from_str(s).unwrap());
        assert_eq!(parse("0"), Some(0));
        assert_eq!(parse("-0"), Some(0));
        assert_eq!(parse("42"), Some(42));
        assert_eq!(parse("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse("18446744073709551616"), Some(u64::MAX));
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("1.0"), None);
        assert_eq!(parse("1e3"), None);
        assert_eq!(parse("\"1\""), None);
    }
}
