#![no_main]
use libfuzzer_sys::fuzz_target;

// A direct-message frame body from the network: topic and payload, or a typed error.
// And the same bytes as the stream they come on: length-prefixed frames, read in two
// pieces cut where the first byte says.
use mesh::direct::{decode_body, encode_body, take_frame};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok((topic, payload)) = decode_body(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(&encode_body(topic, payload)[..], data);
    }
    let cut = data.first().map_or(0, |&b| b as usize).min(data.len());
    let (mut buf, mut taken) = (Vec::new(), 0);
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            match take_frame(&mut buf, MAX) {
                Ok(Some(body)) => {
                    assert!(body.len() <= MAX);
                    taken += 4 + body.len();
                }
                Ok(None) => break,
                Err(len) => {
                    assert!(len > MAX);
                    return;
                }
            }
        }
    }
    // Every byte is in a frame taken or still buffered, never more than one frame's worth.
    assert_eq!(taken + buf.len(), data.len());
    assert!(buf.len() < 4 + MAX);
});
