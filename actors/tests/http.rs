//! The control-API HTTP server and client over real 127.0.0.1 sockets: the server on a
//! current-thread runtime inside a `LocalSet` (as under actix), the blocking client and
//! raw-socket clients on the blocking pool.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use actors::http::{
    encode_query, request, serve, ClientResponse, Handler, HttpError, Request, Response,
    ServerLimits,
};
use futures::FutureExt;

/// Generous bound so that a broken server fails a test instead of hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Serves `handler` on a fresh port and runs `client` against it on the blocking pool.
fn with_server<T: Send + 'static>(
    limits: ServerLimits,
    handler: Handler,
    client: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::task::spawn_local(serve(listener, limits, handler));
        let out = tokio::task::spawn_blocking(move || client(addr))
            .await
            .expect("client thread");
        server.abort();
        out
    })
}

/// `/echo` answers the body reversed; `/hang` never answers; `/big?n=N` answers N bytes;
/// anything else answers a JSON description of the request.
fn test_handler() -> Handler {
    Rc::new(|req: Request| {
        async move {
            match req.path.as_str() {
                "/echo" => {
                    let mut body = req.body;
                    body.reverse();
                    let len = body.len().to_string();
                    Response::bytes(200, "application/octet-stream", body)
                        .with_header("X-Body-Len", len)
                }
                "/hang" => futures::future::pending().await,
                "/big" => {
                    let n = req
                        .query_value("n")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    Response::bytes(200, "application/octet-stream", vec![b'x'; n])
                }
                "/fail" => Response::error(409, "job already exists"),
                _ => Response::json(
                    200,
                    &serde_json::json!({
                        "method": req.method,
                        "path": req.path,
                        "query": req.query,
                        "tags": req.query_values("tag").collect::<Vec<_>>(),
                        "content_type": req.header("content-type"),
                        "body_len": req.body.len(),
                    }),
                ),
            }
        }
        .boxed_local()
    })
}

fn get(addr: SocketAddr, path: &str) -> Result<ClientResponse, HttpError> {
    request(addr, "GET", path, None, &[], CLIENT_TIMEOUT, MAX_RESPONSE)
}

fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("read timeout");
    stream
}

/// Reads one response (head and `Content-Length` body) from `stream`; `buf` carries the
/// bytes received beyond it.
fn read_raw_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("read response head");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
    buf.drain(..head_end);
    let status: u16 = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.parse().expect("content length"))
        .unwrap_or(0);
    while buf.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("read response body");
        assert!(n > 0, "connection closed inside a response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..length).collect();
    (status, head, body)
}

/// Whether the server closed the connection: EOF (or a reset) with no further bytes.
fn closed_by_server(stream: &mut TcpStream, buf: &[u8]) -> bool {
    if !buf.is_empty() {
        return false;
    }
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Sends `bytes` on a fresh connection and returns the status of the answer, after
/// checking that the server then closed the connection.
fn raw_status_then_closed(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = raw_connect(addr);
    stream.write_all(bytes).expect("write request");
    let mut buf = Vec::new();
    let (status, head, _) = read_raw_response(&mut stream, &mut buf);
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(closed_by_server(&mut stream, &buf), "connection left open");
    status
}

#[test]
fn http_get_with_percent_encoded_path_and_repeated_query_keys() {
    let (status, json) = with_server(ServerLimits::default(), test_handler(), |addr| {
        let query = encode_query(&[
            ("tag", "a b"),
            ("name", "h\u{e9}llo & = ? / \u{2713}"),
            ("tag", "c+d"),
            ("empty", ""),
        ]);
        let resp = get(addr, &format!("/jobs/j%201%2Fx?{query}&tag=plus+space")).expect("GET");
        let json: serde_json::Value = resp.json().expect("JSON body");
        (resp.status, json)
    });
    assert_eq!(status, 200);
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/jobs/j 1/x");
    assert_eq!(
        json["query"],
        serde_json::json!([
            ["tag", "a b"],
            ["name", "h\u{e9}llo & = ? / \u{2713}"],
            ["tag", "c+d"],
            ["empty", ""],
            ["tag", "plus space"],
        ])
    );
    assert_eq!(
        json["tags"],
        serde_json::json!(["a b", "c+d", "plus space"])
    );
    assert_eq!(json["body_len"], 0);
}

#[test]
fn http_post_of_a_one_mebibyte_binary_body() {
    let body: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sent = body.clone();
    let resp = with_server(ServerLimits::default(), test_handler(), move |addr| {
        request(
            addr,
            "POST",
            "/echo",
            Some("application/wasm"),
            &sent,
            CLIENT_TIMEOUT,
            MAX_RESPONSE,
        )
        .expect("POST")
    });
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(resp.header("X-BODY-LEN"), Some("1048576"));
    let mut expected = body;
    expected.reverse();
    assert!(resp.body == expected, "echoed body differs");
}

#[test]
fn http_keep_alive_serves_several_requests_on_one_connection() {
    let answers = with_server(ServerLimits::default(), test_handler(), |addr| {
        let mut stream = raw_connect(addr);
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        stream
            .write_all(b"GET /one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("write 1");
        answers.push(read_raw_response(&mut stream, &mut buf));
        // Two more at once, the last one closing the connection.
        stream
            .write_all(
                b"POST /two HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc\
                  GET /three HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            .expect("write 2 and 3");
        answers.push(read_raw_response(&mut stream, &mut buf));
        answers.push(read_raw_response(&mut stream, &mut buf));
        let closed = closed_by_server(&mut stream, &buf);
        (answers, closed)
    });
    let (answers, closed) = answers;
    let paths: Vec<String> = answers
        .iter()
        .map(|(status, _, body)| {
            assert_eq!(*status, 200);
            let json: serde_json::Value = serde_json::from_slice(body).expect("JSON");
            format!(
                "{} {}",
                json["path"].as_str().unwrap_or("?"),
                json["body_len"]
            )
        })
        .collect();
    assert_eq!(paths, ["/one 0", "/two 3", "/three 0"]);
    assert!(!answers[0].1.contains("connection:"), "{}", answers[0].1);
    assert!(answers[2].1.contains("connection: close\r\n"));
    assert!(closed, "connection left open after Connection: close");
}

#[test]
fn http_body_over_the_limit_is_refused_with_413() {
    let limits = ServerLimits {
        max_body_bytes: 1024,
        ..ServerLimits::default()
    };
    let (at_limit, over) = with_server(limits, test_handler(), |addr| {
        let post = |len: usize| {
            request(
                addr,
                "POST",
                "/echo",
                None,
                &vec![7u8; len],
                CLIENT_TIMEOUT,
                MAX_RESPONSE,
            )
        };
        (post(1024), post(64 * 1024))
    });
    assert_eq!(at_limit.expect("POST at the limit").status, 200);
    match over
        .expect("answer to an oversized POST")
        .error_for_status()
    {
        Err(HttpError::Status { status, message }) => {
            assert_eq!(status, 413);
            assert!(message.contains("1024"), "{message}");
        }
        other => panic!("expected a 413, got {other:?}"),
    }
}

#[test]
fn http_head_over_the_limit_is_refused_with_431() {
    let status = with_server(ServerLimits::default(), test_handler(), |addr| {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20 * 1024)
        );
        raw_status_then_closed(addr, head.as_bytes())
    });
    assert_eq!(status, 431);
}

#[test]
fn http_garbage_is_refused_with_400_and_the_connection_closed() {
    let statuses = with_server(ServerLimits::default(), test_handler(), |addr| {
        [
            &b"HELLO\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
            b"GET /%zz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ]
        .map(|bytes| raw_status_then_closed(addr, bytes))
    });
    assert_eq!(statuses, [400; 5]);
}

#[test]
fn http_unsupported_or_unsafe_requests_get_specific_statuses() {
    let statuses = with_server(ServerLimits::default(), test_handler(), |addr| {
        [
            &b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: attacker.example\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://attacker.example\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/3.0\r\nHost: 127.0.0.1\r\n\r\n",
        ]
        .map(|bytes| raw_status_then_closed(addr, bytes))
    });
    assert_eq!(statuses, [501, 403, 403, 505]);
}

#[test]
fn http_head_requests_get_the_length_but_no_body() {
    let resp = with_server(ServerLimits::default(), test_handler(), |addr| {
        let mut stream = raw_connect(addr);
        stream
            .write_all(
                b"HEAD /big?n=5000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
                  GET /big?n=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            .expect("write");
        let mut buf = Vec::new();
        // The HEAD answer announces 5000 bytes but sends none: read its head by hand.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).expect("read");
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf.drain(..head_end).collect()).expect("ASCII");
        let next = read_raw_response(&mut stream, &mut buf);
        (head, next)
    });
    let (head, (status, _, body)) = resp;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-length: 5000\r\n"), "{head}");
    assert_eq!((status, body), (200, b"xxx".to_vec()));
}

#[test]
fn http_half_a_head_is_answered_408_when_the_deadline_passes() {
    let limits = ServerLimits {
        read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let status = with_server(limits, test_handler(), |addr| {
        raw_status_then_closed(addr, b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    });
    assert_eq!(status, 408);
}

#[test]
fn http_a_slow_loris_is_cut_although_bytes_keep_arriving() {
    // The deadline is for the whole request, not per read: a client that keeps sending
    // one header byte at a time never completes its head and must be answered 408.
    let limits = ServerLimits {
        read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let (status, dribbled) = with_server(limits, test_handler(), |addr| {
        let mut stream = raw_connect(addr);
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .expect("write");
        // Pace: wait up to 20 ms for an answer between two bytes.
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let mut first = [0u8; 1];
        let mut dribbled = 0;
        loop {
            assert!(dribbled < 1000, "no answer after {dribbled} bytes");
            match stream.read(&mut first) {
                Ok(1) => break,
                Ok(_) => panic!("closed without an answer"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("read: {e}"),
            }
            if stream.write_all(b"a").is_err() {
                break;
            }
            dribbled += 1;
        }
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("read timeout");
        let mut buf = first.to_vec();
        let (status, _, _) = read_raw_response(&mut stream, &mut buf);
        (status, dribbled)
    });
    assert_eq!(status, 408);
    assert!(dribbled > 0, "the client never got to dribble");
}

#[test]
fn http_an_idle_connection_is_closed_without_an_answer() {
    let limits = ServerLimits {
        read_timeout: Duration::from_millis(200),
        ..ServerLimits::default()
    };
    let closed = with_server(limits, test_handler(), |addr| {
        closed_by_server(&mut raw_connect(addr), &[])
    });
    assert!(closed);
}

#[test]
fn http_connections_over_the_limit_get_503() {
    let limits = ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    };
    let (held, refused, after) = with_server(limits, test_handler(), |addr| {
        // Holds the only slot: its answer proves the server is serving it.
        let mut holder = raw_connect(addr);
        let mut buf = Vec::new();
        holder
            .write_all(b"GET /held HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("write");
        let held = read_raw_response(&mut holder, &mut buf).0;
        let refused = get(addr, "/refused").expect("answer while busy");
        // Release the slot; once the server has closed the holder, a new client is served.
        holder
            .write_all(b"GET /bye HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("write");
        assert_eq!(read_raw_response(&mut holder, &mut buf).0, 200);
        assert!(closed_by_server(&mut holder, &buf));
        let after = get(addr, "/after").expect("GET after release");
        (held, refused, after.status)
    });
    assert_eq!(held, 200);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    match refused.json::<serde_json::Value>() {
        Err(HttpError::Status {
            status: 503,
            message,
        }) => {
            assert_eq!(message, "too many connections")
        }
        other => panic!("expected a 503 Status error, got {other:?}"),
    }
    assert_eq!(after, 200);
}

#[test]
fn http_client_reports_errors_timeouts_and_oversized_answers() {
    let (failed, hung, big) = with_server(ServerLimits::default(), test_handler(), |addr| {
        let failed = get(addr, "/fail")
            .expect("GET /fail")
            .json::<serde_json::Value>();
        let hung = request(
            addr,
            "GET",
            "/hang",
            None,
            &[],
            Duration::from_millis(200),
            MAX_RESPONSE,
        );
        let big = request(addr, "GET", "/big?n=5000", None, &[], CLIENT_TIMEOUT, 4999);
        (failed, hung, big)
    });
    match failed {
        Err(HttpError::Status { status, message }) => {
            assert_eq!((status, message.as_str()), (409, "job already exists"))
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    assert!(matches!(hung, Err(HttpError::Timeout)), "{hung:?}");
    assert!(
        matches!(big, Err(HttpError::TooLarge { limit: 4999, .. })),
        "{big:?}"
    );
}
