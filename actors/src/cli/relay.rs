//! `roam relay` (hidden): a TCP forwarder that adds a fixed delay in each direction.
//!
//! It exists for kernels without the netem qdisc (`scripts/netns check` says so), where a
//! shaped link can be rate-limited (tbf) but not delayed: put this relay in the path of
//! the mesh connection and the RTT the nodes measure grows by twice `--delay-ms`.
//! `scripts/shaped-move` uses it that way.
//!
//! Every chunk read on one side is held for `--delay-ms` from the moment it was read, then
//! written to the other side, in order. No rate limit is added (the link under it does
//! that). At most `--max-queue-mib` MiB wait per direction; when that is full the relay
//! stops reading that side, so TCP flow control pushes back on the sender. An end of
//! stream is passed on (after the queued bytes) as a half-close; an error on either side
//! closes both.
//!
//! Not an emulation of a long path for TCP itself: the relay terminates TCP on both
//! sides, so each TCP connection sees the short RTT of its own hop and only the
//! application sees the added delay (request/response latency, pings). Netem, where the
//! kernel has it, delays the packets instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Largest read; a chunk is held and written as one piece.
const READ_BUF: usize = 64 << 10;

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to accept connections on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address each accepted connection is forwarded to.
    #[arg(long)]
    pub to: SocketAddr,
    /// Milliseconds each chunk is held, in each direction (RTT grows by twice this).
    #[arg(long, default_value_t = 10)]
    pub delay_ms: u64,
    /// Most MiB queued per direction; beyond it the relay stops reading (backpressure).
    #[arg(long, default_value_t = 16)]
    pub max_queue_mib: u64,
}

pub fn relay(a: RelayArgs) -> anyhow::Result<i32> {
    if a.max_queue_mib == 0 || a.max_queue_mib > 1024 {
        anyhow::bail!("--max-queue-mib must be in 1..=1024");
    }
    if a.delay_ms > 60_000 {
        anyhow::bail!("--delay-ms must be at most 60000");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(serve(a))?;
    Ok(0)
}

async fn serve(a: RelayArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    let delay = Duration::from_millis(a.delay_ms);
    let cap = (a.max_queue_mib << 20) as usize;
    // Scripts wait for this line before they use the relay.
    eprintln!(
        "roam relay {local} -> {}, {} ms each way, queue {} MiB per direction",
        a.to, a.delay_ms, a.max_queue_mib
    );
    let next = AtomicU64::new(1);
    loop {
        let (inbound, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: keep serving the open connections.
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let conn = next.fetch_add(1, Ordering::Relaxed);
        let to = a.to;
        tokio::spawn(async move {
            tracing::info!(conn, %peer, %to, "accepted");
            match connection(inbound, to, delay, cap).await {
                Ok((up, down)) => {
                    tracing::info!(conn, %peer, up_bytes = up, down_bytes = down, "closed")
                }
                Err(e) => tracing::info!(conn, %peer, error = %format!("{e:#}"), "closed"),
            }
        });
    }
}

/// Relays one connection until both directions ended (or one failed). Returns the bytes
/// passed on: client → target, target → client.
async fn connection(
    inbound: TcpStream,
    to: SocketAddr,
    delay: Duration,
    cap: usize,
) -> anyhow::Result<(u64, u64)> {
    let outbound = TcpStream::connect(to)
        .await
        .with_context(|| format!("connecting to {to}"))?;
    // The relay does its own holding; Nagle would add to it.
    inbound.set_nodelay(true).context("TCP_NODELAY")?;
    outbound.set_nodelay(true).context("TCP_NODELAY")?;
    let (in_rd, in_wr) = inbound.into_split();
    let (out_rd, out_wr) = outbound.into_split();
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut a = tokio::spawn(pipe(in_rd, out_wr, delay, cap, up.clone()));
    let mut b = tokio::spawn(pipe(out_rd, in_wr, delay, cap, down.clone()));
    // A clean end of one direction leaves the other running (half-close); a failure of
    // either ends both (dropping a task's halves closes its sockets).
    let first_a;
    let first = tokio::select! {
        r = &mut a => { first_a = true; r }
        r = &mut b => { first_a = false; r }
    };
    let (second, label) = if first_a {
        (&mut b, "target → client")
    } else {
        (&mut a, "client → target")
    };
    let first_label = if first_a {
        "client → target"
    } else {
        "target → client"
    };
    let result = match first.context("relay task")? {
        Ok(()) => second
            .await
            .context("relay task")?
            .with_context(|| label.to_string()),
        Err(e) => {
            second.abort();
            Err(e).with_context(|| first_label.to_string())
        }
    };
    let totals = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    result.map(|()| totals)
}

/// One direction: read, hold each chunk until `delay` after it was read, write it on.
/// At most `cap` bytes are read but not yet written.
async fn pipe(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    delay: Duration,
    cap: usize,
    passed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let room = Arc::new(Semaphore::new(cap));
    // The queue is bounded by the semaphore (bytes), not by the channel.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes, OwnedSemaphorePermit)>();
    let writer = async move {
        while let Some((due, chunk, permit)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            wr.write_all(&chunk).await.context("writing")?;
            passed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            drop(permit);
        }
        // The reader saw the end of its stream and everything queued is written.
        wr.shutdown()
            .await
            .context("passing on the end of stream")?;
        anyhow::Ok(())
    };
    let reader = async move {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            // Room for a whole read first: when the queue is full, stop reading.
            let mut permit = room
                .clone()
                .acquire_many_owned(READ_BUF as u32)
                .await
                .context("queue closed")?;
            let n = rd.read(&mut buf).await.context("reading")?;
            if n == 0 {
                return anyhow::Ok(());
            }
            let due = Instant::now() + delay;
            // Give back the room this read did not use.
            if n < READ_BUF {
                drop(permit.split((READ_BUF - n) as usize));
            }
            if tx
                .send((due, Bytes::copy_from_slice(&buf[..n]), permit))
                .is_err()
            {
                // The writer failed; its error is the one reported.
                return Ok(());
            }
        }
    };
    tokio::pin!(reader, writer);
    // A failure on either half ends the direction at once (a reader blocked on a silent
    // peer must not keep a dead connection open). The writer ends cleanly only after the
    // reader has.
    tokio::select! {
        r = &mut reader => {
            r?;
            writer.await
        }
        w = &mut writer => w,
    }
}
