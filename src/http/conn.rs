//! One HTTP/1.1 connection: read a request, run the handler, write the response,
//! repeat (keep-alive, pipelining), or hand the socket to a WebSocket session.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::time::{timeout_at, Instant};

use super::guard::NodeConnections;
use super::stream::HttpStream;
use super::unwind::{catch_unwind_future, panic_message};

use super::io::{deadline_after, head_and_body, read_exact_into, write_parts_timeout, InBuf};
use super::parse::{
    body_kind, has_head_end, head_scan_resume, parse_head, BodyKind, ChunkedDecoder, FramingError,
    Head, HeadParse, MAX_CHUNK_LINE,
};
use super::request::{error_response, Handler, Reply, Request, Response, UpgradeFn};
use super::server::ShutdownSignal;
use super::ws::{websocket_accept, WebSocket};
use super::Limits;

/// Value of the `server` header on every response.
const SERVER_NAME: &str = "starcite";
/// Interim response sent for `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// After an error response, how long unread client input is drained before the
/// socket is closed (closing with unread data sends a RST that can destroy the error
/// response before the client reads it).
const LINGER_TIME: Duration = Duration::from_secs(1);
/// Cap on the bytes drained during that linger.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Size of the read that waits for the next request on an idle connection (the rest
/// of a larger head is read after it).
const IDLE_READ: usize = 2048;
/// Read chunk used while draining.
const LINGER_READ: usize = 4096;
/// Slack over `max_header_bytes` for the input buffer while decoding a chunked body,
/// so a maximal chunk-size line always fits.
const CHUNKED_WINDOW: usize = MAX_CHUNK_LINE * 4;

/// Why the loop stops reading requests.
enum Stop {
    /// Close quietly: EOF, timeout, I/O error, idle keep-alive at shutdown.
    Quiet,
    /// Answer with this error, then close.
    Reject(Response),
}

fn bad_request() -> Response {
    error_response(400, "bad_request", "Malformed HTTP request")
}

fn headers_too_large() -> Response {
    error_response(
        431,
        "request_header_fields_too_large",
        "Request header fields are too large",
    )
}

fn payload_too_large() -> Response {
    error_response(413, "payload_too_large", "Request body is too large")
}

fn internal_error() -> Response {
    error_response(500, "internal_error", "Internal server error")
}

fn too_many_tails() -> Response {
    error_response(503, "too_many_tails", "Too many tail sockets on this node")
}

fn invalid_upgrade() -> Response {
    error_response(
        400,
        "invalid_websocket_upgrade",
        "WebSocket upgrade required",
    )
}

impl From<FramingError> for Stop {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::Malformed => Stop::Reject(bad_request()),
            FramingError::TooLarge => Stop::Reject(payload_too_large()),
        }
    }
}

/// State of one accepted connection.
pub(crate) struct Conn<H> {
    stream: HttpStream,
    inbuf: InBuf,
    peer: SocketAddr,
    limits: Rc<Limits>,
    handler: Rc<H>,
    shutdown: ShutdownSignal,
    accepted_at: Instant,
    node: Arc<NodeConnections>,
}

impl<H: Handler> Conn<H> {
    pub(crate) fn new(
        stream: HttpStream,
        peer: SocketAddr,
        handler: Rc<H>,
        limits: Rc<Limits>,
        shutdown: ShutdownSignal,
        node: Arc<NodeConnections>,
    ) -> Self {
        Self {
            stream,
            inbuf: InBuf::new(),
            peer,
            limits,
            handler,
            shutdown,
            accepted_at: Instant::now(),
            node,
        }
    }

    /// Serves requests until the connection closes or is upgraded.
    pub(crate) async fn run(mut self) {
        let mut first = true;
        loop {
            let (head, body) = match self.read_request(first).await {
                Ok(req) => req,
                Err(Stop::Quiet) => return,
                Err(Stop::Reject(resp)) => return self.reject(resp).await,
            };
            first = false;
            let keep_alive = head.keep_alive();
            let http10 = head.version == 0;
            // Validated before the handler consumes the request: only upgrade requests
            // pay for the SHA-1.
            let upgrade_check = (!http10).then(|| upgrade_check_for(&head)).flatten();
            let req = into_request(head, body, self.peer);
            let is_head = req.method == "HEAD";
            // Boxed: the handler future can be large, and an idle connection task
            // should not carry its space between requests.
            let handled = catch_unwind_future(Box::pin(self.handler.handle(req))).await;
            let reply = match handled {
                Ok(reply) => reply,
                Err(payload) => {
                    tracing::error!(
                        peer = %self.peer,
                        panic = panic_message(payload.as_ref()),
                        "request handler panicked; answering 500 and closing"
                    );
                    return self.reject(internal_error()).await;
                }
            };
            match reply {
                Reply::Http(resp) => {
                    let keep = keep_alive && !wants_close(&resp) && !self.shutdown.is_triggered();
                    let conn_header = connection_header(keep, http10);
                    let parts = encode_response(&resp, is_head, conn_header);
                    if write_parts_timeout(&mut self.stream, parts, self.limits.write_timeout)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if !keep {
                        // Bytes the client sent after the request (a stray CRLF, a
                        // pipelined request) would turn a plain close into a RST that
                        // can destroy the response before the client reads it.
                        return linger_close(self.stream).await;
                    }
                    self.inbuf.shrink_when_empty();
                }
                Reply::WebSocket(f) => return self.upgrade(upgrade_check, f).await,
            }
        }
    }

    /// Reads one complete request (head + body).
    async fn read_request(&mut self, first: bool) -> Result<(Head, Bytes), Stop> {
        let head = self.read_head(first).await?;
        self.inbuf.consume(head.len);
        let body = self.read_body(&head).await?;
        Ok((head, body))
    }

    /// Waits for the first byte of a request (idle keep-alive), then for the whole head
    /// within `header_timeout`.
    async fn read_head(&mut self, first: bool) -> Result<Head, Stop> {
        let head_deadline = if self.inbuf.pending().is_empty() {
            self.wait_for_request(first).await?
        } else {
            deadline_after(self.limits.header_timeout)
        };
        let max = self.limits.max_header_bytes;
        let mut scan_from = 0;
        loop {
            let pending = self.inbuf.pending();
            if has_head_end(pending, scan_from) || pending.len() >= max {
                match parse_head(pending, self.limits.max_headers, max) {
                    HeadParse::Complete(head) => return Ok(head),
                    HeadParse::Partial => {}
                    HeadParse::TooLarge => return Err(Stop::Reject(headers_too_large())),
                    HeadParse::Malformed => return Err(Stop::Reject(bad_request())),
                }
            }
            scan_from = head_scan_resume(pending.len());
            self.fill_until(head_deadline, max).await?;
        }
    }

    /// Idle wait before a request: resolves with the head deadline once bytes arrive;
    /// `Quiet` on EOF, idle timeout or shutdown. The first request of a connection gets
    /// `header_timeout` from accept instead of the keep-alive idle time.
    async fn wait_for_request(&mut self, first: bool) -> Result<Instant, Stop> {
        let idle_deadline = if first {
            self.accepted_at
                .checked_add(self.limits.header_timeout)
                .unwrap_or_else(|| deadline_after(self.limits.header_timeout))
        } else {
            deadline_after(self.limits.keepalive_idle)
        };
        let shutdown = self.shutdown.clone();
        let max = self.limits.max_header_bytes;
        // The first read of a request is small: an idle connection parks this buffer
        // in the kernel until its client speaks, so it is kept to a few pages.
        let read = timeout_at(
            idle_deadline,
            self.inbuf.fill(&mut self.stream, max.min(IDLE_READ)),
        );
        monoio::select! {
            _ = shutdown.wait() => Err(Stop::Quiet),
            res = read => match res {
                Ok(Ok(n)) if n > 0 => Ok(if first { idle_deadline } else { deadline_after(self.limits.header_timeout) }),
                _ => Err(Stop::Quiet),
            },
        }
    }

    /// One read bounded by `deadline`, into at most `max_pending` buffered bytes.
    /// EOF, errors and timeouts all mean: close quietly.
    async fn fill_until(&mut self, deadline: Instant, max_pending: usize) -> Result<(), Stop> {
        match timeout_at(deadline, self.inbuf.fill(&mut self.stream, max_pending)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            _ => Err(Stop::Quiet),
        }
    }

    async fn read_body(&mut self, head: &Head) -> Result<Bytes, Stop> {
        let kind = body_kind(head, self.limits.max_body)?;
        if kind == BodyKind::Empty {
            return Ok(Bytes::new());
        }
        let deadline = deadline_after(self.limits.body_timeout);
        if head.expects_continue() && self.inbuf.pending().is_empty() {
            let parts = vec![Bytes::from_static(CONTINUE)];
            write_parts_timeout(&mut self.stream, parts, self.limits.write_timeout)
                .await
                .map_err(|_| Stop::Quiet)?;
        }
        match kind {
            BodyKind::Length(len) => self.read_sized_body(len, deadline).await,
            BodyKind::Chunked => self.read_chunked_body(deadline).await,
            BodyKind::Empty => Ok(Bytes::new()),
        }
    }

    /// Content-Length body: what is buffered first, then straight from the socket into
    /// the body (never past it, so pipelined bytes stay in the socket).
    async fn read_sized_body(&mut self, len: usize, deadline: Instant) -> Result<Bytes, Stop> {
        let pending = self.inbuf.pending();
        let have = pending.len().min(len);
        let mut body = Vec::with_capacity(have.max(len.min(super::io::INITIAL_READ_BUF)));
        body.extend_from_slice(&pending[..have]);
        self.inbuf.consume(have);
        if body.len() < len {
            let read = read_exact_into(&mut self.stream, body, len);
            body = match timeout_at(deadline, read).await {
                Ok(Ok(body)) => body,
                _ => return Err(Stop::Quiet),
            };
        }
        Ok(Bytes::from(body))
    }

    async fn read_chunked_body(&mut self, deadline: Instant) -> Result<Bytes, Stop> {
        let limits = Rc::clone(&self.limits);
        let mut decoder = ChunkedDecoder::new(limits.max_body, limits.max_header_bytes);
        let mut body = Vec::new();
        let window = limits.max_header_bytes.max(CHUNKED_WINDOW);
        loop {
            let used = decoder.decode(self.inbuf.pending(), &mut body)?;
            self.inbuf.consume(used);
            if decoder.is_done() {
                return Ok(Bytes::from(body));
            }
            self.fill_until(deadline, window).await?;
        }
    }

    /// Writes an HTTP-layer error and closes (after draining a little unread input).
    async fn reject(mut self, resp: Response) {
        tracing::debug!(peer = %self.peer, status = resp.status, "rejecting request");
        let parts = encode_response(&resp, false, Some("close"));
        if write_parts_timeout(&mut self.stream, parts, self.limits.write_timeout)
            .await
            .is_ok()
        {
            linger_close(self.stream).await;
        }
    }

    /// Validates the upgrade, writes the `101`, and runs the WebSocket session; the
    /// connection is closed when the session returns.
    async fn upgrade(mut self, check: Option<Result<Response, Response>>, f: UpgradeFn) {
        let accept = match check {
            Some(Ok(accept)) => accept,
            Some(Err(resp)) => return self.reject(resp).await,
            None => return self.reject(invalid_upgrade()).await,
        };
        let Some(slot) = self.node.open_websocket() else {
            tracing::debug!(peer = %self.peer, "WebSocket cap reached");
            return self.reject(too_many_tails()).await;
        };
        let parts = encode_response(&accept, false, None);
        if write_parts_timeout(&mut self.stream, parts, self.limits.write_timeout)
            .await
            .is_err()
        {
            return;
        }
        let buffered = self.inbuf.take_pending();
        let peer = self.peer;
        let ws = WebSocket::new(self.stream, buffered, peer, self.limits, self.shutdown);
        if let Err(payload) = catch_unwind_future(f(ws)).await {
            tracing::error!(
                %peer,
                panic = panic_message(payload.as_ref()),
                "WebSocket session panicked; socket closed"
            );
        }
        drop(slot);
    }
}

/// For an upgrade request, the outcome of [`websocket_accept`] computed on a
/// header-only view (the handler takes the request itself).
fn upgrade_check_for(head: &Head) -> Option<Result<Response, Response>> {
    if !super::request::header_has_token(head.values("upgrade"), "websocket") {
        return None; // the common case allocates nothing
    }
    let view = Request {
        method: head.method.clone(),
        path: String::new(),
        query: None,
        headers: head
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("sec-websocket-") || k == "upgrade")
            .cloned()
            .collect(),
        body: Bytes::new(),
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    Some(websocket_accept(&view))
}

fn into_request(head: Head, body: Bytes, peer: SocketAddr) -> Request {
    Request {
        method: head.method,
        path: head.path,
        query: head.query,
        headers: head.headers,
        body,
        peer,
    }
}

/// Whether the handler asked to close the connection after this response.
fn wants_close(resp: &Response) -> bool {
    super::request::header_has_token(
        resp.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_str()),
        "close",
    )
}

/// The `connection` header to send: `close` when closing; `keep-alive` only where the
/// client would otherwise assume close (HTTP/1.0).
fn connection_header(keep: bool, http10: bool) -> Option<&'static str> {
    match (keep, http10) {
        (false, _) => Some("close"),
        (true, true) => Some("keep-alive"),
        (true, false) => None,
    }
}

/// Headers the connection loop owns; the handler's copies are dropped.
fn is_managed_header(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "server",
    ]
    .iter()
    .any(|m| name.eq_ignore_ascii_case(m))
}

/// A header the handler may send: a token name and a value without CR/LF/NUL (no
/// response splitting).
fn is_valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Statuses whose responses never carry a body (nor, for 1xx/204, a Content-Length).
fn status_has_no_body(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

/// Serializes a response into one or two buffers (head, then the body unless this
/// answers a HEAD request or the status forbids one). A HEAD response keeps the
/// Content-Length the body would have had.
pub(crate) fn encode_response(
    resp: &Response,
    is_head: bool,
    connection: Option<&str>,
) -> Vec<Bytes> {
    let status = if (100..=599).contains(&resp.status) {
        resp.status
    } else {
        500
    };
    let mut head = Vec::with_capacity(128 + resp.headers.len() * 32);
    head.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nserver: {SERVER_NAME}\r\n",
            status,
            reason_phrase(status)
        )
        .as_bytes(),
    );
    if status >= 200 && status != 204 {
        head.extend_from_slice(format!("content-length: {}\r\n", resp.body.len()).as_bytes());
    }
    if let Some(value) = connection {
        head.extend_from_slice(format!("connection: {value}\r\n").as_bytes());
    }
    for (name, value) in &resp.headers {
        if is_managed_header(name) && status != 101 {
            continue;
        }
        if !is_valid_header(name, value) {
            tracing::warn!(header = %name, "dropping invalid response header");
            continue;
        }
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let body = if is_head || status_has_no_body(status) {
        Bytes::new()
    } else {
        resp.body.clone()
    };
    head_and_body(head, body)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Answers a connection refused at accept (e.g. over its address's cap) with `resp`
/// and closes, without reading a request: the write is bounded by `write_timeout`
/// and the linger by [`LINGER_TIME`].
pub(crate) async fn reject_connection(stream: TcpStream, limits: &Limits, resp: Response) {
    let mut stream = HttpStream::Plain(stream);
    let parts = encode_response(&resp, false, Some("close"));
    if write_parts_timeout(&mut stream, parts, limits.write_timeout)
        .await
        .is_ok()
    {
        linger_close(stream).await;
    }
}

/// Half-closes, then drains (bounded in time and bytes) what the client still sends,
/// so our last response is not destroyed by a RST; then closes.
async fn linger_close(mut stream: HttpStream) {
    let _ = stream.shutdown().await;
    let deadline = deadline_after(LINGER_TIME);
    let mut buf = Vec::with_capacity(LINGER_READ);
    let mut drained = 0;
    while drained < LINGER_MAX_BYTES {
        match timeout_at(deadline, stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                drained += n;
                buf = b;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(parts: Vec<Bytes>) -> String {
        parts
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn encodes_head_response_without_body() {
        let resp = Response::json(200, "{\"a\":1}");
        let s = text(encode_response(&resp, true, None));
        assert!(s.starts_with("HTTP/1.1 200 OK\r\nserver: starcite\r\ncontent-length: 7\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn drops_managed_and_invalid_headers() {
        let resp = Response::new(200)
            .with_header("Content-Length", "99")
            .with_header("x-ok", "fine")
            .with_header("x-bad", "a\r\nset-cookie: evil");
        let s = text(encode_response(&resp, false, Some("close")));
        assert!(s.contains("content-length: 0\r\n"));
        assert!(!s.contains("99"));
        assert!(s.contains("x-ok: fine\r\n"));
        assert!(!s.contains("evil"));
        assert!(s.contains("connection: close\r\n"));
    }

    #[test]
    fn no_content_length_on_204() {
        let s = text(encode_response(&Response::new(204), false, None));
        assert!(!s.contains("content-length"));
    }
}
