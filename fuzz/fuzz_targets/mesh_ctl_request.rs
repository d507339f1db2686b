#![no_main]
use libfuzzer_sys::fuzz_target;

use mesh::wire::{decode_ctl_request, WireLimits};

fuzz_target!(|data: &[u8]| {
    let limits = WireLimits::default();
    if let Ok(req) = decode_ctl_request(data, &limits) {
        roam_fuzz::roundtrip(data.len(), &req, |b| decode_ctl_request(b, &limits));
    }
});
