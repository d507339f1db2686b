//! Shared oracle of the fuzz targets: a cheap CBOR round trip.

use std::fmt::Debug;

use serde::Serialize;

/// CBOR of `v` (plain data into a Vec: cannot fail).
pub fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR encoding of decoded data failed");
    out
}

/// `value` was decoded from `input_len` bytes. Re-encodes it, decodes that again and asserts
/// the second encoding is byte-identical to the first. A re-encoding that no longer decodes
/// is a failure unless it grew beyond the input (a size limit may then refuse it).
pub fn roundtrip<T, E, F>(input_len: usize, value: &T, decode: F)
where
    T: Serialize,
    E: Debug,
    F: Fn(&[u8]) -> Result<T, E>,
{
    roundtrip_with(input_len, value, cbor, decode)
}

/// Like [`roundtrip`] with the type's own encoder.
pub fn roundtrip_with<T, E, Enc, F>(input_len: usize, value: &T, encode: Enc, decode: F)
where
    E: Debug,
    Enc: Fn(&T) -> Vec<u8>,
    F: Fn(&[u8]) -> Result<T, E>,
{
    let first = encode(value);
    match decode(&first) {
        Ok(again) => assert!(
            encode(&again) == first,
            "re-encoding is not stable ({} bytes)",
            first.len()
        ),
        Err(e) if first.len() <= input_len => {
            panic!("own re-encoding ({} bytes) does not decode: {e:?}", first.len())
        }
        Err(_) => {}
    }
}
