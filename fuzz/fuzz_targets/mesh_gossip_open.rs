#![no_main]
use libfuzzer_sys::fuzz_target;

// First byte picks the topic; the rest is the envelope.
use mesh::gossip::Opener;
use mesh::Topic;

fuzz_target!(|data: &[u8]| {
    let Some((sel, env)) = data.split_first() else {
        return;
    };
    let topic = match sel % 3 {
        0 => Topic::Placement,
        1 => Topic::JobEvents,
        _ => Topic::Heartbeat,
    };
    let mut opener = Opener::default();
    let first = opener.open(topic, env);
    // Opening again (author key now cached) gives the same answer.
    let second = opener.open(topic, env);
    assert_eq!(first, second);
});
