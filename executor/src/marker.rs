//! The end of a node-bound task's instance, as the host sees it: one line on stdout.
//!
//! A periodic guest does its per-instance work, writes a line, and goes on to the next
//! instance. The sink wrapper counts those lines and requests a pause on the job at once,
//! from the job's own thread, so that the job stops at the yield point right after the
//! write and the dispatcher can complete the release. No guest changes are needed beyond
//! "write a line per instance".

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use wasm_host::{OutputSink, PauseHandle, Stream};

struct Shared {
    lines: AtomicU64,
    pause: OnceLock<PauseHandle>,
}

/// Counts the instances a node-bound job finished; given to the executor with the job.
#[derive(Clone)]
pub struct InstanceMarker {
    shared: Arc<Shared>,
}

impl InstanceMarker {
    /// Instances (stdout lines) seen so far.
    pub fn count(&self) -> u64 {
        self.shared.lines.load(Ordering::SeqCst)
    }

    /// The job whose lines end its instances; set by the executor at admission.
    pub(crate) fn arm(&self, pause: PauseHandle) {
        let _ = self.shared.pause.set(pause);
    }
}

/// Wraps a node-bound job's output sink; the marker goes to the executor with the job.
pub fn instance_sink(inner: Box<dyn OutputSink>) -> (Box<dyn OutputSink>, InstanceMarker) {
    let shared = Arc::new(Shared {
        lines: AtomicU64::new(0),
        pause: OnceLock::new(),
    });
    let sink = MarkingSink {
        inner,
        shared: shared.clone(),
        seen_end: 0,
    };
    (Box::new(sink), InstanceMarker { shared })
}

struct MarkingSink {
    inner: Box<dyn OutputSink>,
    shared: Arc<Shared>,
    /// End offset of the stdout bytes already counted: a replayed write is not counted twice.
    seen_end: u64,
}

impl OutputSink for MarkingSink {
    fn write(&mut self, stream: Stream, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write(stream, offset, data)?;
        if stream == Stream::Stdout {
            let end = offset.saturating_add(data.len() as u64);
            if end > self.seen_end {
                let fresh =
                    &data[(self.seen_end.saturating_sub(offset) as usize).min(data.len())..];
                self.seen_end = end;
                let lines = fresh.iter().filter(|&&b| b == b'\n').count() as u64;
                if lines > 0 {
                    self.shared.lines.fetch_add(lines, Ordering::SeqCst);
                    if let Some(p) = self.shared.pause.get() {
                        p.request();
                    }
                }
            }
        }
        Ok(())
    }
}
