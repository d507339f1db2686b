#![no_main]
use libfuzzer_sys::fuzz_target;

use mesh::wire::{decode_ctl_response, WireLimits};

fuzz_target!(|data: &[u8]| {
    let limits = WireLimits::default();
    if let Ok(resp) = decode_ctl_response(data, &limits) {
        roam_fuzz::roundtrip(data.len(), &resp, |b| decode_ctl_response(b, &limits));
    }
});
