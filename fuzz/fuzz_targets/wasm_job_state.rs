#![no_main]
use libfuzzer_sys::fuzz_target;

use wasm_host::snapshot::JobState;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = JobState::decode(data) {
        roam_fuzz::roundtrip_with(data.len(), &s, JobState::encode, JobState::decode);
        assert_eq!(JobState::decode(&s.encode()).ok().as_ref(), Some(&s));
    }
});
