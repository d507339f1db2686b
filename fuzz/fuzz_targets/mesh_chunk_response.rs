#![no_main]
use libfuzzer_sys::fuzz_target;

// The GET/HAVE response path: `ChunkCodec::read_response` over an in-memory stream
// (length-prefixed CBOR head, then the item bodies, raw or zstd).
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use mesh::wire::{ChunkCodec, ChunkResponse, ItemBody};

fuzz_target!(|data: &[u8]| {
    let mut codec = ChunkCodec::default();
    let proto = StreamProtocol::new("/roam/fuzz/1");
    let mut io = futures::io::Cursor::new(data);
    let resp = futures::executor::block_on(codec.read_response(&proto, &mut io));
    if let Ok(ChunkResponse::Get(items)) = resp {
        for it in items {
            if let ItemBody::Data { data, valid, .. } = &it.body {
                assert_eq!(*valid, it.id.matches(data));
            }
        }
    }
});
