#![no_main]
use libfuzzer_sys::fuzz_target;

use wasm_host::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        let again = Snapshot::decode(&s.encode()).expect("re-encoded snapshot decodes");
        assert_eq!(again, s);
    }
});
