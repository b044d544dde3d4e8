//! TLS with rustls (ring provider): the server side of the public listeners and the
//! client side of outbound HTTPS (JWKS, S3).
//!
//! # Server
//!
//! [`server_config`] loads a PEM certificate chain and private key
//! (`STARCITE_TLS_CERT_FILE`, `STARCITE_TLS_KEY_FILE`) into a shared
//! [`rustls::ServerConfig`]; [`Acceptor`] wraps it for monoio and performs the handshake
//! on an accepted `TcpStream`, bounded in time ([`Acceptor::accept`]). Any listener
//! (the HTTP gateway, the binary-protocol port) builds one `Acceptor` per node from
//! [`crate::config::TlsConfig`] and clones it into every core:
//!
//! ```text
//! let acceptor = starcite::tls::Acceptor::from_files(&cert, &key)?; // at boot
//! // on a core, per accepted connection:
//! let stream: starcite::tls::ServerTlsStream = acceptor.accept(tcp, timeout).await?;
//! ```
//!
//! The resulting stream implements monoio's `AsyncReadRent`/`AsyncWriteRent` and
//! `Split`.
//!
//! # Client
//!
//! [`client_config`] is the one configuration every outbound TLS client uses: the
//! Mozilla root set (webpki-roots) plus, when `STARCITE_TLS_CA_FILE` names a PEM
//! bundle, those certificates too (private PKI). Server certificates are always
//! verified; there is no switch to turn that off.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Environment variable naming an extra PEM CA bundle for outbound TLS.
pub const CA_FILE_VAR: &str = "STARCITE_TLS_CA_FILE";

/// A server-side TLS stream over a monoio TCP stream.
pub type ServerTlsStream = monoio_rustls::ServerTlsStream<TcpStream>;

/// The ring crypto provider, chosen explicitly (never the process default).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

/// Server configuration for a certificate chain and its key (TLS 1.2 and 1.3, ALPN
/// `http/1.1`, no client certificates). Errors name the file and the problem (a key
/// that does not match the certificate is caught here, not at the first handshake).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} / {}: certificate and key do not form a usable pair: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS acceptor shared by the cores of a node (cheap to clone: an `Arc` inside).
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    inner: monoio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

impl Acceptor {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            inner: monoio_rustls::TlsAcceptor::from(Arc::clone(&config)),
            config,
        }
    }

    /// [`server_config`] then [`Acceptor::new`].
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, String> {
        server_config(cert_file, key_file).map(Self::new)
    }

    /// The acceptor for [`crate::config::TlsConfig`] (`None`: TLS is off).
    pub fn from_config(cfg: Option<&crate::config::TlsConfig>) -> Result<Option<Self>, String> {
        cfg.map(|c| Self::from_files(&c.cert_file, &c.key_file))
            .transpose()
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Runs the server handshake on `tcp`, bounded by `limit` (a client that opens a
    /// socket and never speaks TLS cannot hold it longer). A failed handshake — plain
    /// HTTP on the TLS port, a bad ClientHello, a timeout — is an error; the caller
    /// drops the socket.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        limit: Duration,
    ) -> std::io::Result<ServerTlsStream> {
        match monoio::time::timeout(limit, self.inner.accept(tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Client configuration with the Mozilla roots plus the certificates of `ca_file`
/// (PEM, one or more). Fails if the file cannot be read or holds no certificate.
pub fn client_config_with_ca(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
        }
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The process's outbound client configuration: Mozilla roots plus the bundle named by
/// `STARCITE_TLS_CA_FILE`, if set (read once; config validation at boot has already
/// checked the file, see [`crate::config::Config::from_env`]).
///
/// If the bundle cannot be read here, the error is returned rather than silently
/// falling back to the public roots.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| client_config_with_ca(ca_file_from_env().as_deref()))
        .clone()
}

/// `STARCITE_TLS_CA_FILE`, trimmed, if set and not blank.
pub fn ca_file_from_env() -> Option<PathBuf> {
    std::env::var(CA_FILE_VAR)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_certs(&missing).unwrap_err();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(load_certs(&empty)
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(load_key(&empty).is_err());
        assert!(client_config_with_ca(Some(&empty)).is_err());
    }

    #[test]
    fn public_roots_only() {
        let cfg = client_config_with_ca(None).unwrap();
        assert!(cfg.alpn_protocols.is_empty());
    }
}
