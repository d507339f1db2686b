#![no_main]
use libfuzzer_sys::fuzz_target;

use wasm_host::snapshot::JobGlobals;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = JobGlobals::decode(data) {
        roam_fuzz::roundtrip_with(data.len(), &g, JobGlobals::encode, JobGlobals::decode);
        assert_eq!(JobGlobals::decode(&g.encode()).ok().as_ref(), Some(&g));
    }
});
