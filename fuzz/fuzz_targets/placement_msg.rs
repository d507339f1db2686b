#![no_main]
use libfuzzer_sys::fuzz_target;

use actors::placement_shell::{decode, encode, MAX_MESSAGE_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode(data, MAX_MESSAGE_BYTES) {
        roam_fuzz::roundtrip_with(
            data.len(),
            &m,
            |m| encode(m, usize::MAX).expect("encoding a decoded message"),
            |b| decode(b, MAX_MESSAGE_BYTES),
        );
    }
});
