//! roam's peer-to-peer mesh: a private libp2p network (TCP + pnet + noise + yamux) with
//! discovery (mDNS, bootstrap addresses, peer exchange), gossip for control traffic,
//! direct messages to chosen peers ([`direct`]),
//! a verified multi-source chunk exchange (optionally zstd-compressed per fetch, see
//! [`FetchOptions`]) and typed control requests.
//!
//! The mesh knows nothing of Wasm: it moves opaque chunks named by their blake3 hash and
//! small opaque control messages. A node plugs in a [`ChunkProvider`] for the chunks it
//! serves; the mesh never owns a store.
//!
//! Layout: the sans-IO parts are [`sched`] (multi-source fetch scheduling), [`link`]
//! (link measurements) and [`wire`] (bounded codecs); [`node`] is the thin shell where
//! one task owns the libp2p `Swarm` and the rest of the program talks to it through a
//! [`MeshHandle`].

pub mod config;
pub mod direct;
pub mod gossip;
pub mod link;
pub mod node;
pub mod provider;
pub mod sched;
pub mod transport;
pub mod types;
pub mod wire;

pub use bytes::Bytes;
pub use config::{Identity, MeshConfig, SwarmKey};
pub use libp2p::{multiaddr, Multiaddr, PeerId};
pub use link::LinkReport;
pub use node::{
    start, ControlReply, Fetch, FetchItem, FetchOptions, MeshEvent, MeshHandle, Sources,
};
pub use provider::{ChunkProvider, MemoryChunks, NoChunks};
pub use sched::SchedulerConfig;

/// The result of a finished fetch on the mesh.
pub type FetchOutcome = sched::Outcome<PeerId>;
pub use types::{ChunkId, MeshError, Topic};
pub use wire::WireLimits;
