//! Client side of the admin socket: one connection per request, every wait bounded.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::protocol::{encode_line, LineError, LineReader, Request, MAX_RESPONSE_BYTES};
use super::{socket_path, sys};

/// Default bound on one request: connect, send, and the complete answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin socket: is the node running? looked for {} ({source})", .path.display())]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("permission denied on the admin socket {}: run the command as the user that runs the node", .path.display())]
    PermissionDenied { path: PathBuf },
    #[error("the node did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The node answered with an error.
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Process exit code for this failure: 3 when the socket cannot be reached, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } | ClientError::PermissionDenied { .. } => 3,
            _ => 1,
        }
    }
}

/// Talks to the admin socket of the node whose data directory is given.
#[derive(Debug, Clone)]
pub struct AdminClient {
    path: PathBuf,
    timeout: Duration,
}

impl AdminClient {
    pub fn new(data_dir: &Path) -> AdminClient {
        AdminClient {
            path: socket_path(data_dir),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Same socket, another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> AdminClient {
        AdminClient {
            path: self.path.clone(),
            timeout,
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and returns the `result` of a successful answer.
    pub fn call(&self, req: &Request) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let stream =
            sys::connect_timeout(&self.path, self.timeout).map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                    path: self.path.clone(),
                },
                io::ErrorKind::TimedOut => ClientError::TimedOut(self.timeout),
                _ => ClientError::Unreachable {
                    path: self.path.clone(),
                    source: e,
                },
            })?;
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = stream.set_write_timeout(Some(remaining));
        // A write failure is not final: a server that refuses the connection
        // (e.g. too many connections) has already written its reason, so read it.
        let written = (&stream).write_all(&encode_line(&req.to_json()));
        if let Err(e) = &written {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return Err(ClientError::TimedOut(self.timeout));
            }
        }
        let line = match LineReader::default().read_line(&stream, MAX_RESPONSE_BYTES, deadline) {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(ClientError::Protocol(
                    "the node closed the connection without answering".to_owned(),
                ))
            }
            Err(LineError::TimedOut) => return Err(ClientError::TimedOut(self.timeout)),
            Err(LineError::TooLong) => {
                return Err(ClientError::Protocol(format!(
                    "answer larger than {MAX_RESPONSE_BYTES} bytes"
                )))
            }
            Err(LineError::Io(e)) => {
                let cause = written.err().unwrap_or(e);
                return Err(ClientError::Protocol(format!("connection failed: {cause}")));
            }
        };
        parse_response(&line)
    }

    pub fn status(&self) -> Result<Value, ClientError> {
        self.call(&Request::Status)
    }

    pub fn ready_nodes(&self) -> Result<Vec<String>, ClientError> {
        string_list(self.call(&Request::ReadyNodes)?)
    }

    pub fn drain(&self, node: Option<&str>) -> Result<(), ClientError> {
        self.call(&Request::Drain {
            node: node.map(str::to_owned),
        })
        .map(drop)
    }

    pub fn undrain(&self, node: Option<&str>) -> Result<(), ClientError> {
        self.call(&Request::Undrain {
            node: node.map(str::to_owned),
        })
        .map(drop)
    }

    pub fn local_ready(&self) -> Result<bool, ClientError> {
        boolean(self.call(&Request::LocalReady)?)
    }

    pub fn local_drained(&self) -> Result<bool, ClientError> {
        boolean(self.call(&Request::LocalDrained)?)
    }

    pub fn group_replicas(&self, group: u32) -> Result<Vec<String>, ClientError> {
        string_list(self.call(&Request::GroupReplicas { group })?)
    }

    /// Approves (idempotently) the replacement of `node`; returns its progress.
    pub fn replace_node(&self, node: &str) -> Result<Value, ClientError> {
        self.call(&Request::ReplaceNode {
            node: node.to_owned(),
        })
    }
}

fn parse_response(line: &[u8]) -> Result<Value, ClientError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        ClientError::Protocol(format!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        ))
    })?;
    let Value::Object(mut obj) = value else {
        return Err(ClientError::Protocol(
            "answer is not a JSON object".to_owned(),
        ));
    };
    match obj.get("ok") {
        Some(Value::Bool(true)) => Ok(obj.remove("result").unwrap_or(Value::Null)),
        Some(Value::Bool(false)) => {
            let field = |obj: &serde_json::Map<String, Value>, k: &str| {
                obj.get(k).and_then(Value::as_str).map(str::to_owned)
            };
            Err(ClientError::Remote {
                code: field(&obj, "error").unwrap_or_else(|| "error".to_owned()),
                message: field(&obj, "message").unwrap_or_default(),
            })
        }
        _ => Err(ClientError::Protocol(
            "answer has no boolean \"ok\"".to_owned(),
        )),
    }
}

fn string_list(v: Value) -> Result<Vec<String>, ClientError> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                other => Err(ClientError::Protocol(format!(
                    "expected node names, got {other}"
                ))),
            })
            .collect(),
        other => Err(ClientError::Protocol(format!(
            "expected a list of node names, got {other}"
        ))),
    }
}

fn boolean(v: Value) -> Result<bool, ClientError> {
    v.as_bool()
        .ok_or_else(|| ClientError::Protocol(format!("expected true or false, got {v}")))
}
