//! Request/response types handed between the connection loop and the handler.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;

use super::ws::WebSocket;

/// Content type of every JSON body produced here.
pub(crate) const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// One parsed HTTP request, body fully read.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method as sent, e.g. `"GET"`, `"HEAD"`, `"POST"`.
    pub method: String,
    /// Raw request-target path (not percent-decoded), without the query.
    pub path: String,
    /// Raw query string without the `?`, if the target had one.
    pub query: Option<String>,
    /// Header names lower-cased, values as sent (UTF-8; requests with non-UTF-8 values
    /// are rejected with 400 before they reach the handler). Order and duplicates kept.
    pub headers: Vec<(String, String)>,
    /// The decoded body (de-chunked if it was chunked).
    pub body: Bytes,
    /// Address of the TCP peer.
    pub peer: SocketAddr,
}

impl Request {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` (case-insensitive) occurs.
    pub fn header_count(&self, name: &str) -> usize {
        self.header_values(name).count()
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Some `Upgrade` header value, split on commas and trimmed, equals `websocket`
    /// case-insensitively (the API contract's definition of a WebSocket upgrade).
    pub fn is_websocket_upgrade(&self) -> bool {
        header_has_token(self.header_values("upgrade"), "websocket")
    }
}

/// Whether any of the comma-separated, trimmed tokens in `values` equals `token`
/// (ASCII case-insensitive).
pub(crate) fn header_has_token<'a>(values: impl Iterator<Item = &'a str>, token: &str) -> bool {
    values
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP response produced by a handler.
///
/// `content-length`, `connection` and `server` are written by the connection loop;
/// the same headers set here are ignored (a `connection: close` here still makes the
/// loop close the connection after this response).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A JSON response (`content-type: application/json; charset=utf-8`).
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), JSON_CONTENT_TYPE.to_owned())],
            body: body.into(),
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The standard error envelope `{"error": <error>, "message": <message>}` as a JSON
/// response.
pub fn error_response(status: u16, error: &str, message: &str) -> Response {
    let mut body = String::with_capacity(32 + error.len() + message.len());
    body.push_str("{\"error\":");
    push_json_string(&mut body, error);
    body.push_str(",\"message\":");
    push_json_string(&mut body, message);
    body.push('}');
    Response::json(status, body)
}

/// Appends `s` as a JSON string literal (quoted, escaped).
fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

/// What runs after a `101 Switching Protocols`: it owns the WebSocket until it
/// returns, then the TCP connection is closed.
pub type UpgradeFn = Box<dyn FnOnce(WebSocket) -> Pin<Box<dyn Future<Output = ()>>>>;

/// A handler's answer: an HTTP response, or a WebSocket upgrade.
pub enum Reply {
    Http(Response),
    /// Upgrade the connection. The connection loop validates the request with
    /// [`super::websocket_accept`] (answering 400 `invalid_websocket_upgrade` if it is
    /// not a valid upgrade), writes the `101`, then runs the function.
    WebSocket(UpgradeFn),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Http(r)
    }
}

/// Request handler of one core. Should not panic: a panic is caught and answered
/// `500 internal_error` with the connection closed (see the module docs).
pub trait Handler: 'static {
    fn handle(&self, req: Request) -> impl Future<Output = Reply>;
}
