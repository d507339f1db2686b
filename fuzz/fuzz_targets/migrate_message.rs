#![no_main]
use libfuzzer_sys::fuzz_target;

use migrate::{Body, Message};
use store::{ChunkId, ChunkMap};

fn decode(b: &[u8]) -> Result<Message, String> {
    let m: Message = ciborium::from_reader(b).map_err(|e| e.to_string())?;
    m.validate().map_err(|e| e.to_string())?;
    Ok(m)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode(data) {
        roam_fuzz::roundtrip(data.len(), &m, decode);
        if let Ok(again) = decode(&roam_fuzz::cbor(&m)) {
            assert_eq!(again, m);
        }
        // A Final's manifest patch is applied to the offered map by the destination:
        // any patch against a small offered map must give a result or an error.
        if let Body::Final {
            manifest,
            manifest_id,
            ..
        } = &m.body
        {
            let offered = ChunkMap {
                len: 16 << 16,
                chunk_size: 1 << 16,
                chunks: (0..16u64)
                    .filter(|i| i % 3 != 0)
                    .map(|i| (i, ChunkId::of(&i.to_le_bytes())))
                    .collect(),
            };
            if let Ok((full, bytes)) = manifest.apply(&offered, manifest_id) {
                assert_eq!(ChunkId::of(&bytes), *manifest_id);
                assert_eq!(full.encode(), bytes);
            }
        }
    }
});
