#![no_main]
use libfuzzer_sys::fuzz_target;

use store::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        roam_fuzz::roundtrip_with(data.len(), &m, Manifest::encode, Manifest::decode);
        if let Ok(again) = Manifest::decode(&m.encode()) {
            assert_eq!(again, m);
        }
    }
});
