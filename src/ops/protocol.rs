//! Wire format of the admin socket: one JSON request per line, one JSON response per
//! line.
//!
//! Requests: `{"op":"status"}`, `{"op":"ready_nodes"}`, `{"op":"drain","node":null|"name"}`,
//! `{"op":"undrain","node":null|"name"}`, `{"op":"local_ready"}`, `{"op":"local_drained"}`,
//! `{"op":"group_replicas","group":7}`, `{"op":"replace_node","node":"name"}`. Unknown
//! fields are ignored.
//!
//! Responses: `{"ok":true,"result":<value>}` or
//! `{"ok":false,"error":"<code>","message":"<text for operators>"}`. Codes:
//! `invalid_write_node`, `invalid_group_id`, `unavailable` (from the node), and
//! `bad_request`, `request_too_large`, `timeout`, `too_many_connections`, `forbidden`,
//! `internal` (from the socket server).

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde_json::{json, Map, Value};

/// Largest request line the server accepts (the newline excluded).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest response line the client accepts (a status map of a node replicating a very
/// large number of groups stays well below this).
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// One operator request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    ReadyNodes,
    /// `None` = the node serving the socket.
    Drain {
        node: Option<String>,
    },
    Undrain {
        node: Option<String>,
    },
    LocalReady,
    LocalDrained,
    GroupReplicas {
        group: u32,
    },
    /// Approve replacing `node` by the incarnation it runs now; answers progress.
    ReplaceNode {
        node: String,
    },
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::ReadyNodes => "ready_nodes",
            Request::Drain { .. } => "drain",
            Request::Undrain { .. } => "undrain",
            Request::LocalReady => "local_ready",
            Request::LocalDrained => "local_drained",
            Request::GroupReplicas { .. } => "group_replicas",
            Request::ReplaceNode { .. } => "replace_node",
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Request::Drain { node } | Request::Undrain { node } => {
                json!({ "op": self.op(), "node": node })
            }
            Request::GroupReplicas { group } => json!({ "op": self.op(), "group": group }),
            Request::ReplaceNode { node } => json!({ "op": self.op(), "node": node }),
            _ => json!({ "op": self.op() }),
        }
    }

    /// Parses one request line; the error is a message for the `bad_request` response.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| format!("request is not valid JSON: {e}"))?;
        let Value::Object(obj) = value else {
            return Err("request must be a JSON object such as {\"op\":\"status\"}".to_owned());
        };
        let op = match obj.get("op") {
            Some(Value::String(op)) => op.as_str(),
            Some(_) => return Err("\"op\" must be a string".to_owned()),
            None => return Err("request has no \"op\"".to_owned()),
        };
        Ok(match op {
            "status" => Request::Status,
            "ready_nodes" => Request::ReadyNodes,
            "drain" => Request::Drain { node: node_field(&obj)? },
            "undrain" => Request::Undrain { node: node_field(&obj)? },
            "local_ready" => Request::LocalReady,
            "local_drained" => Request::LocalDrained,
            "group_replicas" => {
                let group = obj
                    .get("group")
                    .and_then(Value::as_u64)
                    .and_then(|g| u32::try_from(g).ok())
                    .ok_or_else(|| "\"group\" must be an integer between 0 and 4294967295".to_owned())?;
                Request::GroupReplicas { group }
            }
            "replace_node" => match node_field(&obj)? {
                Some(node) => Request::ReplaceNode { node },
                None => return Err("replace_node needs \"node\"".to_owned()),
            },
            other => {
                return Err(format!(
                    "unknown op {other:?}; known: status, ready_nodes, drain, undrain, local_ready, local_drained, group_replicas, replace_node"
                ))
            }
        })
    }
}

fn node_field(obj: &Map<String, Value>) -> Result<Option<String>, String> {
    match obj.get("node") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err("\"node\" must be a string or null".to_owned()),
    }
}

pub(crate) fn ok_response(result: Value) -> Value {
    json!({ "ok": true, "result": result })
}

pub(crate) fn error_response(code: &str, message: impl Into<String>) -> Value {
    json!({ "ok": false, "error": code, "message": message.into() })
}

/// The response serialised as one line, newline included.
pub(crate) fn encode_line(value: &Value) -> Vec<u8> {
    // serde_json escapes control characters inside strings, so the output has no raw newline.
    let mut out = serde_json::to_vec(value).unwrap_or_else(|_| {
        br#"{"ok":false,"error":"internal","message":"unserialisable response"}"#.to_vec()
    });
    out.push(b'\n');
    out
}

#[derive(Debug)]
pub(crate) enum LineError {
    /// The line (or the unterminated data so far) is longer than allowed.
    TooLong,
    /// The deadline passed before a complete line arrived.
    TimedOut,
    Io(io::Error),
}

/// Reads newline-terminated lines from a blocking stream with a deadline per line and a
/// size cap. Bytes after a newline are kept for the next line.
#[derive(Default)]
pub(crate) struct LineReader {
    buf: Vec<u8>,
    scanned: usize,
}

impl LineReader {
    /// The next line without its `\n` (and a `\r` before it); `None` at end of stream
    /// with nothing buffered. Data ended by end-of-stream without a newline counts as a
    /// line.
    pub(crate) fn read_line(
        &mut self,
        stream: &UnixStream,
        max: usize,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, LineError> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                if end > max {
                    return Err(LineError::TooLong);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                self.scanned = 0;
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > max {
                return Err(LineError::TooLong);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LineError::TimedOut);
            }
            stream
                .set_read_timeout(Some(deadline - now))
                .map_err(LineError::Io)?;
            match (&*stream).read(&mut chunk) {
                Ok(0) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    self.scanned = 0;
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(LineError::TimedOut)
                }
                Err(e) => return Err(LineError::Io(e)),
            }
        }
    }
}
