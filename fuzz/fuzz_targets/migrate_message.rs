#![no_main]
use libfuzzer_sys::fuzz_target;

use migrate::Message;

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
    }
});
