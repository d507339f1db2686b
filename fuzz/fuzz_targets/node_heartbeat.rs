#![no_main]
use libfuzzer_sys::fuzz_target;

use actors::node::proto::Heartbeat;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Heartbeat::decode(data) {
        roam_fuzz::roundtrip(data.len(), &h, Heartbeat::decode);
    }
});
