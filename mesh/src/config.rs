//! Node configuration of the mesh, the swarm key and the node identity.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use libp2p::Multiaddr;

use crate::sched::SchedulerConfig;
use crate::types::MeshError;
use crate::wire::WireLimits;

/// The 32-byte pre-shared key of a private swarm: only nodes holding it can connect.
#[derive(Clone, Copy)]
pub struct SwarmKey(pub [u8; 32]);

impl SwarmKey {
    /// Parses the standard `/key/swarm/psk/1.0.0/` key file format (base16) or a bare
    /// 64-character hex string.
    pub fn parse(text: &str) -> Result<SwarmKey, MeshError> {
        let t = text.trim();
        if t.starts_with("/key/swarm/psk/") {
            let k: PreSharedKey = t.parse().map_err(|e| MeshError::SwarmKey(format!("{e}")))?;
            // PreSharedKey keeps its bytes private; its key file text holds them in hex.
            return Self::parse_hex(k.to_key_file().lines().nth(2).unwrap_or(""));
        }
        Self::parse_hex(t)
    }

    fn parse_hex(t: &str) -> Result<SwarmKey, MeshError> {
        let t = t.trim();
        if t.len() != 64 || !t.is_ascii() {
            return Err(MeshError::SwarmKey("expected 64 hex digits".into()));
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
                .map_err(|_| MeshError::SwarmKey("invalid hex digit".into()))?;
        }
        Ok(SwarmKey(k))
    }

    /// A fresh random key.
    pub fn generate() -> SwarmKey {
        SwarmKey(rand::random())
    }

    /// The key in the standard key file format.
    pub fn to_key_file(&self) -> String {
        PreSharedKey::new(self.0).to_key_file()
    }

    pub(crate) fn psk(&self) -> PreSharedKey {
        PreSharedKey::new(self.0)
    }
}

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwarmKey({})", self.psk().fingerprint())
    }
}

/// The node's long-term identity (ed25519).
pub struct Identity(pub(crate) Keypair);

impl Identity {
    pub fn generate() -> Identity {
        Identity(Keypair::generate_ed25519())
    }

    /// From a 32-byte ed25519 secret key.
    pub fn from_secret(secret: [u8; 32]) -> Result<Identity, MeshError> {
        Keypair::ed25519_from_bytes(secret)
            .map(Identity)
            .map_err(|e| MeshError::Identity(e.to_string()))
    }

    /// From a protobuf-encoded libp2p keypair (as written by [`Identity::to_protobuf`]).
    pub fn from_protobuf(bytes: &[u8]) -> Result<Identity, MeshError> {
        let k = Keypair::from_protobuf_encoding(bytes)
            .map_err(|e| MeshError::Identity(e.to_string()))?;
        if k.key_type() != libp2p::identity::KeyType::Ed25519 {
            return Err(MeshError::Identity("not an ed25519 key".into()));
        }
        Ok(Identity(k))
    }

    pub fn to_protobuf(&self) -> Result<Vec<u8>, MeshError> {
        self.0
            .to_protobuf_encoding()
            .map_err(|e| MeshError::Identity(e.to_string()))
    }

    pub fn peer_id(&self) -> libp2p::PeerId {
        self.0.public().to_peer_id()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity(self.0.clone())
    }
}

/// Configuration of one mesh node.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Pre-shared key of the private swarm.
    pub swarm_key: SwarmKey,
    /// Addresses to listen on (for example `/ip4/0.0.0.0/tcp/4001`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (and again when the node has no connection left).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS (mDNS skips loopback interfaces).
    pub mdns: bool,
    /// Keep dialling discovered peers while connected to fewer than this.
    pub target_peers: usize,
    /// Connections with no activity are closed after this.
    pub idle_connection_timeout: Duration,
    /// Interval between pings (RTT measurements).
    pub ping_interval: Duration,
    /// Timeout of one chunk or control request.
    pub request_timeout: Duration,
    /// Gossipsub heartbeat interval.
    pub gossip_heartbeat: Duration,
    /// Gossipsub mesh degree (target, low, high).
    pub gossip_mesh: (usize, usize, usize),
    /// Publish to every connected subscriber, not just mesh peers: one hop less to most
    /// nodes, more duplicate copies.
    pub gossip_flood_publish: bool,
    /// Largest gossip message (and direct message, see [`crate::direct`]).
    pub max_gossip_bytes: usize,
    /// Wire size limits.
    pub limits: WireLimits,
    /// Fetch scheduling.
    pub fetch: SchedulerConfig,
    /// Outbound chunk requests in flight to one peer across all fetches.
    pub max_requests_per_peer: usize,
    /// Concurrent streams per connection (inbound + outbound, all request protocols).
    pub max_streams_per_connection: usize,
    /// Offences (corrupt chunks, malformed messages) after which a peer is banned.
    pub ban_after_offences: u64,
    /// Cap on the rate at which this node uploads chunk bytes (None = unlimited).
    pub upload_limit_bps: Option<u64>,
    /// Capacity of the command and event channels.
    pub channel_capacity: usize,
}

impl MeshConfig {
    /// Defaults for a node of a 3–64 node edge swarm with the given key.
    pub fn new(swarm_key: SwarmKey) -> MeshConfig {
        MeshConfig {
            swarm_key,
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr")],
            bootstrap: Vec::new(),
            mdns: true,
            target_peers: 12,
            idle_connection_timeout: Duration::from_secs(300),
            ping_interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            gossip_heartbeat: Duration::from_millis(150),
            gossip_mesh: (4, 3, 8),
            gossip_flood_publish: true,
            max_gossip_bytes: 256 << 10,
            limits: WireLimits::default(),
            fetch: SchedulerConfig::default(),
            max_requests_per_peer: 8,
            max_streams_per_connection: 64,
            ban_after_offences: 3,
            upload_limit_bps: None,
            channel_capacity: 1024,
        }
    }

    /// Defaults for in-process tests: listen on 127.0.0.1 only, no mDNS.
    pub fn local(swarm_key: SwarmKey) -> MeshConfig {
        MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
            mdns: false,
            ..MeshConfig::new(swarm_key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_key_formats() {
        let k = SwarmKey::generate();
        let file = k.to_key_file();
        assert!(file.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
        assert_eq!(SwarmKey::parse(&file).unwrap().0, k.0);
        let hex: String = k.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(SwarmKey::parse(&hex).unwrap().0, k.0);
        assert_eq!(SwarmKey::parse(&format!("  {hex}\n")).unwrap().0, k.0);
        assert!(SwarmKey::parse("abc").is_err());
        assert!(SwarmKey::parse(&"zz".repeat(32)).is_err());
        assert!(SwarmKey::parse("/key/swarm/psk/1.0.0/\n/base64/\nAAAA").is_err());
        // Multi-byte characters must not make the parser slice inside a character.
        assert!(SwarmKey::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn identity_roundtrip() {
        let id = Identity::from_secret([7; 32]).unwrap();
        let again = Identity::from_secret([7; 32]).unwrap();
        assert_eq!(id.peer_id(), again.peer_id());
        let pb = id.to_protobuf().unwrap();
        assert_eq!(
            Identity::from_protobuf(&pb).unwrap().peer_id(),
            id.peer_id()
        );
        assert!(Identity::from_protobuf(b"garbage").is_err());
        assert_ne!(Identity::generate().peer_id(), id.peer_id());
    }
}
