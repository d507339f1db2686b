#![no_main]
//! The body of the control API's `POST /run` (CBOR `RunRequest`).
use libfuzzer_sys::fuzz_target;

use actors::node::api::RunRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ciborium::from_reader::<RunRequest, _>(data) {
        roam_fuzz::roundtrip(data.len(), &r, |b| {
            ciborium::from_reader::<RunRequest, _>(b)
        });
    }
});
