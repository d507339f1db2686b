#![no_main]
use libfuzzer_sys::fuzz_target;

// First 4 bytes (LE): the declared length; the rest: the zstd frame.
use mesh::wire::decompress_item;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let declared = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let frame = &data[4..];
    let Ok(mut d) = zstd::bulk::Decompressor::new() else {
        return;
    };
    if let Ok(out) = decompress_item(&mut d, frame, declared, MAX) {
        assert_eq!(out.len(), declared);
        // Round trip: our own frame of the output decodes to the same bytes.
        let again = zstd::bulk::compress(&out, 1).expect("zstd compress");
        let back = decompress_item(&mut d, &again, declared, MAX).expect("own frame decodes");
        assert_eq!(back, out);
    }
});
