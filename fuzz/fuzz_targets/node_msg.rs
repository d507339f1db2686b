#![no_main]
use libfuzzer_sys::fuzz_target;

use actors::node::proto::NodeMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = NodeMsg::decode(data) {
        roam_fuzz::roundtrip(data.len(), &m, NodeMsg::decode);
    }
});
