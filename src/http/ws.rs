//! Server-side WebSocket (RFC 6455): handshake validation, a frame reader running as
//! its own task, and a frame writer.
//!
//! Why a reader *task*: monoio reads are not cancel-safe under io_uring (a read
//! dropped by `select!` may already have consumed bytes), so a session loop must never
//! `select!` on a socket read. The reader task owns the read half, parses frames and
//! forwards [`WsEvent`]s over a bounded channel; channel receives are cancel-safe, so
//! the session can `select!` on [`WsReader::next`] together with its own timers and
//! notifications.
//!
//! Inbound data messages are not needed by the API (tail sockets are server → client;
//! client frames are ignored), so their payloads are discarded while they stream in:
//! the reader holds at most one control frame (≤ 125 bytes) plus a small read window.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::stream::HttpStream;
use super::unwind::{catch_unwind_future, panic_message};
use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::time::timeout_at;

use super::io::{deadline_after, head_and_body, write_parts_timeout};
use super::request::{error_response, Request, Response};
use super::server::ShutdownSignal;
use super::Limits;

/// Capacity of the reader task → session event channel. When the session falls
/// behind, the reader stops reading (TCP backpressure) instead of buffering.
pub const WS_EVENT_CHANNEL: usize = 16;
/// Read window of the reader task.
const WS_READ_BUF: usize = 4096;
/// RFC 6455: control frame payloads are at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Close reasons are limited so the close payload fits a control frame.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// Length of a `Sec-WebSocket-Key` (base64 of 16 bytes).
const WS_KEY_LEN: usize = 24;

/// Close code for protocol violations (unmasked frame, bad opcode, ...).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for an invalid UTF-8 close reason.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for a frame over `ws_max_frame`.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code suggested after the idle timeout; 1002 as in the reference server (API
/// contract §7.3, open question §13.12).
pub const CLOSE_IDLE_TIMEOUT: u16 = 1002;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn invalid_upgrade() -> Response {
    error_response(
        400,
        "invalid_websocket_upgrade",
        "WebSocket upgrade required",
    )
}

/// Validates a WebSocket upgrade request (GET, `Upgrade: websocket`, one well-formed
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`) and returns the `101` response,
/// or the 400 `invalid_websocket_upgrade` response. `Connection: Upgrade` is not
/// required (lenient towards clients that omit it).
pub fn websocket_accept(req: &Request) -> Result<Response, Response> {
    let version_ok = req.header_count("sec-websocket-version") == 1
        && req.header("sec-websocket-version").map(str::trim) == Some("13");
    let key = match req.header_count("sec-websocket-key") {
        1 => req
            .header("sec-websocket-key")
            .map(str::trim)
            .filter(|k| is_valid_key(k)),
        _ => None,
    };
    match key {
        Some(key) if version_ok && req.method == "GET" && req.is_websocket_upgrade() => {
            Ok(Response::new(101)
                .with_header("upgrade", "websocket")
                .with_header("connection", "Upgrade")
                .with_header(
                    "sec-websocket-accept",
                    tungstenite::handshake::derive_accept_key(key.as_bytes()),
                ))
        }
        _ => Err(invalid_upgrade()),
    }
}

/// A key is the base64 encoding of 16 bytes: 22 alphabet characters and `==`.
fn is_valid_key(key: &str) -> bool {
    key.len() == WS_KEY_LEN
        && key.ends_with("==")
        && key
            .bytes()
            .take(WS_KEY_LEN - 2)
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// What the reader task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A ping with its payload; answer with [`WsWriter::send_pong`].
    Ping(Vec<u8>),
    Pong,
    /// A complete (possibly fragmented) text or binary message; its content is
    /// discarded (see [`WebSocket::split_keeping_text`] for sockets that read).
    Message,
    /// A complete text message, on sockets split with
    /// [`WebSocket::split_keeping_text`] (payload unmasked, at most the cap).
    Text(Vec<u8>),
    /// The client sent a close frame (with its code, if any). The reader stops.
    Close(Option<u16>),
    /// The stream ended: EOF, I/O error, protocol violation, oversized frame or idle
    /// timeout. [`WsReader::suggested_close_code`] tells which close code to send, if
    /// any. Returned forever after.
    Closed,
}

/// An upgraded connection, before [`split`](Self::split).
pub struct WebSocket {
    stream: HttpStream,
    buffered: Vec<u8>,
    peer: SocketAddr,
    limits: Rc<Limits>,
    shutdown: ShutdownSignal,
}

impl WebSocket {
    pub(crate) fn new(
        stream: HttpStream,
        buffered: Vec<u8>,
        peer: SocketAddr,
        limits: Rc<Limits>,
        shutdown: ShutdownSignal,
    ) -> Self {
        Self {
            stream,
            buffered,
            peer,
            limits,
            shutdown,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Resolves when the server shuts down: the session should then close with 1001
    /// (going away) and return.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.shutdown.clone()
    }

    /// Spawns the reader task (on the current monoio runtime) and returns its event
    /// receiver plus the writer. The task stops when the [`WsReader`] is dropped, after
    /// a close frame, or when the stream ends.
    pub fn split(self) -> (WsReader, WsWriter) {
        self.split_with(0)
    }

    /// Like [`split`](Self::split), but complete text messages of up to
    /// `max_text` bytes (fragments included) are delivered as [`WsEvent::Text`];
    /// a longer one ends the socket (close 1009). Binary messages are still
    /// discarded ([`WsEvent::Message`]). For protocols where the client talks
    /// (the Phoenix socket).
    pub fn split_keeping_text(self, max_text: usize) -> (WsReader, WsWriter) {
        self.split_with(max_text.max(1))
    }

    fn split_with(self, keep_text: usize) -> (WsReader, WsWriter) {
        let (rd, wr) = self.stream.into_split();
        let (tx, rx) = flume::bounded(WS_EVENT_CHANNEL);
        let (stop_tx, stop_rx) = flume::bounded(1);
        let hint = Rc::new(Cell::new(None));
        let task = ReadTask {
            rd,
            buf: self.buffered,
            parser: FrameParser::new(self.limits.ws_max_frame).keeping_text(keep_text),
            tx,
            stop: stop_rx,
            hint: Rc::clone(&hint),
            idle: self.limits.ws_idle_timeout,
        };
        let peer = self.peer;
        monoio::spawn(async move {
            // A panic here drops the event sender: the session sees `Closed`.
            if let Err(payload) = catch_unwind_future(task.run()).await {
                tracing::error!(
                    %peer,
                    panic = panic_message(payload.as_ref()),
                    "WebSocket reader panicked; socket closed"
                );
            }
        });
        let writer = WsWriter {
            wr,
            state: WriterState::Open,
            write_timeout: self.limits.write_timeout,
        };
        (
            WsReader {
                rx,
                _stop: stop_tx,
                hint,
            },
            writer,
        )
    }
}

/// Receiving side of a WebSocket: events from the reader task.
pub struct WsReader {
    rx: flume::Receiver<WsEvent>,
    /// Dropping the reader drops this sender, which stops the reader task.
    _stop: flume::Sender<()>,
    hint: Rc<Cell<Option<u16>>>,
}

impl WsReader {
    /// The next event. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> WsEvent {
        self.rx.recv_async().await.unwrap_or(WsEvent::Closed)
    }

    /// After [`WsEvent::Closed`]: the close code the server should send —
    /// 1002 (protocol error or idle timeout), 1007 (invalid close reason), 1009
    /// (frame too big) — or `None` when the peer is gone (EOF, I/O error).
    pub fn suggested_close_code(&self) -> Option<u16> {
        self.hint.get()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    Open,
    /// A close frame was sent and the write side shut down.
    Closed,
    /// A write failed or timed out: the stream may hold a partial frame.
    Failed,
}

/// Sending side of a WebSocket. Every send writes header and payload together (one
/// syscall in the common case) and is bounded by `Limits::write_timeout` (error kind
/// `TimedOut`); after any error the writer refuses further sends.
pub struct WsWriter {
    wr: OwnedWriteHalf<HttpStream>,
    state: WriterState,
    write_timeout: Duration,
}

impl WsWriter {
    /// One unmasked text frame with FIN set.
    pub async fn send_text(&mut self, data: Bytes) -> io::Result<()> {
        self.send_frame(OP_TEXT, data).await
    }

    /// Several text messages in one write (one syscall for a burst of events).
    pub async fn send_texts(&mut self, messages: Vec<Bytes>) -> io::Result<()> {
        self.send_frames(OP_TEXT, messages).await
    }

    /// A ping (payload ≤ 125 bytes).
    pub async fn send_ping(&mut self, payload: Vec<u8>) -> io::Result<()> {
        check_control_payload(&payload)?;
        self.send_frame(OP_PING, Bytes::from(payload)).await
    }

    /// A pong echoing a ping's payload (≤ 125 bytes).
    pub async fn send_pong(&mut self, payload: Vec<u8>) -> io::Result<()> {
        check_control_payload(&payload)?;
        self.send_frame(OP_PONG, Bytes::from(payload)).await
    }

    /// Sends a close frame, then shuts down the write side. Idempotent. Codes that
    /// may not appear on the wire (e.g. 1005, 1006) send a close without a code;
    /// `reason` is cut to 123 bytes at a character boundary.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        if self.state == WriterState::Closed {
            return Ok(());
        }
        let payload = close_payload(code, reason);
        self.send_frame(OP_CLOSE, payload).await?;
        self.state = WriterState::Closed;
        self.wr.shutdown().await
    }

    /// Whether sends can still succeed.
    pub fn is_open(&self) -> bool {
        self.state == WriterState::Open
    }

    async fn send_frame(&mut self, opcode: u8, payload: Bytes) -> io::Result<()> {
        self.send_frames(opcode, vec![payload]).await
    }

    async fn send_frames(&mut self, opcode: u8, payloads: Vec<Bytes>) -> io::Result<()> {
        match self.state {
            WriterState::Open => {}
            WriterState::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "websocket closed",
                ))
            }
            WriterState::Failed => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "websocket write failed earlier",
                ))
            }
        }
        let mut parts = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let mut head = Vec::with_capacity(10);
            encode_frame_header(opcode, payload.len(), &mut head);
            parts.extend(head_and_body(head, payload));
        }
        let res = write_parts_timeout(&mut self.wr, parts, self.write_timeout).await;
        if res.is_err() {
            self.state = WriterState::Failed;
        }
        res
    }
}

fn check_control_payload(payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "control frame payload over 125 bytes",
        ));
    }
    Ok(())
}

fn close_payload(code: u16, reason: &str) -> Bytes {
    if !is_valid_close_code(code) {
        return Bytes::new();
    }
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    Bytes::from(p)
}

/// Server → client header: FIN set, no mask, minimal length encoding.
fn encode_frame_header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Close codes allowed on the wire (RFC 6455 §7.4, IANA registry, 3000–4999).
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// One parse step of the inbound frame stream.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    /// Bytes consumed; always > 0.
    consumed: usize,
    /// A whole frame has now been received (resets the idle timer).
    frame_done: bool,
    event: Option<WsEvent>,
}

/// A parsed client frame header.
struct FrameHeader {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    header_len: usize,
}

/// Incremental parser of client → server frames. Data payloads are skipped as they
/// arrive; control frames are parsed whole.
#[derive(Debug)]
struct FrameParser {
    max_frame: u64,
    /// Inside a fragmented data message.
    in_message: bool,
    /// Payload bytes of the current data frame still to skip.
    skip: u64,
    /// The data frame being skipped ends a message.
    skip_ends_message: bool,
    /// Keep text messages up to this many bytes (0: discard every payload).
    keep_text: usize,
    /// The current message is a text message being kept in `text`.
    collecting: bool,
    text: Vec<u8>,
    /// Mask of the current data frame and the payload offset reached in it.
    mask: [u8; 4],
    mask_pos: usize,
}

impl FrameParser {
    fn new(max_frame: usize) -> Self {
        Self {
            max_frame: max_frame as u64,
            in_message: false,
            skip: 0,
            skip_ends_message: false,
            keep_text: 0,
            collecting: false,
            text: Vec::new(),
            mask: [0; 4],
            mask_pos: 0,
        }
    }

    fn keeping_text(mut self, max_text: usize) -> Self {
        self.keep_text = max_text;
        self
    }

    /// The event that ends the current message.
    fn message_done(&mut self) -> WsEvent {
        if self.collecting {
            self.collecting = false;
            WsEvent::Text(std::mem::take(&mut self.text))
        } else {
            WsEvent::Message
        }
    }

    /// `Ok(None)`: more input needed. `Err(code)`: fatal, with the close code to send.
    fn step(&mut self, input: &[u8]) -> Result<Option<Step>, u16> {
        if self.skip > 0 {
            return Ok(self.skip_payload(input));
        }
        let Some(h) = parse_frame_header(input)? else {
            return Ok(None);
        };
        match h.opcode {
            OP_CLOSE | OP_PING | OP_PONG => self.control(input, &h),
            OP_CONTINUATION | OP_TEXT | OP_BINARY => self.data(&h).map(Some),
            _ => Err(CLOSE_PROTOCOL_ERROR),
        }
    }

    fn skip_payload(&mut self, input: &[u8]) -> Option<Step> {
        if input.is_empty() {
            return None;
        }
        let n = usize::try_from(self.skip).map_or(input.len(), |s| s.min(input.len()));
        if self.collecting {
            let (mask, pos) = (self.mask, self.mask_pos);
            self.text.extend(
                input[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(pos + i) % 4]),
            );
            self.mask_pos += n;
        }
        self.skip -= n as u64;
        let frame_done = self.skip == 0;
        let event = (frame_done && self.skip_ends_message).then(|| self.message_done());
        Some(Step {
            consumed: n,
            frame_done,
            event,
        })
    }

    fn data(&mut self, h: &FrameHeader) -> Result<Step, u16> {
        if h.len > self.max_frame {
            return Err(CLOSE_TOO_BIG);
        }
        let continuation = h.opcode == OP_CONTINUATION;
        if continuation != self.in_message {
            return Err(CLOSE_PROTOCOL_ERROR);
        }
        self.in_message = !h.fin;
        if !continuation {
            self.collecting = self.keep_text > 0 && h.opcode == OP_TEXT;
            self.text.clear();
        }
        if self.collecting && self.text.len() as u64 + h.len > self.keep_text as u64 {
            return Err(CLOSE_TOO_BIG);
        }
        self.mask = h.mask;
        self.mask_pos = 0;
        if h.len == 0 {
            let event = h.fin.then(|| self.message_done());
            return Ok(Step {
                consumed: h.header_len,
                frame_done: true,
                event,
            });
        }
        self.skip = h.len;
        self.skip_ends_message = h.fin;
        Ok(Step {
            consumed: h.header_len,
            frame_done: false,
            event: None,
        })
    }

    fn control(&mut self, input: &[u8], h: &FrameHeader) -> Result<Option<Step>, u16> {
        if !h.fin || h.len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(CLOSE_PROTOCOL_ERROR);
        }
        if h.len > self.max_frame {
            return Err(CLOSE_TOO_BIG);
        }
        let total = h.header_len + h.len as usize;
        let Some(raw) = input.get(h.header_len..total) else {
            return Ok(None);
        };
        let payload: Vec<u8> = raw
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ h.mask[i % 4])
            .collect();
        let event = match h.opcode {
            OP_PING => WsEvent::Ping(payload),
            OP_PONG => WsEvent::Pong,
            _ => WsEvent::Close(parse_close(&payload)?),
        };
        Ok(Some(Step {
            consumed: total,
            frame_done: true,
            event: Some(event),
        }))
    }
}

/// Parses a client frame header; protocol errors for reserved bits, missing mask or a
/// 64-bit length with the top bit set.
fn parse_frame_header(input: &[u8]) -> Result<Option<FrameHeader>, u16> {
    let (Some(&b0), Some(&b1)) = (input.first(), input.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
        return Err(CLOSE_PROTOCOL_ERROR);
    }
    let (len, ext) = match b1 & 0x7F {
        126 => match input.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match input.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) if b[0] & 0x80 != 0 => return Err(CLOSE_PROTOCOL_ERROR),
            Some(b) => (u64::from_be_bytes(b), 8),
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    let header_len = 2 + ext + 4;
    let Some(mask) = input
        .get(2 + ext..header_len)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
    else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        mask,
        len,
        header_len,
    }))
}

/// A close payload: empty, or a valid code plus a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, u16> {
    match payload {
        [] => Ok(None),
        [_] => Err(CLOSE_PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(CLOSE_PROTOCOL_ERROR);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(CLOSE_INVALID_DATA);
            }
            Ok(Some(code))
        }
    }
}

/// What ended one wait for input.
enum ReadOutcome {
    Data(Vec<u8>),
    /// EOF or I/O error: the peer is gone.
    Gone,
    IdleTimeout,
    /// The [`WsReader`] was dropped.
    Stopped,
}

/// The reader task: socket → frames → events.
struct ReadTask {
    rd: OwnedReadHalf<HttpStream>,
    buf: Vec<u8>,
    parser: FrameParser,
    tx: flume::Sender<WsEvent>,
    stop: flume::Receiver<()>,
    hint: Rc<Cell<Option<u16>>>,
    idle: Duration,
}

impl ReadTask {
    async fn run(mut self) {
        let mut deadline = deadline_after(self.idle);
        let mut buf = std::mem::take(&mut self.buf);
        buf.reserve(WS_READ_BUF.saturating_sub(buf.len()));
        loop {
            let mut pos = 0;
            loop {
                match self.parser.step(buf.get(pos..).unwrap_or_default()) {
                    Ok(None) => break,
                    Ok(Some(step)) => {
                        pos += step.consumed;
                        if step.frame_done {
                            deadline = deadline_after(self.idle);
                        }
                        let Some(event) = step.event else { continue };
                        let last = matches!(event, WsEvent::Close(_));
                        if self.tx.send_async(event).await.is_err() || last {
                            return;
                        }
                    }
                    Err(code) => return self.finish(Some(code)).await,
                }
            }
            buf.drain(..pos.min(buf.len()));
            buf = match self.read_more(buf, deadline).await {
                ReadOutcome::Data(buf) => buf,
                ReadOutcome::Gone => return self.finish(None).await,
                ReadOutcome::IdleTimeout => return self.finish(Some(CLOSE_IDLE_TIMEOUT)).await,
                ReadOutcome::Stopped => return,
            };
        }
    }

    /// One read appended to `buf`, racing the idle deadline and the stop signal. A
    /// losing read is dropped with its bytes, which is fine: the task ends then.
    async fn read_more(
        &mut self,
        mut buf: Vec<u8>,
        deadline: monoio::time::Instant,
    ) -> ReadOutcome {
        let len = buf.len();
        if buf.capacity() == len {
            buf.reserve(WS_READ_BUF);
        }
        let cap = buf.capacity();
        let stop = self.stop.clone();
        let read = timeout_at(deadline, self.rd.read(buf.slice_mut(len..cap)));
        monoio::select! {
            _ = stop.recv_async() => ReadOutcome::Stopped,
            res = read => match res {
                Ok((Ok(n), slice)) if n > 0 => ReadOutcome::Data(slice.into_inner()),
                Ok(_) => ReadOutcome::Gone,
                Err(_) => ReadOutcome::IdleTimeout,
            },
        }
    }

    async fn finish(self, code: Option<u16>) {
        self.hint.set(code);
        let _ = self.tx.send_async(WsEvent::Closed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `input` one byte at a time and collects events (or the error code).
    fn run_parser(max_frame: usize, input: &[u8]) -> Result<Vec<WsEvent>, u16> {
        let mut p = FrameParser::new(max_frame);
        let mut events = Vec::new();
        let mut buf = Vec::new();
        for &b in input {
            buf.push(b);
            while let Some(step) = p.step(&buf)? {
                assert!(step.consumed > 0);
                buf.drain(..step.consumed);
                events.extend(step.event);
            }
        }
        Ok(events)
    }

    #[test]
    fn rfc_example_accept_key() {
        let req = Request {
            method: "GET".into(),
            path: "/chat".into(),
            query: None,
            headers: vec![
                ("upgrade".into(), "websocket".into()),
                ("connection".into(), "Upgrade".into()),
                (
                    "sec-websocket-key".into(),
                    "dGhlIHNhbXBsZSBub25jZQ==".into(),
                ),
                ("sec-websocket-version".into(), "13".into()),
            ],
            body: Bytes::new(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        let resp = websocket_accept(&req).unwrap();
        assert_eq!(resp.status, 101);
        assert!(resp.headers.contains(&(
            "sec-websocket-accept".into(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
        )));

        let mut bad = req.clone();
        bad.headers.retain(|(k, _)| k != "sec-websocket-version");
        let err = websocket_accept(&bad).unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(
            &err.body[..],
            br#"{"error":"invalid_websocket_upgrade","message":"WebSocket upgrade required"}"#
        );
        let mut no_key = req.clone();
        no_key.headers.retain(|(k, _)| k != "sec-websocket-key");
        assert!(websocket_accept(&no_key).is_err());
    }

    #[test]
    fn parses_control_and_fragmented_frames() {
        let mut input = client_frame(0x89, b"hi");
        input.extend(client_frame(0x01, b"part1")); // text, not final
        input.extend(client_frame(0x8A, b"")); // pong between fragments
        input.extend(client_frame(0x80, &vec![b'x'; 300])); // final continuation
        input.extend(client_frame(0x82, b"")); // empty binary message
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        input.extend(client_frame(0x88, &close));
        let events = run_parser(64 * 1024, &input).unwrap();
        assert_eq!(
            events,
            vec![
                WsEvent::Ping(b"hi".to_vec()),
                WsEvent::Pong,
                WsEvent::Message,
                WsEvent::Message,
                WsEvent::Close(Some(1000))
            ]
        );
    }

    #[test]
    fn keeps_text_messages_when_asked() {
        let mut input = client_frame(0x81, b"[null,\"1\",\"phoenix\",\"heartbeat\",{}]");
        input.extend(client_frame(0x01, b"ab")); // fragmented text
        input.extend(client_frame(0x89, b"p")); // ping between fragments
        input.extend(client_frame(0x80, b"cd"));
        input.extend(client_frame(0x82, b"bin")); // binary: discarded
        input.extend(client_frame(0x81, b""));
        let mut p = FrameParser::new(1024).keeping_text(64);
        let mut events = Vec::new();
        let mut buf = Vec::new();
        for &b in &input {
            buf.push(b);
            while let Some(step) = p.step(&buf).unwrap() {
                buf.drain(..step.consumed);
                events.extend(step.event);
            }
        }
        assert_eq!(
            events,
            vec![
                WsEvent::Text(br#"[null,"1","phoenix","heartbeat",{}]"#.to_vec()),
                WsEvent::Ping(b"p".to_vec()),
                WsEvent::Text(b"abcd".to_vec()),
                WsEvent::Message,
                WsEvent::Text(Vec::new()),
            ]
        );
        // Over the cap, across fragments: 1009.
        let mut big = client_frame(0x01, &[b'x'; 40]);
        big.extend(client_frame(0x80, &[b'x'; 40]));
        let mut p = FrameParser::new(1024).keeping_text(64);
        let mut res = Ok(None);
        let mut buf = Vec::new();
        for &b in &big {
            buf.push(b);
            res = p.step(&buf);
            match &res {
                Ok(Some(step)) => {
                    buf.drain(..step.consumed);
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
        assert_eq!(res.err(), Some(CLOSE_TOO_BIG));
    }

    #[test]
    fn protocol_violations() {
        let mut unmasked = client_frame(0x81, b"x");
        unmasked[1] &= 0x7F;
        assert_eq!(run_parser(1024, &unmasked), Err(CLOSE_PROTOCOL_ERROR));
        assert_eq!(
            run_parser(1024, &client_frame(0xC1, b"x")),
            Err(CLOSE_PROTOCOL_ERROR)
        ); // RSV1
        assert_eq!(
            run_parser(1024, &client_frame(0x80, b"x")),
            Err(CLOSE_PROTOCOL_ERROR)
        ); // stray continuation
        assert_eq!(
            run_parser(1024, &client_frame(0x09, b"x")),
            Err(CLOSE_PROTOCOL_ERROR)
        ); // fragmented ping
        assert_eq!(
            run_parser(1024, &client_frame(0x83, b"x")),
            Err(CLOSE_PROTOCOL_ERROR)
        ); // reserved opcode
        assert_eq!(
            run_parser(1024, &client_frame(0x89, &[0; 126])),
            Err(CLOSE_PROTOCOL_ERROR)
        );
        assert_eq!(
            run_parser(1024, &client_frame(0x82, &[0; 1025])),
            Err(CLOSE_TOO_BIG)
        );
        assert_eq!(
            run_parser(1024, &client_frame(0x88, &[0x03])),
            Err(CLOSE_PROTOCOL_ERROR)
        );
        assert_eq!(
            run_parser(1024, &client_frame(0x88, &[0x03, 0xED])),
            Err(CLOSE_PROTOCOL_ERROR)
        ); // 1005
        assert_eq!(
            run_parser(1024, &client_frame(0x88, &[0x03, 0xE8, 0xff])),
            Err(CLOSE_INVALID_DATA)
        );
        let mut text_in_message = client_frame(0x01, b"a");
        text_in_message.extend(client_frame(0x81, b"b"));
        assert_eq!(
            run_parser(1024, &text_in_message),
            Err(CLOSE_PROTOCOL_ERROR)
        );
    }

    #[test]
    fn header_encoding_and_close_payload() {
        let mut h = Vec::new();
        encode_frame_header(OP_TEXT, 5, &mut h);
        assert_eq!(h, [0x81, 5]);
        h.clear();
        encode_frame_header(OP_TEXT, 300, &mut h);
        assert_eq!(h, [0x81, 126, 1, 44]);
        h.clear();
        encode_frame_header(OP_TEXT, 70_000, &mut h);
        assert_eq!(h, [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(&close_payload(1001, "bye")[..], b"\x03\xe9bye");
        assert!(close_payload(1006, "x").is_empty());
        let long = "é".repeat(100);
        let p = close_payload(1000, &long);
        assert!(p.len() <= MAX_CONTROL_PAYLOAD && std::str::from_utf8(&p[2..]).is_ok());
    }
}
