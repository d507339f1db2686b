//! The transport stack: TCP, then the private-network handshake (libp2p pnet, XSalsa20
//! keyed by the swarm key, followed by a 16-byte key confirmation), then noise, then
//! yamux.
//!
//! Public so that tests and tools can build a swarm with any behaviour (for example a
//! raw client that sends malformed bytes) on exactly the stack the node uses.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::Version;
use libp2p::pnet::PnetConfig;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{noise, tcp, yamux, PeerId, Swarm};

use crate::config::{Identity, SwarmKey};
use crate::types::MeshError;

/// Builds the authenticated, multiplexed transport. With `key = None` the connection is
/// not wrapped in pnet: such a node cannot talk to a private swarm (tests use that).
pub fn build_transport(
    identity: &Identity,
    key: Option<&SwarmKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, MeshError> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
    let noise = noise::Config::new(&identity.0).map_err(|e| MeshError::Transport(e.to_string()))?;
    // The two stacks differ in their socket type, so each is finished and boxed on its own.
    macro_rules! finish {
        ($base:expr) => {
            $base
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(20))
                .boxed()
        };
    }
    Ok(match key {
        Some(k) => {
            let psk = k.psk();
            finish!(tcp.and_then(move |socket, _| async move {
                let mut s = PnetConfig::new(psk)
                    .handshake(socket)
                    .await
                    .map_err(io::Error::other)?;
                confirm_key(&mut s).await?;
                Ok::<_, io::Error>(s)
            }))
        }
        None => finish!(tcp),
    })
}

/// Sent by both sides right after the pnet nonces. With the wrong key it decrypts to
/// garbage, so a mismatch is refused at once instead of stalling the next handshake
/// until its timeout.
const KEY_CHECK: &[u8; 16] = b"roam-swarm-key/1";

async fn confirm_key<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> io::Result<()> {
    s.write_all(KEY_CHECK).await?;
    s.flush().await?;
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).await?;
    if &buf != KEY_CHECK {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "swarm key mismatch",
        ));
    }
    Ok(())
}

/// Builds a swarm on the node's transport stack running on tokio.
pub fn build_swarm<B: NetworkBehaviour>(
    identity: &Identity,
    key: Option<&SwarmKey>,
    idle_connection_timeout: Duration,
    behaviour: B,
) -> Result<Swarm<B>, MeshError> {
    let transport = build_transport(identity, key)?;
    Ok(Swarm::new(
        transport,
        behaviour,
        identity.peer_id(),
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(idle_connection_timeout)
            // Every request opens a substream and names its one protocol. With V1
            // the dialer waits for the listener's echo of the protocol before it
            // writes the request: a round trip per message, on every control
            // message and chunk request (a migration's Final, its GoAck). V1Lazy
            // writes at once when only one protocol is proposed (multistream-select
            // falls back to V1 otherwise); every roam node speaks every protocol.
            .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy),
    ))
}
