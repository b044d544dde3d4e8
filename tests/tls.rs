//! TLS end to end: a node serving HTTPS/WSS with a certificate from a CA made here
//! (rcgen), plain HTTP against the TLS port, boot failures on half or bad TLS
//! settings, and the JWKS fetcher against an HTTPS server of a private CA (trusted
//! through `STARCITE_TLS_CA_FILE` / an explicit bundle, rejected without it).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::free_port;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use starcite::auth::{HttpJwksFetcher, JwksFetcher};
use tungstenite::Message;

/// A private CA and a server certificate it signed for `localhost` / 127.0.0.1,
/// written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "starcite test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        starcite::tls::client_config_with_ca(Some(&self.path("ca.pem"))).unwrap()
    }
}

/// A `starcite dev` process (killed on drop) whose readiness is probed over HTTPS.
struct TlsNode {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- starcite log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(env: &[(&str, &Path)]) -> (Child, u16, tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = data.path().join("server.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starcite"));
    cmd.arg("dev")
        .current_dir(data.path())
        .env("PORT", port.to_string())
        .env("STARCITE_RAFT_DATA_DIR", data.path().join("data"))
        .env("STARCITE_CORES", "2")
        .env("STARCITE_WIRE_PORT", free_port().to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), port, data, log)
}

fn agent(tls: Arc<rustls::ClientConfig>) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .tls_config(tls)
        .timeout(Duration::from_secs(5))
        .build()
}

impl TlsNode {
    fn start(pki: &Pki) -> TlsNode {
        Self::start_with(pki, &[])
    }

    fn start_with(pki: &Pki, extra: &[(&str, &Path)]) -> TlsNode {
        let cert = pki.path("cert.pem");
        let key = pki.path("key.pem");
        let mut env: Vec<(&str, &Path)> = vec![
            ("STARCITE_TLS_CERT_FILE", &cert),
            ("STARCITE_TLS_KEY_FILE", &key),
        ];
        env.extend_from_slice(extra);
        let (child, port, data, log) = spawn(&env);
        let mut node = TlsNode {
            child,
            port,
            _data: data,
            log,
        };
        let agent = agent(pki.client_config());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = node.child.try_wait() {
                panic!("starcite exited during start-up: {st}");
            }
            match agent.get(&node.url("/health/ready")).call() {
                Ok(r) if r.status() == 200 => return node,
                _ if Instant::now() > deadline => panic!("not ready over HTTPS within 30 s"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

/// A WebSocket over rustls over TCP (blocking).
type Wss = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn wss_connect(port: u16, path: &str, tls: Arc<rustls::ClientConfig>) -> Wss {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(tls, name).unwrap();
    let stream = rustls::StreamOwned::new(conn, tcp);
    let url = format!("wss://localhost:{port}{path}");
    let (ws, resp) = tungstenite::client::client(url.as_str(), stream).expect("WSS handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Reads text frames until `n` events arrived (frames may batch events in arrays).
fn read_events(ws: &mut Wss, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => match serde_json::from_str::<Value>(&t).unwrap() {
                Value::Array(items) => out.extend(items),
                v => out.push(v),
            },
            Ok(_) => {}
            Err(e) => panic!("WSS read: {e}"),
        }
    }
    out
}

#[test]
fn https_append_and_wss_tail() {
    let pki = Pki::new();
    let node = TlsNode::start(&pki);
    let agent = agent(pki.client_config());

    let created = agent
        .post(&node.url("/v1/sessions"))
        .send_json(json!({"id": "tls-1"}))
        .expect("create over HTTPS");
    assert_eq!(created.status(), 201);

    // The tail opens first, then events arrive live over WSS.
    let mut ws = wss_connect(
        node.port,
        "/v1/sessions/tls-1/tail?cursor=0",
        pki.client_config(),
    );
    for seq in 1..=3u64 {
        let r = agent
            .post(&node.url("/v1/sessions/tls-1/append"))
            .send_json(json!({
                "type": "test.event",
                "payload": {"n": seq},
                "producer_id": "p1",
                "producer_seq": seq,
            }))
            .expect("append over HTTPS");
        assert_eq!(r.status(), 201);
        let body: Value = r.into_json().unwrap();
        assert_eq!(body["seq"], json!(seq), "{body}");
    }
    let events = read_events(&mut ws, 3);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3], "{events:?}");
    assert_eq!(events[2]["payload"], json!({"n": 3}));
    ws.close(None).unwrap();

    // Keep-alive: several requests on one TLS connection (ureq pools it).
    for _ in 0..5 {
        let r = agent.get(&node.url("/health/live")).call().unwrap();
        assert_eq!(r.status(), 200);
    }

    // An untrusting client (public roots only) fails the handshake.
    let public = agent_public();
    match public.get(&node.url("/health/live")).call() {
        Err(ureq::Error::Transport(t)) => {
            let msg = t.to_string();
            assert!(msg.to_lowercase().contains("certificate"), "{msg}");
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

fn agent_public() -> ureq::Agent {
    agent(starcite::tls::client_config_with_ca(None).unwrap())
}

#[test]
fn plain_http_to_the_tls_port_is_closed_and_the_node_keeps_serving() {
    let pki = Pki::new();
    let node = TlsNode::start(&pki);
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("expected the server to close, got {e}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "close took too long"
        );
        // Nothing that looks like HTTP; at most a TLS alert record (content type 21).
        assert!(
            !got.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(got.is_empty() || got[0] == 0x15, "unexpected bytes {got:?}");
    }
    // A client that connects and never speaks is also dropped (handshake timeout is
    // the 10 s header timeout; just check the node still serves meanwhile).
    let _silent = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let r = agent(pki.client_config())
        .get(&node.url("/health/live"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn boot_fails_on_half_or_bad_tls_settings() {
    let pki = Pki::new();
    let cases: Vec<(Vec<(&str, PathBuf)>, &str)> = vec![
        (
            vec![("STARCITE_TLS_CERT_FILE", pki.path("cert.pem"))],
            "STARCITE_TLS_KEY_FILE",
        ),
        (
            vec![("STARCITE_TLS_KEY_FILE", pki.path("key.pem"))],
            "STARCITE_TLS_CERT_FILE",
        ),
        (
            vec![
                ("STARCITE_TLS_CERT_FILE", pki.path("missing.pem")),
                ("STARCITE_TLS_KEY_FILE", pki.path("key.pem")),
            ],
            "STARCITE_TLS_CERT_FILE",
        ),
        (
            vec![
                // A certificate where the key should be.
                ("STARCITE_TLS_CERT_FILE", pki.path("cert.pem")),
                ("STARCITE_TLS_KEY_FILE", pki.path("cert.pem")),
            ],
            "STARCITE_TLS_KEY_FILE",
        ),
        (
            vec![("STARCITE_TLS_CA_FILE", pki.path("missing-ca.pem"))],
            "STARCITE_TLS_CA_FILE",
        ),
    ];
    for (env, var) in cases {
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let (mut child, _port, _data, log) = spawn(&env);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("starcite with {env:?} did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{env:?}: {out}");
        assert!(out.contains(var), "{env:?}: expected {var} in:\n{out}");
    }
}

/// An HTTPS server on 127.0.0.1 answering every request with `body` (one thread,
/// blocking rustls), certificate from `pki`.
fn https_jwks_server(pki: &Pki, body: String) -> u16 {
    let cfg = starcite::tls::server_config(&pki.path("cert.pem"), &pki.path("key.pem")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
            let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                continue;
            };
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 4096];
            if s.read(&mut buf).is_err() {
                continue; // e.g. the client rejected our certificate
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    });
    port
}

#[test]
fn jwks_over_https_needs_the_custom_ca() {
    let pki = Pki::new();
    let body = r#"{"keys":[]}"#.to_owned();
    let port = https_jwks_server(&pki, body.clone());
    let url = format!("https://localhost:{port}/.well-known/jwks.json");

    let trusted = HttpJwksFetcher::with_tls(&url, pki.client_config());
    assert_eq!(trusted.fetch().unwrap(), body.as_bytes());

    let public =
        HttpJwksFetcher::with_tls(&url, starcite::tls::client_config_with_ca(None).unwrap());
    let err = public.fetch().unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// The node's own JWKS fetcher picks up `STARCITE_TLS_CA_FILE`: in jwt mode against
/// an HTTPS JWKS of the private CA, a request with a token gets past authentication
/// (the key set was fetched and verified) only when the CA file is configured.
#[test]
fn node_fetches_jwks_over_https_with_the_ca_file() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jwt_simple::prelude::{Claims, Deserialize, RS256KeyPair, RSAKeyPairLike, Serialize};

    let pki = Pki::new();
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let comps = key.public_key().to_components();
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
        "n": URL_SAFE_NO_PAD.encode(&comps.n), "e": URL_SAFE_NO_PAD.encode(&comps.e),
    }]})
    .to_string();
    let jwks_port = https_jwks_server(&pki, jwks);
    let jwks_url = format!("https://localhost:{jwks_port}/jwks.json");

    #[derive(Serialize, Deserialize)]
    struct Extra {
        tenant_id: String,
        scope: String,
    }
    let claims = Claims::with_custom_claims(
        Extra {
            tenant_id: "acme".into(),
            scope: "session:create session:read session:append".into(),
        },
        jwt_simple::prelude::Duration::from_secs(600),
    )
    .with_issuer("https://issuer.test")
    .with_audience("starcite-api")
    .with_subject("user:u-1");
    let token = key.sign(claims).unwrap();

    for (with_ca, want) in [(true, 200u16), (false, 401u16)] {
        let mut vars: Vec<(&str, PathBuf)> = vec![
            ("STARCITE_AUTH_MODE", "jwt".into()),
            ("STARCITE_AUTH_JWT_ISSUER", "https://issuer.test".into()),
            ("STARCITE_AUTH_JWT_AUDIENCE", "starcite-api".into()),
            ("STARCITE_AUTH_JWKS_URL", jwks_url.clone().into()),
        ];
        if with_ca {
            vars.push(("STARCITE_TLS_CA_FILE", pki.path("ca.pem")));
        }
        let env: Vec<(&str, &Path)> = vars.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let (child, port, data, log) = spawn(&env);
        let mut node = TlsNode {
            child,
            port,
            _data: data,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(st)) = node.child.try_wait() {
                panic!("starcite exited: {st}");
            }
            let r = common::try_request(
                port,
                format!(
                    "GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
                false,
                Duration::from_secs(5),
            );
            match r {
                Ok(r) if r.status != 503 => break r.status,
                _ if Instant::now() > deadline => panic!("node not answering"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        assert_eq!(status, want, "with_ca={with_ca}");
    }
}

/// Over the per-address cap a TLS connection is closed before any handshake.
#[test]
fn tls_connections_over_the_per_address_cap_are_closed() {
    let pki = Pki::new();
    let node = TlsNode::start_with(&pki, &[("STARCITE_MAX_CONNECTIONS_PER_IP", Path::new("2"))]);
    std::thread::sleep(Duration::from_millis(300));
    // Two raw connections take the address's slots (counted at accept, before TLS).
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", node.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let agent = agent(pki.client_config());
    match agent.get(&node.url("/health/live")).call() {
        Err(ureq::Error::Transport(_)) => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match agent.get(&node.url("/health/live")).call() {
            Ok(r) if r.status() == 200 => break,
            _ if Instant::now() > deadline => panic!("no slot after closing the held ones"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
