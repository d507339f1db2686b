#![no_main]
use libfuzzer_sys::fuzz_target;

use store::EncodedChunk;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = EncodedChunk::from_cbor(data, MAX) {
        let verified = c.decode_verified(MAX);
        let again = EncodedChunk::from_cbor(&c.to_cbor(), MAX);
        if c.to_cbor().len() <= data.len() {
            let again = again.expect("re-encoded chunk parses");
            assert_eq!(again, c);
        }
        if let Ok(raw) = verified {
            assert_eq!(raw.len() as u64, c.uncompressed_len);
            assert_eq!(store::ChunkId::of(&raw), c.id);
        }
    }
});
