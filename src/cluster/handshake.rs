//! Mutual authentication of a new peer connection with a shared secret.
//!
//! ```text
//! connector                                   acceptor
//!   Hello { version, node, http_port, nonce_c }  ->
//!                                             checks version and that `node` is a cluster member
//!   <- Challenge { node, http_port, nonce_s, mac = HMAC(secret, "starcite-acceptor" || nonce_c || nonce_s) }
//! verifies mac, and that `node` is the peer it dialled
//!   Auth { mac = HMAC(secret, "starcite-connector" || nonce_s || nonce_c) }  ->
//!                                             verifies mac
//! ```
//!
//! HMAC-SHA256 keyed with `SECRET_KEY_BASE`; MACs are compared in constant time
//! (`Mac::verify_slice`). Fresh 32-byte nonces on both sides defeat replay, and the
//! two labels keep one side's proof from being reflected as the other's. The
//! handshake authenticates; it does not encrypt or protect the frames that follow.
//!
//! Until the handshake completes the decoder accepts frames of at most
//! [`MAX_HANDSHAKE_FRAME`] bytes, and only the expected frame kind: anything else
//! ends the connection. Callers bound the whole exchange by [`HANDSHAKE_TIMEOUT`].

use std::fmt;
use std::io;
use std::time::Duration;

use hmac::{Hmac, Mac};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use sha2::Sha256;
use starcite_wire::peer::{PeerFrame, CLUSTER_VERSION};

use super::io::{write_frame, FrameReader, ReadError};
use super::transport::TransportConfig;

/// A handshake not finished within this time closes the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted before authentication completes.
pub(crate) const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;

const ACCEPTOR_LABEL: &[u8] = b"starcite-acceptor";
const CONNECTOR_LABEL: &[u8] = b"starcite-connector";

type HmacSha256 = Hmac<Sha256>;

/// Why a handshake failed. Its `Display` never includes the secret.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Read(ReadError),
    Write(io::Error),
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    Version {
        got: u32,
    },
    UnknownNode {
        node: String,
    },
    WrongNode {
        expected: String,
        got: String,
    },
    BadMac,
    Timeout,
}

impl HandshakeError {
    /// Whether this is a refusal (bad credentials or protocol) rather than a plain
    /// network failure.
    pub(crate) fn is_refusal(&self) -> bool {
        !matches!(
            self,
            HandshakeError::Read(ReadError::Io(_) | ReadError::Eof) | HandshakeError::Write(_)
        )
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Read(e) => write!(f, "{e}"),
            HandshakeError::Write(e) => write!(f, "write failed: {e}"),
            HandshakeError::Unexpected { expected, got } => {
                write!(f, "expected a {expected} frame, got {got}")
            }
            HandshakeError::Version { got } => {
                write!(
                    f,
                    "peer speaks cluster protocol version {got}, this node {CLUSTER_VERSION}"
                )
            }
            HandshakeError::UnknownNode { node } => {
                write!(f, "node {node:?} is not a member of this cluster")
            }
            HandshakeError::WrongNode { expected, got } => {
                write!(f, "dialled node {expected:?} but {got:?} answered")
            }
            HandshakeError::BadMac => {
                f.write_str("authentication failed: the peer does not share our secret")
            }
            HandshakeError::Timeout => {
                write!(f, "handshake not completed within {HANDSHAKE_TIMEOUT:?}")
            }
        }
    }
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

fn proof(secret: &[u8], label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
    let mut mac = keyed(secret);
    mac.update(label);
    mac.update(first);
    mac.update(second);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a proof.
fn verify(
    secret: &[u8],
    label: &[u8],
    first: &[u8; 32],
    second: &[u8; 32],
    got: &[u8; 32],
) -> bool {
    let mut mac = keyed(secret);
    mac.update(label);
    mac.update(first);
    mac.update(second);
    mac.verify_slice(got).is_ok()
}

/// The connecting side. Returns the peer's HTTP port on success.
pub(crate) async fn connector<R: AsyncReadRent, W: AsyncWriteRent>(
    rd: &mut FrameReader<R>,
    wr: &mut W,
    cfg: &TransportConfig,
    peer: &str,
) -> Result<u16, HandshakeError> {
    let nonce_c: [u8; 32] = rand::random();
    let hello = PeerFrame::Hello {
        cluster_version: CLUSTER_VERSION,
        node: cfg.me.clone(),
        http_port: cfg.http_port,
        nonce: nonce_c,
    };
    write_frame(wr, &hello, HANDSHAKE_TIMEOUT)
        .await
        .map_err(HandshakeError::Write)?;
    let frame = rd.next().await.map_err(HandshakeError::Read)?;
    let PeerFrame::Challenge {
        node,
        http_port,
        nonce: nonce_s,
        mac,
    } = frame
    else {
        return Err(HandshakeError::Unexpected {
            expected: "challenge",
            got: frame.kind(),
        });
    };
    if !verify(&cfg.secret, ACCEPTOR_LABEL, &nonce_c, &nonce_s, &mac) {
        return Err(HandshakeError::BadMac);
    }
    if node != peer {
        return Err(HandshakeError::WrongNode {
            expected: peer.to_owned(),
            got: node,
        });
    }
    let auth = PeerFrame::Auth {
        mac: proof(&cfg.secret, CONNECTOR_LABEL, &nonce_s, &nonce_c),
    };
    write_frame(wr, &auth, HANDSHAKE_TIMEOUT)
        .await
        .map_err(HandshakeError::Write)?;
    Ok(http_port)
}

/// What the acceptor learns about an authenticated peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerHello {
    pub(crate) node: String,
    pub(crate) http_port: u16,
}

/// The accepting side.
pub(crate) async fn acceptor<R: AsyncReadRent, W: AsyncWriteRent>(
    rd: &mut FrameReader<R>,
    wr: &mut W,
    cfg: &TransportConfig,
) -> Result<PeerHello, HandshakeError> {
    let frame = rd.next().await.map_err(HandshakeError::Read)?;
    let PeerFrame::Hello {
        cluster_version,
        node,
        http_port,
        nonce: nonce_c,
    } = frame
    else {
        return Err(HandshakeError::Unexpected {
            expected: "hello",
            got: frame.kind(),
        });
    };
    if cluster_version != CLUSTER_VERSION {
        return Err(HandshakeError::Version {
            got: cluster_version,
        });
    }
    if node == cfg.me || !cfg.peers.iter().any(|p| p.name == node) {
        return Err(HandshakeError::UnknownNode { node });
    }
    let nonce_s: [u8; 32] = rand::random();
    let challenge = PeerFrame::Challenge {
        node: cfg.me.clone(),
        http_port: cfg.http_port,
        nonce: nonce_s,
        mac: proof(&cfg.secret, ACCEPTOR_LABEL, &nonce_c, &nonce_s),
    };
    write_frame(wr, &challenge, HANDSHAKE_TIMEOUT)
        .await
        .map_err(HandshakeError::Write)?;
    let frame = rd.next().await.map_err(HandshakeError::Read)?;
    let PeerFrame::Auth { mac } = frame else {
        return Err(HandshakeError::Unexpected {
            expected: "auth",
            got: frame.kind(),
        });
    };
    if !verify(&cfg.secret, CONNECTOR_LABEL, &nonce_s, &nonce_c, &mac) {
        return Err(HandshakeError::BadMac);
    }
    Ok(PeerHello { node, http_port })
}

#[cfg(test)]
pub(crate) fn test_proof(
    secret: &[u8],
    acceptor: bool,
    first: &[u8; 32],
    second: &[u8; 32],
) -> [u8; 32] {
    proof(
        secret,
        if acceptor {
            ACCEPTOR_LABEL
        } else {
            CONNECTOR_LABEL
        },
        first,
        second,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_labelled_and_keyed() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let p = proof(b"secret", ACCEPTOR_LABEL, &a, &b);
        assert!(verify(b"secret", ACCEPTOR_LABEL, &a, &b, &p));
        assert!(!verify(b"other", ACCEPTOR_LABEL, &a, &b, &p));
        assert!(!verify(b"secret", CONNECTOR_LABEL, &a, &b, &p));
        assert!(!verify(b"secret", ACCEPTOR_LABEL, &b, &a, &p));
        assert_ne!(p, proof(b"secret", CONNECTOR_LABEL, &b, &a));
    }
}
