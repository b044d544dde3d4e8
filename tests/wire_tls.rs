//! The binary port over TLS: a node with `STARCITE_TLS_CERT_FILE`/`_KEY_FILE`
//! serves the wire protocol inside TLS (same certificate as HTTPS); a plaintext
//! preface on that port is dropped.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::free_port;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use starcite_wire::proto::{
    encode, AppendFields, ClientMsg, Decoder, Preface, ServerMsg, MAX_FRAME,
};

struct Node {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(port: u16, cfg: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn send(s: &mut Tls, m: &ClientMsg) -> std::io::Result<()> {
    let mut b = Vec::new();
    encode(m, MAX_FRAME, &mut b).unwrap();
    s.write_all(&b)?;
    s.flush()
}

fn recv(s: &mut Tls, dec: &mut Decoder) -> std::io::Result<ServerMsg> {
    let mut buf = [0u8; 16384];
    loop {
        if let Some(m) = dec.next::<ServerMsg>().map_err(std::io::Error::other)? {
            return Ok(m);
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        dec.push(&buf[..n]);
    }
}

/// Preface + Hello over TLS.
fn open(port: u16, cfg: &Arc<rustls::ClientConfig>) -> std::io::Result<(Tls, Decoder)> {
    let mut s = tls_connect(port, cfg)?;
    s.write_all(&Preface::OURS.to_bytes())?;
    let mut p = [0u8; 8];
    s.read_exact(&mut p)?;
    assert_eq!(Preface::parse(&p), Ok(Preface::OURS));
    let mut dec = Decoder::new(MAX_FRAME);
    send(
        &mut s,
        &ClientMsg::Hello {
            request_id: 1,
            token: None,
            client: "tls-test".into(),
        },
    )?;
    match recv(&mut s, &mut dec)? {
        ServerMsg::HelloOk { .. } => Ok((s, dec)),
        other => Err(std::io::Error::other(format!("{other:?}"))),
    }
}

#[test]
fn wire_protocol_inside_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wire test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let (ca_pem, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let wire_port = free_port();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_starcite"))
        .arg("dev")
        .current_dir(dir.path())
        .env("PORT", free_port().to_string())
        .env("STARCITE_WIRE_PORT", wire_port.to_string())
        .env("STARCITE_RAFT_DATA_DIR", dir.path().join("data"))
        .env("STARCITE_CORES", "2")
        .env("STARCITE_TLS_CERT_FILE", &cert)
        .env("STARCITE_TLS_KEY_FILE", &key)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _node = Node { child, _dir: dir };
    let cfg = starcite::tls::client_config_with_ca(Some(&ca_pem)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut s, mut dec) = loop {
        match open(wire_port, &cfg) {
            Ok(v) => break v,
            Err(e) if Instant::now() > deadline => panic!("no TLS wire connection: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // The node may still be electing leaders: retry the create.
    let created = (0..100).any(|i| {
        send(
            &mut s,
            &ClientMsg::CreateSession {
                request_id: 10 + i,
                id: Some("tls-wire".into()),
                title: None,
                metadata: None,
            },
        )
        .unwrap();
        match recv(&mut s, &mut dec).unwrap() {
            ServerMsg::SessionCreated { .. } => true,
            ServerMsg::Error { code, .. } if code == "session_exists" => true,
            _ => {
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        }
    });
    assert!(created);
    send(
        &mut s,
        &ClientMsg::Append {
            request_id: 200,
            session: "tls-wire".into(),
            fields: AppendFields {
                event_type: "t".into(),
                payload: b"{}".to_vec(),
                producer_id: "p".into(),
                producer_seq: 1,
                ..Default::default()
            },
        },
    )
    .unwrap();
    match recv(&mut s, &mut dec).unwrap() {
        ServerMsg::AppendAck {
            request_id: 200,
            seq: 1,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    // Plaintext on the TLS port: no preface comes back, the socket is dropped.
    let mut plain = TcpStream::connect(("127.0.0.1", wire_port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain.write_all(&Preface::OURS.to_bytes()).unwrap();
    let mut b = [0u8; 8];
    let got = plain.read(&mut b);
    assert!(
        !matches!(got, Ok(8) if b == Preface::OURS.to_bytes()),
        "plaintext preface answered on the TLS port"
    );
}
