#![no_main]
use libfuzzer_sys::fuzz_target;

use actors::node::admm::Proposal;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Proposal::decode(data) {
        roam_fuzz::roundtrip(data.len(), &p, Proposal::decode);
    }
});
