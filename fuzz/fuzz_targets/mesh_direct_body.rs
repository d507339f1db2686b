#![no_main]
use libfuzzer_sys::fuzz_target;

// A direct-message frame body from the network: topic and payload, or a typed error.
use mesh::direct::{decode_body, encode_body};

fuzz_target!(|data: &[u8]| {
    if let Ok((topic, payload)) = decode_body(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(&encode_body(topic, payload)[..], data);
    }
});
