#![no_main]
use libfuzzer_sys::fuzz_target;

use actors::node::proto::NodeReply;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = NodeReply::decode(data) {
        roam_fuzz::roundtrip(data.len(), &r, NodeReply::decode);
    }
});
