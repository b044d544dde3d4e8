//! Pure (no I/O) parsing: request heads, body framing, chunked decoding.
//!
//! Kept free of I/O so every rule can be unit-tested on byte slices, and so that the
//! connection loop only has to decide *when* to read.

use super::request::header_has_token;

/// Longest chunk-size line (size + extensions + CRLF) accepted in a chunked body.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;

/// A parsed request head (request line + headers), owned.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Bytes the head occupied in the input.
    pub len: usize,
}

/// Outcome of trying to parse a head from the bytes received so far.
#[derive(Debug)]
pub(crate) enum HeadParse {
    Complete(Head),
    /// More bytes are needed (and the cap is not reached yet).
    Partial,
    /// Head over `max_header_bytes` or more than `max_headers` headers → 431.
    TooLarge,
    /// Anything else invalid (including non-UTF-8 header values) → 400.
    Malformed,
}

/// Whether `buf` contains an end-of-head marker (`\n\r\n` or `\n\n`), scanning from
/// `from` only, so that repeated checks while bytes trickle in stay linear overall.
pub(crate) fn has_head_end(buf: &[u8], from: usize) -> bool {
    let start = from.min(buf.len());
    let mut i = start;
    while let Some(off) = buf
        .get(i..)
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
    {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return true,
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return true,
            _ => i = nl + 1,
        }
    }
    false
}

/// Where [`has_head_end`] should resume after it failed on `len` bytes: a marker may
/// straddle the old end, so back up by its length.
pub(crate) fn head_scan_resume(len: usize) -> usize {
    len.saturating_sub(3)
}

/// Parses a request head from the start of `buf`.
pub(crate) fn parse_head(buf: &[u8], max_headers: usize, max_header_bytes: usize) -> HeadParse {
    // A header takes at least 3 bytes ("a:\n"), so more slots than that can never fill;
    // this also keeps a misconfigured `max_headers` from allocating absurdly.
    let slots = max_headers.min(max_header_bytes / 3 + 1);
    let mut headers = vec![httparse::EMPTY_HEADER; slots];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_header_bytes => HeadParse::TooLarge,
        Ok(httparse::Status::Complete(len)) => {
            head_from(&req, len).map_or(HeadParse::Malformed, HeadParse::Complete)
        }
        Ok(httparse::Status::Partial) if buf.len() >= max_header_bytes => HeadParse::TooLarge,
        Ok(httparse::Status::Partial) => HeadParse::Partial,
        Err(httparse::Error::TooManyHeaders) => HeadParse::TooLarge,
        Err(_) => HeadParse::Malformed,
    }
}

/// Copies a complete `httparse` request into an owned [`Head`]; `None` if a header
/// value is not UTF-8 or a field is missing.
fn head_from(req: &httparse::Request<'_, '_>, len: usize) -> Option<Head> {
    let target = req.path?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let headers = req
        .headers
        .iter()
        .map(|h| {
            Some((
                h.name.to_ascii_lowercase(),
                std::str::from_utf8(h.value).ok()?.to_owned(),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Head {
        method: req.method?.to_owned(),
        path,
        query,
        headers,
        version: req.version?,
        len,
    })
}

impl Head {
    pub(crate) fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 closes it
    /// unless `Connection: keep-alive`.
    pub(crate) fn keep_alive(&self) -> bool {
        if header_has_token(self.values("connection"), "close") {
            return false;
        }
        self.version >= 1 || header_has_token(self.values("connection"), "keep-alive")
    }

    /// `Expect: 100-continue` on an HTTP/1.1 request (1.0 clients do not know 100).
    pub(crate) fn expects_continue(&self) -> bool {
        self.version >= 1
            && self
                .values("expect")
                .any(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }
}

/// How the request body is delimited.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Empty,
    Length(usize),
    Chunked,
}

/// Why a body cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// Invalid or conflicting framing → 400.
    Malformed,
    /// Body over `max_body` → 413.
    TooLarge,
}

/// Decides the body framing from the headers. Both `Content-Length` and
/// `Transfer-Encoding`, conflicting lengths, or any coding other than exactly
/// `chunked` are rejected (request smuggling defence).
pub(crate) fn body_kind(head: &Head, max_body: usize) -> Result<BodyKind, FramingError> {
    let mut te = head.values("transfer-encoding");
    let mut cl = head.values("content-length").peekable();
    if let Some(coding) = te.next() {
        let only_chunked = coding.trim().eq_ignore_ascii_case("chunked") && te.next().is_none();
        return if only_chunked && cl.peek().is_none() {
            Ok(BodyKind::Chunked)
        } else {
            Err(FramingError::Malformed)
        };
    }
    let Some(first) = cl.next() else {
        return Ok(BodyKind::Empty);
    };
    let len = parse_content_length(first).ok_or(FramingError::Malformed)?;
    if cl.any(|v| parse_content_length(v) != Some(len)) {
        return Err(FramingError::Malformed);
    }
    match len {
        0 => Ok(BodyKind::Empty),
        n if n > max_body as u64 => Err(FramingError::TooLarge),
        n => usize::try_from(n)
            .map(BodyKind::Length)
            .map_err(|_| FramingError::TooLarge),
    }
}

/// A Content-Length value: ASCII digits only (no sign, no list), fitting in u64.
fn parse_content_length(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailer,
    Done,
}

/// Incremental decoder of a chunked body. Feed it whatever is buffered; it consumes
/// what it can and appends chunk data to the body.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    total: u64,
    trailer_bytes: usize,
    max_body: u64,
    max_trailer: usize,
}

impl ChunkedDecoder {
    pub(crate) fn new(max_body: usize, max_trailer: usize) -> Self {
        Self {
            state: ChunkState::Size,
            total: 0,
            trailer_bytes: 0,
            max_body: max_body as u64,
            max_trailer,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes as much of `input` as possible, appending data to `body`. Returns the
    /// number of bytes consumed; when it is short of `input.len()` and the decoder is
    /// not done, more input is needed.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
    ) -> Result<usize, FramingError> {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            let step = match self.state {
                ChunkState::Size => self.size_line(rest)?,
                ChunkState::Data(left) => self.data(rest, left, body),
                ChunkState::DataEnd => self.data_end(rest)?,
                ChunkState::Trailer => self.trailer_line(rest)?,
                ChunkState::Done => return Ok(pos),
            };
            match step {
                Some(n) => pos += n,
                None => return Ok(pos),
            }
        }
    }

    /// `Some(consumed)` on progress, `None` when more input is needed.
    fn size_line(&mut self, rest: &[u8]) -> Result<Option<usize>, FramingError> {
        // httparse reads an empty line as size 0 (the last chunk); require a digit.
        if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
            return Err(FramingError::Malformed);
        }
        match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete((n, 0))) => {
                self.state = ChunkState::Trailer;
                Ok(Some(n))
            }
            Ok(httparse::Status::Complete((n, size))) => {
                let total = self.total.checked_add(size).ok_or(FramingError::TooLarge)?;
                if total > self.max_body {
                    return Err(FramingError::TooLarge);
                }
                self.state = ChunkState::Data(size);
                Ok(Some(n))
            }
            Ok(httparse::Status::Partial) if rest.len() >= MAX_CHUNK_LINE => {
                Err(FramingError::Malformed)
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(FramingError::Malformed),
        }
    }

    fn data(&mut self, rest: &[u8], left: u64, body: &mut Vec<u8>) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
        body.extend_from_slice(rest.get(..take).unwrap_or_default());
        self.total += take as u64;
        let left = left - take as u64;
        self.state = if left == 0 {
            ChunkState::DataEnd
        } else {
            ChunkState::Data(left)
        };
        Some(take)
    }

    fn data_end(&mut self, rest: &[u8]) -> Result<Option<usize>, FramingError> {
        match rest {
            [b'\r', b'\n', ..] => {
                self.state = ChunkState::Size;
                Ok(Some(2))
            }
            [] | [b'\r'] => Ok(None),
            _ => Err(FramingError::Malformed),
        }
    }

    /// Trailer fields are read (bounded by `max_trailer`) and discarded.
    fn trailer_line(&mut self, rest: &[u8]) -> Result<Option<usize>, FramingError> {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return if self.trailer_bytes + rest.len() > self.max_trailer {
                Err(FramingError::Malformed)
            } else {
                Ok(None)
            };
        };
        let line = &rest[..=nl];
        self.trailer_bytes += line.len();
        if self.trailer_bytes > self.max_trailer || !line.ends_with(b"\r\n") {
            return Err(FramingError::Malformed);
        }
        if line.len() == 2 {
            self.state = ChunkState::Done;
        }
        Ok(Some(line.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes(), 64, 16 * 1024) {
            HeadParse::Complete(h) => h,
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn parses_path_query_and_lowercases_names() {
        let h = head(
            "GET /v1/sessions/a%20b/tail?cursor=3&x HTTP/1.1\r\nHost: x\r\nX-Thing: V\r\n\r\nrest",
        );
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/v1/sessions/a%20b/tail");
        assert_eq!(h.query.as_deref(), Some("cursor=3&x"));
        assert_eq!(
            h.headers,
            vec![("host".into(), "x".into()), ("x-thing".into(), "V".into())]
        );
        assert_eq!(h.version, 1);
        assert_eq!(
            h.len,
            "GET /v1/sessions/a%20b/tail?cursor=3&x HTTP/1.1\r\nHost: x\r\nX-Thing: V\r\n\r\n"
                .len()
        );
    }

    #[test]
    fn head_limits_and_errors() {
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost", 64, 1024),
            HeadParse::Partial
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nA: b\r\nB: c\r\n\r\n", 1, 1024),
            HeadParse::TooLarge
        ));
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(2000));
        assert!(matches!(
            parse_head(big.as_bytes(), 64, 1024),
            HeadParse::TooLarge
        ));
        assert!(matches!(
            parse_head(&big.as_bytes()[..1500], 64, 1024),
            HeadParse::TooLarge
        ));
        assert!(matches!(
            parse_head(b"GARBAGE\r\n\r\n", 64, 1024),
            HeadParse::Malformed
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nA: \xff\xfe\r\n\r\n", 64, 1024),
            HeadParse::Malformed
        ));
    }

    #[test]
    fn head_end_scan() {
        assert!(!has_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0));
        assert!(has_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", 0));
        assert!(has_head_end(b"GET / HTTP/1.0\n\n", 0));
        let buf = b"GET / HTTP/1.1\r\n\r\n";
        assert!(has_head_end(buf, head_scan_resume(buf.len() - 1)));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn body_framing() {
        let kind = |raw: &str| body_kind(&head(raw), 100);
        assert_eq!(kind("POST / HTTP/1.1\r\n\r\n"), Ok(BodyKind::Empty));
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(BodyKind::Length(5))
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(BodyKind::Length(5))
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(FramingError::Malformed)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
            Err(FramingError::Malformed)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            Err(FramingError::TooLarge)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(FramingError::Malformed)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(BodyKind::Chunked)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(FramingError::Malformed)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            Err(FramingError::Malformed)
        );
    }

    #[test]
    fn chunked_decoding_in_pieces() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 1..input.len() {
            let mut dec = ChunkedDecoder::new(100, 100);
            let mut body = Vec::new();
            let mut buf = input[..split].to_vec();
            let mut fed = split;
            while !dec.is_done() {
                let n = dec.decode(&buf, &mut body).unwrap();
                buf.drain(..n);
                buf.extend_from_slice(&input[fed..(fed + 1).min(input.len())]);
                fed = (fed + 1).min(input.len());
            }
            assert_eq!(body, b"hello world", "split at {split}");
        }
    }

    #[test]
    fn chunked_errors() {
        let mut body = Vec::new();
        assert_eq!(
            ChunkedDecoder::new(4, 100).decode(b"5\r\nhello\r\n", &mut body),
            Err(FramingError::TooLarge)
        );
        assert_eq!(
            ChunkedDecoder::new(100, 100).decode(b"zz\r\n", &mut body),
            Err(FramingError::Malformed)
        );
        assert_eq!(
            ChunkedDecoder::new(100, 100).decode(b"2\r\nabXY", &mut body),
            Err(FramingError::Malformed)
        );
        let long = vec![b'1'; MAX_CHUNK_LINE];
        assert_eq!(
            ChunkedDecoder::new(100, 100).decode(&long, &mut body),
            Err(FramingError::Malformed)
        );
        let huge = b"fffffffffffffff\r\n";
        assert_eq!(
            ChunkedDecoder::new(100, 100).decode(huge, &mut body),
            Err(FramingError::TooLarge)
        );
        assert_eq!(
            ChunkedDecoder::new(100, 100).decode(b"\r\n\r\n", &mut body),
            Err(FramingError::Malformed)
        );
    }
}
