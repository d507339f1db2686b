#![no_main]
//! The control API's HTTP/1.1 request reader (`actors::http`), fed one connection's
//! bytes: it must refuse or parse, never panic, and what it hands on stays in bounds.
use libfuzzer_sys::fuzz_target;

use actors::http::{read_requests, ServerLimits};

fuzz_target!(|data: &[u8]| {
    let limits = ServerLimits {
        max_head_bytes: 4096,
        max_body_bytes: 1 << 16,
        ..ServerLimits::default()
    };
    for r in read_requests(data, &limits) {
        match r {
            Ok(req) => {
                assert!(req.body.len() <= limits.max_body_bytes);
                assert!(req.path.starts_with('/'), "{:?}", req.path);
                assert!(!req.method.is_empty());
            }
            Err((status, _)) => assert!((400..600).contains(&status), "{status}"),
        }
    }
});
