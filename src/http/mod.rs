//! HTTP/1.1 and WebSocket serving on a monoio core.
