#![no_main]
use libfuzzer_sys::fuzz_target;

use mesh::wire::{decode_chunk_request, WireLimits};

fuzz_target!(|data: &[u8]| {
    let limits = WireLimits::default();
    if let Ok(req) = decode_chunk_request(data, &limits) {
        roam_fuzz::roundtrip(data.len(), &req, |b| decode_chunk_request(b, &limits));
    }
});
