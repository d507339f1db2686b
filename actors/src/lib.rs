//! The roam node: actix actors that wire the Wasm host (`wasm-host`), the chunk store
//! (`store`), the migration protocol (`migrate`) and the libp2p mesh (`mesh`) into one
//! process, plus the local control API the `roam` CLI talks to.
//!
//! This is the only crate that sees both the network and WebAssembly. Everything with
//! logic worth testing on its own lives in a sans-IO core elsewhere (or in a plain
//! struct here, like [`node::logbook`]); the actors only move events between cores,
//! the job threads, the mesh task and timers.

pub mod chaos;
pub mod demo;
pub mod http;
pub mod node;
pub mod placement_shell;
pub mod progress;
pub mod timeline;
