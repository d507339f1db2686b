//! A small, strict HTTP/1.1 server and blocking client for the node's local control API.
//!
//! The node serves its control API (JSON status, metrics, job submission with a binary
//! body, log polling) on 127.0.0.1, and the `roam` CLI talks to it. That needs a tiny
//! fraction of HTTP, so instead of pulling hyper's dependency tree into a build that
//! already carries wasmtime and libp2p, this module implements exactly that fraction:
//! `Content-Length` bodies only, keep-alive, one request at a time per connection.
//!
//! Input is untrusted even on 127.0.0.1: any local process, and any web page open in a
//! local browser, can reach the port. So every size is bounded ([`ServerLimits`]), a whole
//! request must arrive within a deadline (slow-loris clients are cut), the number of
//! connections is capped, malformed input is answered with a 4xx/5xx and the connection
//! closed, and nothing here panics on network data. Against browsers specifically, the
//! server refuses requests whose `Host` does not name a loopback address (DNS rebinding)
//! and requests that carry an `Origin` header (cross-site `fetch`/form posts; the CLI never
//! sends one).
//!
//! The server runs on the caller's `LocalSet` (e.g. an actix system), so handlers need not
//! be `Send`. The client is plain blocking `std` code with an overall deadline.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

/// A parsed request, handed to the [`Handler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method exactly as sent (methods are case-sensitive), e.g. `GET`.
    pub method: String,
    /// The percent-decoded path, without the query.
    pub path: String,
    /// Percent-decoded query pairs (`+` is a space), in order, repeated keys kept.
    /// A key without `=` has an empty value.
    pub query: Vec<(String, String)>,
    /// Header fields in order; names are lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; empty when there is none).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of query key `key`.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query_values(key).next()
    }

    /// All values of query key `key`, in request order.
    pub fn query_values<'a, 'k>(
        &'a self,
        key: &'k str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'k> {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A response produced by a [`Handler`].
///
/// The server adds `Content-Length` and `Connection` itself; entries of `headers` that
/// would change the framing (`Content-Length`, `Transfer-Encoding`, `Connection`, ...) or
/// that are not valid header fields are dropped with a warning. A status outside
/// 200..=599 is replaced by a 500. A 204 or 304 is sent without body and without
/// `Content-Length`; the answer to a `HEAD` carries the `Content-Length` of the body but
/// not the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Sent as `Content-Type` unless empty.
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// `value` serialised as JSON. A value that cannot be serialised (e.g. a map with
    /// non-string keys) gives a 500 instead.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::bytes(status, JSON, body),
            Err(e) => {
                tracing::error!(error = %e, "http: response value does not serialise to JSON");
                Response::error(500, "response could not be serialised")
            }
        }
    }

    /// A UTF-8 plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::bytes(
            status,
            "text/plain; charset=utf-8",
            body.into().into_bytes(),
        )
    }

    /// A response with an arbitrary body and content type.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: content_type.to_owned(),
            headers: Vec::new(),
            body,
        }
    }

    /// The JSON object `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let body = serde_json::json!({ "error": message.into() }).to_string();
        Response::bytes(status, JSON, body.into_bytes())
    }

    /// Adds a header field (see the type's documentation for which ones are dropped).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Bounds on what one client may make the server hold or wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Request line plus header fields, including the blank line (431 beyond).
    pub max_head_bytes: usize,
    /// `Content-Length` of a request body (413 beyond).
    pub max_body_bytes: usize,
    /// Deadline for a whole request, from the moment the server starts waiting for it to
    /// its last body byte (408 when it passes mid-request; an idle keep-alive connection
    /// is closed silently). Also bounds the writing of each response.
    pub read_timeout: Duration,
    /// Connections served at once; further ones are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 256 * 1024 * 1024,
            read_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Answers requests. Runs on the server's `LocalSet`, so it need not be `Send`.
pub type Handler = Rc<dyn Fn(Request) -> LocalBoxFuture<'static, Response>>;

/// Errors of the blocking client.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    /// A non-2xx answer; `message` is the JSON `error` field if there is one, else the
    /// start of the body, else the reason phrase.
    #[error("server answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The caller asked for something that cannot be sent (bad method, path or header).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// A response received by [`request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    pub status: u16,
    /// Header fields in order; names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Decodes a 2xx JSON body. A non-2xx answer gives [`HttpError::Status`] (with the
    /// server's `error` message), an undecodable body [`HttpError::Malformed`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        self.check_status()?;
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Malformed(format!("invalid JSON body: {e}")))
    }

    /// `Ok(self)` for a 2xx answer, else [`HttpError::Status`].
    pub fn error_for_status(self) -> Result<ClientResponse, HttpError> {
        self.check_status()?;
        Ok(self)
    }

    fn check_status(&self) -> Result<(), HttpError> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        Err(HttpError::Status {
            status: self.status,
            message: error_message(self.status, &self.body),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

const JSON: &str = "application/json";
/// Size of the reads of a request head.
const READ_CHUNK: usize = 8 * 1024;
/// Bodies up to this size are written in one go with their head.
const COALESCE_BODY: usize = 64 * 1024;
/// Initial allocation for a request body; it grows with the bytes actually received, so
/// a `Content-Length` alone cannot make the server reserve `max_body_bytes`.
const BODY_INITIAL_CAPACITY: usize = 1024 * 1024;
/// After answering and before closing, the server reads and discards what the client is
/// still sending (e.g. the body of a request answered 413), so that the close does not
/// turn into a reset that destroys the answer before the client reads it. Bounded by
/// these and by `read_timeout`.
const LINGER_MAX_TIME: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Pause after the process ran out of file descriptors, before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections on `listener` and serves them with `handler` until accepting
/// fails for a reason other than a transient one; returns that error.
///
/// Must run inside a `tokio::task::LocalSet` (an actix system is one): each connection is
/// a `spawn_local` task. Requests are served one at a time per connection (pipelined
/// requests wait their turn). Besides the limits, the server refuses: a `Transfer-Encoding`
/// (501), a missing or repeated `Host` on HTTP/1.1 (400), a `Host` that is not
/// `localhost`, 127.0.0.0/8 or `[::1]` (403), any `Origin` header (403), an `Expect`
/// other than `100-continue` (417), and HTTP versions other than 1.0/1.1 (505).
pub async fn serve(
    listener: TcpListener,
    limits: ServerLimits,
    handler: Handler,
) -> std::io::Error {
    let limits = Rc::new(limits);
    let active = Rc::new(Cell::new(0usize));
    let lingering = Rc::new(Cell::new(0usize));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if accept_error_is_per_connection(&e) => {
                tracing::debug!(error = %e, "http: accept failed for one connection");
                continue;
            }
            Err(e) if accept_error_is_exhaustion(&e) => {
                tracing::warn!(error = %e, "http: cannot accept connections; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "http: listener failed");
                return e;
            }
        };
        // Responses are written in at most two writes; Nagle would hold the second.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "http: cannot set TCP_NODELAY");
        }
        if let Some(slot) = Slot::take(&active, limits.max_connections) {
            let conn = Connection {
                limits: Rc::clone(&limits),
                handler: Rc::clone(&handler),
                lingering: Rc::clone(&lingering),
                peer,
            };
            tokio::task::spawn_local(conn.run(stream, slot));
        } else if let Some(linger_slot) = Slot::take(&lingering, limits.max_connections) {
            tracing::debug!(%peer, "http: too many connections; answering 503");
            let linger_time = limits.read_timeout.min(LINGER_MAX_TIME);
            tokio::task::spawn_local(refuse_busy(stream, linger_time, linger_slot));
        } else {
            tracing::debug!(%peer, "http: too many connections; dropping");
        }
    }
}

fn accept_error_is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

fn accept_error_is_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) have these numbers on Linux and the BSDs; std has no
    // ErrorKind for them.
    e.kind() == std::io::ErrorKind::OutOfMemory || matches!(e.raw_os_error(), Some(23 | 24))
}

/// One unit of a capped count; gives it back when dropped.
struct Slot(Rc<Cell<usize>>);

impl Slot {
    fn take(counter: &Rc<Cell<usize>>, max: usize) -> Option<Slot> {
        let n = counter.get();
        if n >= max {
            return None;
        }
        counter.set(n + 1);
        Some(Slot(Rc::clone(counter)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

async fn refuse_busy(mut stream: TcpStream, linger_time: Duration, slot: Slot) {
    let resp = Response::error(503, "too many connections").with_header("Retry-After", "1");
    let (head, body) = encode_response(resp, false, ConnectionHeader::Close);
    let mut bytes = head;
    bytes.extend_from_slice(&body);
    let written = tokio::time::timeout(linger_time, stream.write_all(&bytes)).await;
    if matches!(written, Ok(Ok(()))) {
        linger(stream, linger_time).await;
    }
    drop(slot);
}

/// Why a connection stops.
enum Ending {
    /// Nothing more to say (EOF, I/O error, idle timeout): just close.
    Close,
    /// An answer was sent that the client must be able to read: shut down our side and
    /// drain the client's before closing.
    Linger,
}

/// How a request could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadFailure {
    /// EOF or an I/O error before any byte of a request: close silently.
    Closed,
    /// Answer with this status and message, then close.
    Reject(Rejection),
}

#[derive(Debug, PartialEq, Eq)]
struct Rejection {
    status: u16,
    message: String,
}

fn rejection(status: u16, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        message: message.into(),
    }
}

fn reject<T>(status: u16, message: impl Into<String>) -> Result<T, Rejection> {
    Err(rejection(status, message))
}

impl From<Rejection> for ReadFailure {
    fn from(r: Rejection) -> Self {
        ReadFailure::Reject(r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionHeader {
    /// HTTP/1.1 keep-alive: no header needed.
    None,
    /// HTTP/1.0 keep-alive must be announced.
    KeepAlive,
    Close,
}

struct Connection {
    limits: Rc<ServerLimits>,
    handler: Handler,
    lingering: Rc<Cell<usize>>,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, mut stream: TcpStream, slot: Slot) {
        let ending = self.drive(&mut stream).await;
        // The slot is given back before our side is shut down, so a client that has seen
        // the end of this connection can count on its next connection being served.
        drop(slot);
        if let Ending::Linger = ending {
            match Slot::take(&self.lingering, self.limits.max_connections) {
                Some(linger_slot) => {
                    linger(stream, self.limits.read_timeout.min(LINGER_MAX_TIME)).await;
                    drop(linger_slot);
                }
                None => {
                    let _ = stream.shutdown().await;
                }
            }
        }
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: &mut S) -> Ending {
        let limits = &*self.limits;
        let peer = self.peer;
        // Bytes received but not yet consumed (the start of a pipelined request).
        let mut buf = Vec::new();
        loop {
            let mut started = false;
            let deadline = tokio::time::Instant::now() + limits.read_timeout;
            let read = tokio::time::timeout_at(
                deadline,
                read_request(stream, &mut buf, limits, &mut started),
            )
            .await;
            let (request, connection) = match read {
                Ok(Ok(ok)) => ok,
                Ok(Err(ReadFailure::Closed)) => return Ending::Close,
                Ok(Err(ReadFailure::Reject(r))) => {
                    let (status, reason) = (r.status, &r.message);
                    tracing::debug!(%peer, status, %reason, "http: request refused");
                    let resp = Response::error(r.status, r.message);
                    return self.answer_and_close(stream, resp).await;
                }
                Err(_elapsed) if !started => return Ending::Close,
                Err(_elapsed) => {
                    tracing::debug!(%peer, "http: request not received in time");
                    let resp = Response::error(408, "request not received in time");
                    return self.answer_and_close(stream, resp).await;
                }
            };
            let head_only = request.method == "HEAD";
            tracing::trace!(%peer, method = %request.method, path = %request.path, "http: request");
            let response = (self.handler)(request).await;
            if let Err(e) = self.write(stream, response, head_only, connection).await {
                tracing::debug!(%peer, error = %e, "http: cannot write response");
                return Ending::Close;
            }
            if connection == ConnectionHeader::Close {
                return Ending::Linger;
            }
        }
    }

    async fn answer_and_close<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        response: Response,
    ) -> Ending {
        match self
            .write(stream, response, false, ConnectionHeader::Close)
            .await
        {
            Ok(()) => Ending::Linger,
            Err(_) => Ending::Close,
        }
    }

    async fn write<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        response: Response,
        head_only: bool,
        connection: ConnectionHeader,
    ) -> std::io::Result<()> {
        let (mut head, body) = encode_response(response, head_only, connection);
        let io = async {
            if body.len() <= COALESCE_BODY {
                head.extend_from_slice(&body);
                stream.write_all(&head).await?;
            } else {
                stream.write_all(&head).await?;
                stream.write_all(&body).await?;
            }
            stream.flush().await
        };
        match tokio::time::timeout(self.limits.read_timeout, io).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Shuts down our sending side, then reads and discards what the client still sends,
/// within bounds, so that closing does not reset the connection under the client's feet.
async fn linger(mut stream: TcpStream, max_time: Duration) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; READ_CHUNK];
        let mut drained = 0usize;
        while drained <= LINGER_MAX_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(max_time, drain).await;
}

/// Reads one request. `buf` holds bytes already received on this connection and keeps
/// those received beyond this request; `started` is set once a byte of this request
/// has arrived (the caller's deadline decides between a 408 and a silent close).
async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &ServerLimits,
    started: &mut bool,
) -> Result<(Request, ConnectionHeader), ReadFailure> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut scanned = 0;
    let head_len = loop {
        // Empty lines before a request line are ignored (RFC 9112, section 2.2).
        let blank = leading_blank_lines(buf);
        if blank > 0 {
            buf.drain(..blank);
            scanned = 0;
        }
        if !buf.is_empty() {
            *started = true;
        }
        if let Some(end) = find_head_end(buf, scanned) {
            if end > limits.max_head_bytes {
                return Err(head_too_large(limits).into());
            }
            break end;
        }
        if buf.len() >= limits.max_head_bytes {
            return Err(head_too_large(limits).into());
        }
        scanned = buf.len().saturating_sub(3);
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) if !*started => return Err(ReadFailure::Closed),
            Err(e) => return Err(rejection(400, format!("read failed: {e}")).into()),
        };
        if n == 0 {
            if *started {
                return Err(rejection(400, "connection closed inside the request head").into());
            }
            return Err(ReadFailure::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buf[..head_len - 4], limits.max_body_bytes)?;
    buf.drain(..head_len);

    let length = head.content_length;
    let already = buf.len().min(length);
    if head.expect_continue && already < length {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| ReadFailure::Closed)?;
    }
    let mut body = Vec::with_capacity(length.min(BODY_INITIAL_CAPACITY));
    body.extend_from_slice(&buf[..already]);
    buf.drain(..already);
    if body.len() < length {
        let remaining = (length - body.len()) as u64;
        let mut limited = (&mut *stream).take(remaining);
        if let Err(e) = limited.read_to_end(&mut body).await {
            return Err(rejection(400, format!("read of the body failed: {e}")).into());
        }
        if body.len() < length {
            return Err(rejection(
                400,
                format!("body ended after {} of {length} bytes", body.len()),
            )
            .into());
        }
    }
    let request = Request {
        method: head.method,
        path: head.path,
        query: head.query,
        headers: head.headers,
        body,
    };
    Ok((request, head.connection))
}

fn head_too_large(limits: &ServerLimits) -> Rejection {
    Rejection {
        status: 431,
        message: format!("request head exceeds {} bytes", limits.max_head_bytes),
    }
}

/// Number of bytes of complete `\r\n` pairs at the start of `buf`.
fn leading_blank_lines(buf: &[u8]) -> usize {
    buf.chunks_exact(2).take_while(|p| *p == b"\r\n").count() * 2
}

/// End (exclusive, including the blank line) of the head in `buf`, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

/// A parsed request head (everything but the body).
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    content_length: usize,
    connection: ConnectionHeader,
    expect_continue: bool,
}

/// Parses a request head: `head` runs from the request line to the last header line,
/// without the final blank line. Pure; every refusal is a status and a message.
fn parse_head(head: &[u8], max_body_bytes: usize) -> Result<Head, Rejection> {
    let mut lines = split_crlf(head);
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return reject(400, "malformed request line");
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return reject(400, "malformed method");
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return reject(505, "only HTTP/1.0 and HTTP/1.1 are supported");
        }
        _ => return reject(400, "malformed HTTP version"),
    };
    let (path, query) = parse_target(target)?;

    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        headers.push(parse_header_line(line)?);
    }

    if find_header(&headers, "transfer-encoding").is_some() {
        return reject(
            501,
            "Transfer-Encoding is not supported; send a Content-Length",
        );
    }
    let content_length = content_length(&headers)
        .map_err(|m| Rejection {
            status: 400,
            message: m,
        })?
        .unwrap_or(0);
    if content_length > max_body_bytes as u64 {
        return reject(413, format!("body exceeds {max_body_bytes} bytes"));
    }
    // Fits: bounded by max_body_bytes, a usize.
    let content_length = content_length as usize;

    let hosts: Vec<&str> = header_values(&headers, "host").collect();
    match hosts.as_slice() {
        [] if !http10 => return reject(400, "missing Host header"),
        [] => {}
        [host] if host_is_loopback(host) => {}
        [_] => {
            return reject(
                403,
                "Host must name this machine (localhost, 127.0.0.0/8 or [::1])",
            )
        }
        _ => return reject(400, "repeated Host header"),
    }
    if find_header(&headers, "origin").is_some() {
        return reject(403, "cross-origin requests are refused");
    }
    let mut expect_continue = false;
    for expect in header_values(&headers, "expect") {
        if expect.eq_ignore_ascii_case("100-continue") {
            // An HTTP/1.0 client cannot understand a 100 (RFC 9110, section 10.1.1).
            expect_continue = !http10;
        } else {
            return reject(417, "only Expect: 100-continue is supported");
        }
    }
    let (mut close, mut keep_alive) = (false, false);
    for value in header_values(&headers, "connection") {
        for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])) {
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    let connection = match (http10, close, keep_alive) {
        (_, true, _) | (true, false, false) => ConnectionHeader::Close,
        (true, false, true) => ConnectionHeader::KeepAlive,
        (false, false, _) => ConnectionHeader::None,
    };

    Ok(Head {
        method: ascii(method),
        path,
        query,
        headers,
        content_length,
        connection,
        expect_continue,
    })
}

fn split_crlf(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                rest = current.get(i + 2..);
                current.get(..i)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Splits and decodes an origin-form request target (`/path?query`).
fn parse_target(target: &[u8]) -> Result<(String, Vec<(String, String)>), Rejection> {
    if target.first() != Some(&b'/') {
        return reject(400, "request target must be a path starting with '/'");
    }
    if !target
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return reject(400, "invalid character in request target");
    }
    // All bytes are ASCII, checked above.
    let target = ascii(target);
    let (raw_path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    let bad = |m: &str| Rejection {
        status: 400,
        message: format!("request target: {m}"),
    };
    let path = percent_decode(raw_path, false).map_err(bad)?;
    let mut query = Vec::new();
    for pair in raw_query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query.push((
            percent_decode(k, true).map_err(bad)?,
            percent_decode(v, true).map_err(bad)?,
        ));
    }
    Ok((path, query))
}

/// Parses `name: value` (server and client side: the grammar is the same).
fn parse_header_line(line: &[u8]) -> Result<(String, String), Rejection> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return reject(400, "obsolete line folding in header");
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return reject(400, "header line without ':'");
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return reject(400, "malformed header name");
    }
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80)
    {
        return reject(400, "control character in header value");
    }
    let Ok(value) = std::str::from_utf8(value) else {
        return reject(400, "header value is not UTF-8");
    };
    Ok((
        ascii(name).to_ascii_lowercase(),
        value.trim_matches([' ', '\t']).to_owned(),
    ))
}

/// The value of `Content-Length`, if present. Repeated fields must agree.
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, String> {
    let mut found = None;
    for value in header_values(headers, "content-length") {
        if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid Content-Length {value:?}"));
        }
        let n: u64 = value
            .parse()
            .map_err(|_| format!("invalid Content-Length {value:?}"))?;
        if found.is_some_and(|f| f != n) {
            return Err("conflicting Content-Length headers".to_owned());
        }
        found = Some(n);
    }
    Ok(found)
}

/// Whether a `Host` value (`host[:port]`) names a loopback address.
fn host_is_loopback(value: &str) -> bool {
    let (host_ok, port) = match value.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) => (
                ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()),
                after,
            ),
            None => return false,
        },
        None => {
            let (host, port) = match value.find(':') {
                Some(i) => value.split_at(i),
                None => (value, ""),
            };
            let ok = host.eq_ignore_ascii_case("localhost")
                || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
            (ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|d| d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Status line, headers and blank line of `response`, and the body to send after them.
fn encode_response(
    response: Response,
    head_only: bool,
    connection: ConnectionHeader,
) -> (Vec<u8>, Vec<u8>) {
    let response = if (200..=599).contains(&response.status) {
        response
    } else {
        tracing::error!(
            status = response.status,
            "http: handler returned an invalid status"
        );
        Response::error(500, "handler returned an invalid status")
    };
    let Response {
        status,
        content_type,
        headers,
        body,
    } = response;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    if !content_type.is_empty() {
        if is_header_value(&content_type) {
            head.push_str(&format!("content-type: {content_type}\r\n"));
        } else {
            tracing::warn!(?content_type, "http: dropping an invalid Content-Type");
        }
    }
    let bodiless = status == 204 || status == 304;
    if !bodiless {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    match connection {
        ConnectionHeader::None => {}
        ConnectionHeader::KeepAlive => head.push_str("connection: keep-alive\r\n"),
        ConnectionHeader::Close => head.push_str("connection: close\r\n"),
    }
    for (name, value) in &headers {
        let reserved = [
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "upgrade",
            "trailer",
        ]
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r));
        let valid = !name.is_empty() && name.bytes().all(is_tchar) && is_header_value(value);
        if reserved || !valid {
            tracing::warn!(?name, ?value, "http: dropping a response header");
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let body = if head_only || bodiless {
        Vec::new()
    } else {
        body
    };
    (head.into_bytes(), body)
}

fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
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
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// Bound on a response head (status line and headers) read by the client.
const CLIENT_MAX_HEAD: usize = 64 * 1024;
/// Interim (1xx) responses skipped before the final one, at most.
const CLIENT_MAX_INTERIM: usize = 8;

/// Sends one request on a fresh connection (`Connection: close`) and reads the answer.
///
/// `timeout` bounds the whole exchange (connect, send, receive); `max_response_bytes`
/// bounds the response body (the head is bounded at 64 KiB). Any status is returned as
/// `Ok`; use [`ClientResponse::error_for_status`] or [`ClientResponse::json`] to turn a
/// non-2xx into [`HttpError::Status`]. `path_and_query` must already be encoded (see
/// [`encode_query`]).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
    max_response_bytes: usize,
) -> Result<ClientResponse, HttpError> {
    let head = encode_request_head(addr, method, path_and_query, content_type, body.len())?;
    let deadline = Deadline(Instant::now() + timeout);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, deadline.remaining()?)
        .map_err(map_client_io)?;
    // Not being able to disable Nagle only costs latency.
    let _ = stream.set_nodelay(true);

    let mut out = head;
    let sent = if body.len() <= COALESCE_BODY {
        out.extend_from_slice(body);
        write_all(&mut stream, &out, &deadline)
    } else {
        write_all(&mut stream, &out, &deadline)
            .and_then(|()| write_all(&mut stream, body, &deadline))
    };
    if let Err(e) = sent {
        // The server may have answered early (413, 503, ...) and stopped reading; its
        // answer is more useful than the broken pipe.
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        let broken = match &e {
            HttpError::Io(io) => {
                matches!(io.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
            }
            _ => false,
        };
        if broken {
            if let Ok(resp) = read_response(&mut stream, method, &deadline, max_response_bytes) {
                return Ok(resp);
            }
        }
        return Err(e);
    }
    read_response(&mut stream, method, &deadline, max_response_bytes)
}

/// Percent-encodes `pairs` as `k=v&k=v` (everything but `A-Za-z0-9-._~` is escaped).
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode_into(&mut out, k);
        out.push('=');
        percent_encode_into(&mut out, v);
    }
    out
}

fn percent_encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn encode_request_head(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    content_type: Option<&str>,
    body_len: usize,
) -> Result<Vec<u8>, HttpError> {
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HttpError::InvalidRequest(format!("method {method:?}")));
    }
    if !path_and_query.starts_with('/')
        || !path_and_query
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err(HttpError::InvalidRequest(format!(
            "path {path_and_query:?} (must start with '/' and be percent-encoded)"
        )));
    }
    let mut head =
        format!("{method} {path_and_query} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(ct) = content_type {
        if !is_header_value(ct) {
            return Err(HttpError::InvalidRequest(format!("content type {ct:?}")));
        }
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    if body_len > 0 || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("content-length: {body_len}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

struct Deadline(Instant);

impl Deadline {
    fn remaining(&self) -> Result<Duration, HttpError> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(HttpError::Timeout)
        } else {
            Ok(left)
        }
    }
}

fn map_client_io(e: std::io::Error) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io(e),
    }
}

fn write_all(
    stream: &mut std::net::TcpStream,
    mut data: &[u8],
    deadline: &Deadline,
) -> Result<(), HttpError> {
    while !data.is_empty() {
        stream.set_write_timeout(Some(deadline.remaining()?))?;
        match stream.write(data) {
            Ok(0) => return Err(HttpError::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_client_io(e)),
        }
    }
    Ok(())
}

fn read_some(
    stream: &mut std::net::TcpStream,
    buf: &mut [u8],
    deadline: &Deadline,
) -> Result<usize, HttpError> {
    loop {
        stream.set_read_timeout(Some(deadline.remaining()?))?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_client_io(e)),
        }
    }
}

fn read_response(
    stream: &mut std::net::TcpStream,
    method: &str,
    deadline: &Deadline,
    max_body: usize,
) -> Result<ClientResponse, HttpError> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut buf: Vec<u8> = Vec::new();
    let mut interim = 0;
    let (status, headers) = loop {
        let mut scanned = 0;
        let head_len = loop {
            if let Some(end) = find_head_end(&buf, scanned) {
                break end;
            }
            if buf.len() >= CLIENT_MAX_HEAD {
                return Err(HttpError::TooLarge {
                    what: "response head",
                    limit: CLIENT_MAX_HEAD,
                });
            }
            scanned = buf.len().saturating_sub(3);
            let n = read_some(stream, &mut chunk, deadline)?;
            if n == 0 {
                return Err(HttpError::Malformed(
                    "connection closed before a complete response head".to_owned(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if head_len > CLIENT_MAX_HEAD {
            return Err(HttpError::TooLarge {
                what: "response head",
                limit: CLIENT_MAX_HEAD,
            });
        }
        let (status, headers) = parse_response_head(&buf[..head_len - 4])?;
        buf.drain(..head_len);
        if status == 101 {
            return Err(HttpError::Malformed(
                "unexpected protocol switch".to_owned(),
            ));
        }
        if status >= 200 {
            break (status, headers);
        }
        interim += 1;
        if interim > CLIENT_MAX_INTERIM {
            return Err(HttpError::Malformed(
                "too many interim responses".to_owned(),
            ));
        }
    };

    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else if find_header(&headers, "transfer-encoding").is_some() {
        return Err(HttpError::Malformed(
            "Transfer-Encoding responses are not supported".to_owned(),
        ));
    } else {
        match content_length(&headers).map_err(HttpError::Malformed)? {
            Some(n) => {
                if n > max_body as u64 {
                    return Err(HttpError::TooLarge {
                        what: "response body",
                        limit: max_body,
                    });
                }
                // Fits: bounded by max_body, a usize.
                read_body(stream, buf, Some(n as usize), max_body, deadline)?
            }
            None => read_body(stream, buf, None, max_body, deadline)?,
        }
    };
    Ok(ClientResponse {
        status,
        headers,
        body,
    })
}

/// Reads a body of `length` bytes, or up to EOF when `length` is `None`, starting with
/// the bytes already in `body`.
fn read_body(
    stream: &mut std::net::TcpStream,
    mut body: Vec<u8>,
    length: Option<usize>,
    max_body: usize,
    deadline: &Deadline,
) -> Result<Vec<u8>, HttpError> {
    let too_large = || HttpError::TooLarge {
        what: "response body",
        limit: max_body,
    };
    if let Some(n) = length {
        body.truncate(n);
        body.reserve(n.saturating_sub(body.len()).min(BODY_INITIAL_CAPACITY));
    }
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let want = match length {
            Some(n) if body.len() >= n => return Ok(body),
            Some(n) => (n - body.len()).min(chunk.len()),
            None if body.len() > max_body => return Err(too_large()),
            None => chunk.len(),
        };
        let n = read_some(stream, &mut chunk[..want], deadline)?;
        if n == 0 {
            return match length {
                Some(len) => Err(HttpError::Malformed(format!(
                    "body ended after {} of {len} bytes",
                    body.len()
                ))),
                None => Ok(body),
            };
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn parse_response_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let mut lines = split_crlf(head);
    let status_line = lines.next().unwrap_or_default();
    let rest = status_line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix(b"HTTP/1.0 "))
        .ok_or_else(|| HttpError::Malformed("not an HTTP/1.x status line".to_owned()))?;
    let status = match rest {
        [a, b, c] | [a, b, c, b' ', ..]
            if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() && *a != b'0' =>
        {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(HttpError::Malformed("invalid status code".to_owned())),
    };
    let mut headers = Vec::new();
    for line in lines {
        headers.push(parse_header_line(line).map_err(|r| HttpError::Malformed(r.message))?);
    }
    Ok((status, headers))
}

/// The message of a non-2xx answer: the JSON `error` field, else the start of the body,
/// else the reason phrase.
fn error_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.error;
    }
    const MAX_CHARS: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return reason_phrase(status).to_owned();
    }
    let mut message: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        message.push('…');
    }
    message
}

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    header_values(headers, name).next()
}

fn header_values<'a, 'n>(
    headers: &'a [(String, String)],
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes known to be ASCII as a `String`.
fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent escape")?;
                let digit = |h: u8| char::from(h).to_digit(16).ok_or("invalid percent escape");
                // Two hex digits: at most 0xff.
                out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded text is not UTF-8")
}

// ---------------------------------------------------------------------------------------
// Fuzzing entry
// ---------------------------------------------------------------------------------------

/// For the fuzzer (`fuzz/fuzz_targets/http_request.rs`) and tests: the requests the
/// server reads from `bytes` arriving on one connection, in order, up to the first one
/// it refuses (its status and message) or the end of the bytes. Runs the server's own
/// reading code on an in-memory stream.
#[doc(hidden)]
pub fn read_requests(bytes: &[u8], limits: &ServerLimits) -> Vec<Result<Request, (u16, String)>> {
    // Reads from the bytes; whatever the server writes (a 100 Continue) is dropped.
    let mut stream = tokio::io::join(bytes, tokio::io::sink());
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut started = false;
        // Never pending: the stream is in memory.
        match futures::executor::block_on(read_request(&mut stream, &mut buf, limits, &mut started))
        {
            Ok((request, _)) => out.push(Ok(request)),
            Err(ReadFailure::Closed) => return out,
            Err(ReadFailure::Reject(r)) => {
                out.push(Err((r.status, r.message)));
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, Rejection> {
        parse_head(text.as_bytes(), 1000)
    }

    fn status_of(text: &str) -> u16 {
        match head(text) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn parses_a_request_head() {
        let h = head(
            "POST /jobs/a%20b%2Fc?tag=x+y&tag=%26%3D&flag&&name=h%C3%A9 HTTP/1.1\r\n\
             Host: 127.0.0.1:8080\r\nContent-Type:  application/wasm \r\nContent-Length: 12",
        )
        .expect("valid head");
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/jobs/a b/c");
        let query: Vec<(&str, &str)> = h
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            query,
            [("tag", "x y"), ("tag", "&="), ("flag", ""), ("name", "hé")]
        );
        assert_eq!(
            find_header(&h.headers, "CONTENT-TYPE"),
            Some("application/wasm")
        );
        assert_eq!(h.headers[0].0, "host");
        assert_eq!(h.content_length, 12);
        assert_eq!(h.connection, ConnectionHeader::None);
        assert!(!h.expect_continue);
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let conn = |t: &str| head(t).expect("valid head").connection;
        assert_eq!(
            conn("GET / HTTP/1.1\r\nHost: localhost"),
            ConnectionHeader::None
        );
        assert_eq!(
            conn("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Keep-Alive, Close"),
            ConnectionHeader::Close
        );
        assert_eq!(conn("GET / HTTP/1.0"), ConnectionHeader::Close);
        assert_eq!(
            conn("GET / HTTP/1.0\r\nConnection: keep-alive"),
            ConnectionHeader::KeepAlive
        );
    }

    #[test]
    fn refuses_malformed_heads_with_the_right_status() {
        let cases = [
            ("HELLO", 400),
            ("GET / HTTP/1.1 extra\r\nHost: localhost", 400),
            ("GET  / HTTP/1.1\r\nHost: localhost", 400),
            ("G(T / HTTP/1.1\r\nHost: localhost", 400),
            ("GET http://x/ HTTP/1.1\r\nHost: localhost", 400),
            ("GET /a#b HTTP/1.1\r\nHost: localhost", 400),
            ("GET /%zz HTTP/1.1\r\nHost: localhost", 400),
            ("GET /%4 HTTP/1.1\r\nHost: localhost", 400),
            ("GET /%ff HTTP/1.1\r\nHost: localhost", 400),
            ("GET / HTTP/2.0\r\nHost: localhost", 505),
            ("GET / HTTQ/1.1\r\nHost: localhost", 400),
            ("GET / HTTP/1.1", 400),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost", 400),
            ("GET / HTTP/1.1\r\nHost: evil.example:80", 403),
            ("GET / HTTP/1.1\r\nHost: 10.0.0.1", 403),
            (
                "GET / HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example",
                403,
            ),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nBad Name: x", 400),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nName : x", 400),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nNoColon", 400),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nA: b\r\n folded", 400),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nA: b\rc", 400),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nA: b\nc", 400),
            ("GET / HTTP/1.1\r\nHost: localhost\r\nA: b\0", 400),
            (
                "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1 2",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1001",
                413,
            ),
            (
                "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked",
                501,
            ),
            ("POST / HTTP/1.1\r\nHost: localhost\r\nExpect: magic", 417),
        ];
        for (text, status) in cases {
            assert_eq!(status_of(text), status, "{text:?}");
        }
        // The boundaries of what is refused above are accepted.
        let accepted = [
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000",
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5",
            "GET / HTTP/1.0",
            "GET /%e2%9c%93 HTTP/1.1\r\nHost: [::1]:1\r\nEmpty:",
        ];
        for text in accepted {
            assert_eq!(status_of(text), 200, "{text:?}");
        }
    }

    #[test]
    fn only_loopback_hosts_are_accepted() {
        for ok in [
            "localhost",
            "LOCALHOST:80",
            "127.0.0.1",
            "127.1.2.3:65535",
            "[::1]",
            "[::1]:8080",
            "localhost:",
        ] {
            assert!(host_is_loopback(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:80",
            "[::2]",
            "[::1",
            "[::1]x",
            "127.0.0.1:80:80",
            "127.0.0.1:123456",
            "127.0.0.1:8a",
        ] {
            assert!(!host_is_loopback(bad), "{bad}");
        }
    }

    #[test]
    fn query_encoding_round_trips_through_the_parser() {
        let pairs = [
            ("k", "a b"),
            ("k", "&=+?#%/"),
            ("ünï", "✓ \u{1F600}"),
            ("empty", ""),
        ];
        let encoded = encode_query(&pairs);
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%&=".contains(&b)),
            "{encoded}"
        );
        let (_, query) = parse_target(format!("/?{encoded}").as_bytes()).expect("valid target");
        let decoded: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(decoded, pairs);
    }

    #[test]
    fn request_accessors() {
        let req = Request {
            method: "GET".into(),
            path: "/".into(),
            query: vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("a".into(), "3".into()),
            ],
            headers: vec![("x-thing".into(), "v".into())],
            body: Vec::new(),
        };
        assert_eq!(req.query_value("a"), Some("1"));
        assert_eq!(req.query_values("a").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(req.query_value("c"), None);
        assert_eq!(req.header("X-Thing"), Some("v"));
        assert_eq!(req.header("x-other"), None);
    }

    fn encoded(resp: Response, head_only: bool, conn: ConnectionHeader) -> (String, Vec<u8>) {
        let (head, body) = encode_response(resp, head_only, conn);
        (String::from_utf8(head).expect("ASCII head"), body)
    }

    #[test]
    fn responses_carry_their_length_and_drop_unsafe_headers() {
        let resp = Response::text(200, "hello")
            .with_header("X-Job", "j1")
            .with_header("X-Injected", "a\r\nSet-Cookie: x")
            .with_header("Content-Length", "999")
            .with_header("Transfer-Encoding", "chunked")
            .with_header("Bad Name", "v");
        let (head, body) = encoded(resp, false, ConnectionHeader::None);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: 5\r\nX-Job: j1\r\n\r\n"
        );
        assert_eq!(body, b"hello");

        let (head, body) = encoded(
            Response::error(404, "no such job"),
            true,
            ConnectionHeader::Close,
        );
        let json_len = br#"{"error":"no such job"}"#.len();
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\
                 content-length: {json_len}\r\nconnection: close\r\n\r\n"
            )
        );
        assert!(body.is_empty(), "HEAD answers carry no body");

        let (head, body) = encoded(Response::text(204, "x"), false, ConnectionHeader::KeepAlive);
        assert!(!head.contains("content-length"), "{head}");
        assert!(head.contains("connection: keep-alive\r\n"), "{head}");
        assert!(body.is_empty());

        let (head, _) = encoded(Response::text(101, "x"), false, ConnectionHeader::None);
        assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
    }

    #[test]
    fn json_responses() {
        let resp = Response::json(201, &serde_json::json!({"id": 7}));
        assert_eq!((resp.status, resp.content_type.as_str()), (201, JSON));
        assert_eq!(resp.body, br#"{"id":7}"#);
        // Map keys that are not strings cannot be JSON.
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let resp = Response::json(200, &bad);
        assert_eq!(resp.status, 500);
    }

    #[test]
    fn parses_response_heads() {
        let (status, headers) =
            parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A:  b ")
                .expect("valid head");
        assert_eq!(status, 404);
        assert_eq!(
            headers,
            [
                ("content-length".to_owned(), "3".to_owned()),
                ("x-a".to_owned(), "b".to_owned())
            ]
        );
        assert_eq!(
            parse_response_head(b"HTTP/1.0 200").map(|h| h.0).ok(),
            Some(200)
        );
        for bad in [
            &b"HTTP/1.1 20 OK"[..],
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 099 x",
            b"HTTP/2 200 OK",
            b"garbage",
            b"HTTP/1.1 200 OK\r\nno colon",
        ] {
            assert!(
                matches!(parse_response_head(bad), Err(HttpError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn client_refuses_requests_it_cannot_send_safely() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let invalid = [
            encode_request_head(addr, "GET", "/a b", None, 0),
            encode_request_head(addr, "GET", "a", None, 0),
            encode_request_head(addr, "GET", "/\r\nX: y", None, 0),
            encode_request_head(addr, "G T", "/", None, 0),
            encode_request_head(addr, "POST", "/", Some("a\r\nX-Evil: 1"), 1),
        ];
        for result in invalid {
            assert!(
                matches!(result, Err(HttpError::InvalidRequest(_))),
                "{result:?}"
            );
        }
        let head = encode_request_head(addr, "POST", "/jobs?x=1", Some("application/wasm"), 0)
            .expect("valid request");
        assert_eq!(
            String::from_utf8(head).expect("ASCII"),
            "POST /jobs?x=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\nconnection: close\r\n\
             content-type: application/wasm\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn error_messages_come_from_the_error_field_or_the_body() {
        let resp = ClientResponse {
            status: 409,
            headers: Vec::new(),
            body: br#"{"error":"job exists"}"#.to_vec(),
        };
        match resp.json::<serde_json::Value>() {
            Err(HttpError::Status { status, message }) => {
                assert_eq!((status, message.as_str()), (409, "job exists"))
            }
            other => panic!("expected a Status error, got {other:?}"),
        }
        assert_eq!(error_message(500, b"  boom \n"), "boom");
        assert_eq!(error_message(503, b""), "Service Unavailable");
        let long = error_message(500, "x".repeat(1000).as_bytes());
        assert_eq!(long.chars().count(), 201);

        let ok = ClientResponse {
            status: 200,
            headers: vec![("content-type".into(), JSON.into())],
            body: b"not json".to_vec(),
        };
        assert!(matches!(
            ok.json::<serde_json::Value>(),
            Err(HttpError::Malformed(_))
        ));
        assert_eq!(ok.header("Content-Type"), Some(JSON));
        assert!(ok.error_for_status().is_ok());
    }

    #[test]
    fn head_scanning_helpers() {
        assert_eq!(leading_blank_lines(b"\r\n\r\nGET"), 4);
        assert_eq!(leading_blank_lines(b"\r\n\r"), 2);
        assert_eq!(leading_blank_lines(b"GET"), 0);
        assert_eq!(find_head_end(b"a\r\n\r\nb", 0), Some(5));
        assert_eq!(find_head_end(b"a\r\n\r\nb", 2), None);
        assert_eq!(find_head_end(b"ab", 5), None);
        let lines: Vec<&[u8]> = split_crlf(b"a\r\n\r\nb\nc").collect();
        assert_eq!(lines, [&b"a"[..], b"", b"b\nc"]);
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            max_head_bytes: 256,
            max_body_bytes: 64,
            ..ServerLimits::default()
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn reads_pipelined_requests_from_one_buffer() {
        runtime().block_on(async {
            let (mut client, mut server) = tokio::io::duplex(4096);
            client
                .write_all(
                    b"\r\nPOST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nxyz\
                      GET /b?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .await
                .expect("write");
            drop(client);
            let mut buf = Vec::new();
            let mut started = false;
            let (first, conn) = read_request(&mut server, &mut buf, &limits(), &mut started)
                .await
                .expect("first request");
            assert_eq!(
                (first.path.as_str(), first.body.as_slice()),
                ("/a", &b"xyz"[..])
            );
            assert_eq!(conn, ConnectionHeader::None);
            let (second, conn) = read_request(&mut server, &mut buf, &limits(), &mut started)
                .await
                .expect("second request");
            assert_eq!(second.path, "/b");
            assert_eq!(second.query_value("q"), Some("1"));
            assert_eq!(conn, ConnectionHeader::Close);
            let mut started = false;
            let end = read_request(&mut server, &mut buf, &limits(), &mut started).await;
            assert_eq!(end.err(), Some(ReadFailure::Closed));
            assert!(!started);
        });
    }

    #[test]
    fn truncated_requests_are_refused() {
        runtime().block_on(async {
            for (bytes, status) in [
                (&b"GET / HTTP/1.1\r\nHost: loc"[..], 400),
                (
                    b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 9\r\n\r\nab",
                    400,
                ),
            ] {
                let (mut client, mut server) = tokio::io::duplex(4096);
                client.write_all(bytes).await.expect("write");
                drop(client);
                let mut started = false;
                let got = read_request(&mut server, &mut Vec::new(), &limits(), &mut started).await;
                match got {
                    Err(ReadFailure::Reject(r)) => assert_eq!(r.status, status),
                    other => panic!("expected a rejection, got {other:?}"),
                }
                assert!(started);
            }
        });
    }

    #[test]
    fn head_limit_is_exact() {
        runtime().block_on(async {
            let base = "GET / HTTP/1.1\r\nHost: localhost\r\nX: \r\n\r\n".len();
            for (len, ok) in [(256, true), (257, false)] {
                let text = format!(
                    "GET / HTTP/1.1\r\nHost: localhost\r\nX: {}\r\n\r\n",
                    "a".repeat(len - base)
                );
                assert_eq!(text.len(), len);
                let (mut client, mut server) = tokio::io::duplex(4096);
                client.write_all(text.as_bytes()).await.expect("write");
                let mut started = false;
                let got = read_request(&mut server, &mut Vec::new(), &limits(), &mut started).await;
                match got {
                    Ok(_) => assert!(ok, "{len} bytes accepted"),
                    Err(ReadFailure::Reject(r)) => {
                        assert!(!ok, "{len} bytes refused");
                        assert_eq!(r.status, 431);
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        });
    }

    #[test]
    fn expect_continue_is_answered_before_the_body_is_read() {
        runtime().block_on(async {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let serve_one = async {
                let mut started = false;
                read_request(&mut server, &mut Vec::new(), &limits(), &mut started).await
            };
            let talk = async {
                client
                    .write_all(
                        b"PUT /x HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n\
                          Content-Length: 4\r\n\r\n",
                    )
                    .await
                    .expect("write head");
                let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
                let mut got = vec![0u8; interim.len()];
                client.read_exact(&mut got).await.expect("read 100");
                assert_eq!(got, interim);
                client.write_all(b"body").await.expect("write body");
            };
            let (request, ()) = tokio::join!(serve_one, talk);
            assert_eq!(request.expect("request").0.body, b"body");
        });
    }

    #[test]
    fn read_requests_reads_pipelined_requests_then_stops_at_a_refusal() {
        let limits = ServerLimits::default();
        let bytes = b"GET /a?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc\
GET /c HTTP/9.9\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        let got = read_requests(bytes, &limits);
        assert_eq!(got.len(), 3, "{got:?}");
        let a = got[0].as_ref().expect("first");
        assert_eq!((a.method.as_str(), a.path.as_str()), ("GET", "/a"));
        assert_eq!(a.query, vec![("x".to_string(), "1".to_string())]);
        let b = got[1].as_ref().expect("second");
        assert_eq!((b.path.as_str(), b.body.as_slice()), ("/b", &b"abc"[..]));
        assert_eq!(got[2].as_ref().err().map(|e| e.0), Some(505));
        // A body longer than the bytes sent: refused, never read past the end.
        let short = read_requests(b"PUT /x HTTP/1.1\r\nContent-Length: 9\r\n\r\nab", &limits);
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].as_ref().err().map(|e| e.0), Some(400));
    }
}
