//! JWT mode end to end (contract §2, §3, §7.3): a real `starcite` in auth mode
//! `jwt` against a JWKS server on 127.0.0.1, with RS256 tokens signed here.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use jwt_simple::prelude::*;
use serde_json::json;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "starcite-api";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Serves `{"keys":[...]}` for one RSA key on 127.0.0.1; returns the URL.
fn jwks_server(key: &RS256KeyPair) -> String {
    let comps = key.public_key().to_components();
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
        "n": URL_SAFE_NO_PAD.encode(&comps.n), "e": URL_SAFE_NO_PAD.encode(&comps.e),
    }]})
    .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    format!("http://127.0.0.1:{port}/.well-known/jwks.json")
}

#[derive(Serialize, Deserialize)]
struct Extra {
    tenant_id: String,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
}

fn token(
    key: &RS256KeyPair,
    tenant: &str,
    scope: &str,
    lock: Option<&str>,
    ttl_secs: u64,
) -> String {
    let extra = Extra {
        tenant_id: tenant.into(),
        scope: scope.into(),
        session_id: lock.map(str::to_owned),
    };
    let claims =
        Claims::with_custom_claims(extra, jwt_simple::prelude::Duration::from_secs(ttl_secs))
            .with_issuer(ISSUER)
            .with_audience(AUDIENCE)
            .with_subject("user:u-42");
    key.sign(claims).unwrap()
}

fn server(jwks_url: &str) -> Server {
    Server::start(
        ServerOpts::new()
            .env("STARCITE_AUTH_MODE", "jwt")
            .env("STARCITE_AUTH_JWT_ISSUER", ISSUER)
            .env("STARCITE_AUTH_JWT_AUDIENCE", AUDIENCE)
            .env("STARCITE_AUTH_JWKS_URL", jwks_url),
    )
}

fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string());
    request(
        port,
        method,
        path,
        &headers,
        body.as_deref().map(str::as_bytes),
    )
}

#[test]
fn jwt_mode_enforces_tokens_scopes_tenants_and_locks() {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let s = server(&jwks_server(&key));
    let p = s.port();
    let all = "session:create session:append session:read";

    // §2.5: no token, malformed token, bad token — each 401 with its header.
    let r = call(p, "POST", "/v1/sessions", None, Some(&json!({"id": "a1"})));
    assert_error_resp(&r, 401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="starcite""#)
    );
    let r = request(
        p,
        "GET",
        "/v1/sessions",
        &[("Authorization", "Basic abc")],
        None,
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="starcite", error="invalid_request", error_description="Malformed bearer token""#
        )
    );
    let r = call(p, "GET", "/v1/sessions", Some("not.a.jwt"), None);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="starcite", error="invalid_token""#)
    );
    let other = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let forged = token(&other, "acme", all, None, 300);
    assert_error_resp(
        &call(p, "GET", "/v1/sessions", Some(&forged), None),
        401,
        "unauthorized",
    );

    // A valid token: create, append, list as tenant acme.
    let acme = token(&key, "acme", all, None, 300);
    let r = call(
        p,
        "POST",
        "/v1/sessions",
        Some(&acme),
        Some(&json!({"id": "a1"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["creator_principal"],
        json!({"tenant_id": "acme", "id": "u-42", "type": "user"})
    );
    let body = json!({"type": "t", "payload": {}, "producer_id": "p", "producer_seq": 1});
    let r = call(
        p,
        "POST",
        "/v1/sessions/a1/append",
        Some(&acme),
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // Tenant fence, scopes, session lock (§3).
    let beta = token(&key, "beta", all, None, 300);
    let body2 = json!({"type": "t", "payload": {}, "producer_id": "q", "producer_seq": 1});
    assert_error_resp(
        &call(
            p,
            "POST",
            "/v1/sessions/a1/append",
            Some(&beta),
            Some(&body2),
        ),
        403,
        "forbidden_tenant",
    );
    let read_only = token(&key, "acme", "session:read", None, 300);
    assert_error_resp(
        &call(
            p,
            "POST",
            "/v1/sessions/a1/append",
            Some(&read_only),
            Some(&body2),
        ),
        403,
        "forbidden_scope",
    );
    assert_error_resp(
        &call(
            p,
            "POST",
            "/v1/sessions",
            Some(&read_only),
            Some(&json!({"id": "a2"})),
        ),
        403,
        "forbidden_scope",
    );
    let locked = token(&key, "acme", all, Some("a1"), 300);
    assert_error_resp(
        &call(
            p,
            "POST",
            "/v1/sessions",
            Some(&locked),
            Some(&json!({"id": "a3"})),
        ),
        403,
        "forbidden_session",
    );
    assert_error_resp(
        &call(
            p,
            "POST",
            "/v1/sessions/zz/append",
            Some(&locked),
            Some(&body2),
        ),
        403,
        "forbidden_session",
    );
    let r = call(
        p,
        "POST",
        "/v1/sessions",
        Some(&beta),
        Some(&json!({"id": "b1"})),
    );
    assert_eq!(r.status, 201);
    let ids = |t: &str| -> Vec<String> {
        let r = call(p, "GET", "/v1/sessions", Some(t), None);
        r.json()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&acme), vec!["a1"]);
    assert_eq!(ids(&beta), vec!["b1"]);
    assert_eq!(ids(&locked), vec!["a1"]);
    // A mismatching actor is a client error (§6.4).
    let bad_actor = json!({"type": "t", "payload": {}, "producer_id": "p", "producer_seq": 2, "actor": "user:someone-else"});
    assert_error_resp(
        &call(
            p,
            "POST",
            "/v1/sessions/a1/append",
            Some(&acme),
            Some(&bad_actor),
        ),
        400,
        "invalid_event",
    );
}

#[test]
fn tail_takes_access_token_and_closes_at_expiry() {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let s = server(&jwks_server(&key));
    let p = s.port();
    let all = "session:create session:append session:read";
    let acme = token(&key, "acme", all, None, 300);
    assert_eq!(
        call(
            p,
            "POST",
            "/v1/sessions",
            Some(&acme),
            Some(&json!({"id": "t1"}))
        )
        .status,
        201
    );
    let body = json!({"type": "t", "payload": {}, "producer_id": "p", "producer_seq": 1});
    assert_eq!(
        call(
            p,
            "POST",
            "/v1/sessions/t1/append",
            Some(&acme),
            Some(&body)
        )
        .status,
        201
    );

    // Query-string token works only on upgrades; without one the upgrade is 401.
    assert_eq!(
        Tail::try_connect(p, "t1", "cursor=0").err().map(|e| e.0),
        Some(401)
    );
    let r = request(
        p,
        "GET",
        &format!("/v1/sessions/t1/tail?access_token={acme}"),
        &[],
        None,
    );
    assert_error_resp(&r, 401, "unauthorized");

    // A token that expires in ~3 s: events flow, then close 4001 token_expired.
    let exp = now() + 3;
    let short = token(&key, "acme", "session:read", None, exp - now());
    let mut tail = Tail::connect(p, "t1", &format!("cursor=0&access_token={short}"));
    assert_eq!(
        seqs(&tail.collect_events(1, Duration::from_secs(5))),
        vec![1]
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tail.next_frame(Duration::from_secs(1)) {
            Frame::Closed(Some((code, reason))) => {
                assert_eq!((code, reason.as_str()), (4001, "token_expired"));
                break;
            }
            Frame::Closed(None) => panic!("closed without a close frame"),
            _ => assert!(
                std::time::Instant::now() < deadline,
                "tail not closed at token expiry"
            ),
        }
    }
    assert!(now() >= exp, "closed before exp");
}

/// A binary-protocol connection ends when its token expires, subscriptions
/// included (Goaway `token_expired`), as HTTP tails do with 4001.
#[test]
fn wire_connection_with_an_expiring_token_gets_goaway() {
    use starcite_wire::proto::{codes, encode, ClientMsg, Decoder, Preface, ServerMsg, MAX_FRAME};
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let s = server(&jwks_server(&key));
    let all = "session:create session:append session:read";
    let acme = token(&key, "acme", all, None, 300);
    let created = call(
        s.port(),
        "POST",
        "/v1/sessions",
        Some(&acme),
        Some(&json!({"id": "w1"})),
    );
    assert_eq!(created.status, 201);
    let short = token(&key, "acme", "session:read", None, 3);

    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.wire_port())).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    sock.write_all(&Preface::OURS.to_bytes()).unwrap();
    let mut p = [0u8; 8];
    sock.read_exact(&mut p).unwrap();
    let send = |sock: &mut std::net::TcpStream, m: &ClientMsg| {
        let mut b = Vec::new();
        encode(m, MAX_FRAME, &mut b).unwrap();
        sock.write_all(&b).unwrap();
    };
    send(
        &mut sock,
        &ClientMsg::Hello {
            request_id: 1,
            token: Some(short),
            client: "t".into(),
        },
    );
    send(
        &mut sock,
        &ClientMsg::Subscribe {
            request_id: 2,
            session: "w1".into(),
            cursor: 0,
            max_batch: 10,
        },
    );
    let started = std::time::Instant::now();
    let mut dec = Decoder::new(MAX_FRAME);
    let mut buf = [0u8; 65536];
    let mut got = Vec::new();
    loop {
        while let Some(m) = dec.next::<ServerMsg>().expect("decode") {
            got.push(m);
        }
        if got.iter().any(|m| matches!(m, ServerMsg::Goaway { .. })) {
            break;
        }
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => dec.push(&buf[..n]),
        }
    }
    assert!(
        matches!(got.first(), Some(ServerMsg::HelloOk { .. })),
        "{got:?}"
    );
    let goaway = got.iter().find_map(|m| match m {
        ServerMsg::Goaway { code, .. } => Some(code.clone()),
        _ => None,
    });
    assert_eq!(goaway.as_deref(), Some(codes::TOKEN_EXPIRED), "{got:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}
