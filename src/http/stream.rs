//! The byte stream under a connection: plain TCP, or TLS over TCP.
//!
//! An enum rather than a type parameter keeps the connection loop and the WebSocket
//! code monomorphic; dispatch costs one branch per I/O operation.

use std::io;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::tls::ServerTlsStream;

/// A connection's stream (see the module docs).
pub enum HttpStream {
    Plain(TcpStream),
    Tls(Box<ServerTlsStream>),
}

impl HttpStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, HttpStream::Tls(_))
    }
}

// SAFETY: both variants are `Split` (monoio's `TcpStream`; monoio-rustls's stream over a
// `Split` I/O): reads and writes may run concurrently on the two halves.
unsafe impl Split for HttpStream {}

impl AsyncReadRent for HttpStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            HttpStream::Plain(s) => s.read(buf).await,
            HttpStream::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            HttpStream::Plain(s) => s.readv(buf).await,
            HttpStream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for HttpStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            HttpStream::Plain(s) => s.write(buf).await,
            HttpStream::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            HttpStream::Plain(s) => s.writev(buf).await,
            HttpStream::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            HttpStream::Plain(s) => s.flush().await,
            HttpStream::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            HttpStream::Plain(s) => s.shutdown().await,
            HttpStream::Tls(s) => s.shutdown().await,
        }
    }
}
