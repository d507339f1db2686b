//! Per-peer link measurements for the LinkMonitor, sans IO: round-trip time from pings,
//! throughput observed on real chunk transfers, failure counts.
//!
//! Throughput is measured as a delivery rate: while requests to a peer are in flight,
//! each response's bytes are divided by the time since the previous response (or since
//! the link went busy), so pipelined requests are not under-counted the way a
//! per-request `bytes / duration` would. Time is passed in by the caller.

use std::time::{Duration, Instant};

/// Weight of a new sample in the moving averages.
const ALPHA: f64 = 0.25;

/// A snapshot of what is known about the link to one peer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkReport {
    /// Smoothed round-trip time from pings.
    pub rtt: Option<Duration>,
    /// Smoothed observed throughput in bytes per second (chunk transfers from this peer).
    pub throughput_bps: Option<f64>,
    /// Bytes received from this peer in chunk responses.
    pub bytes_received: u64,
    /// Failed pings and failed requests.
    pub failures: u64,
    /// Offences: corrupt chunks, malformed or unexpected messages.
    pub offences: u64,
}

/// The measurement state of one link.
#[derive(Clone, Debug, Default)]
pub struct LinkStats {
    report: LinkReport,
    inflight: usize,
    mark: Option<Instant>,
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(o) => o + ALPHA * (sample - o),
        None => sample,
    }
}

impl LinkStats {
    pub fn report(&self) -> &LinkReport {
        &self.report
    }

    pub fn on_rtt(&mut self, rtt: Duration) {
        let s = ewma(self.report.rtt.map(|d| d.as_secs_f64()), rtt.as_secs_f64());
        self.report.rtt = Some(Duration::from_secs_f64(s.max(0.0)));
    }

    pub fn on_failure(&mut self) {
        self.report.failures += 1;
    }

    pub fn on_offence(&mut self) {
        self.report.offences += 1;
    }

    /// A transfer request to this peer was sent at `now`.
    pub fn on_request_sent(&mut self, now: Instant) {
        if self.inflight == 0 {
            self.mark = Some(now);
        }
        self.inflight += 1;
    }

    /// A transfer request ended without data (failure, refusal).
    pub fn on_request_ended(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// A transfer response carrying `bytes` arrived at `now`. Returns true if it gave a
    /// throughput sample.
    pub fn on_response(&mut self, bytes: u64, now: Instant) -> bool {
        self.report.bytes_received += bytes;
        self.inflight = self.inflight.saturating_sub(1);
        let Some(mark) = self.mark else {
            return false;
        };
        self.mark = if self.inflight > 0 { Some(now) } else { None };
        let dt = now.saturating_duration_since(mark).as_secs_f64();
        // Below a few microseconds the clock says nothing useful about a rate.
        if bytes == 0 || dt < 20e-6 {
            return false;
        }
        self.report.throughput_bps = Some(ewma(self.report.throughput_bps, bytes as f64 / dt));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_is_smoothed() {
        let mut l = LinkStats::default();
        l.on_rtt(Duration::from_millis(10));
        assert_eq!(l.report().rtt, Some(Duration::from_millis(10)));
        l.on_rtt(Duration::from_millis(50));
        let r = l.report().rtt.unwrap().as_secs_f64();
        assert!((r - 0.020).abs() < 1e-6, "{r}");
    }

    #[test]
    fn pipelined_throughput_counts_delivery_rate() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut l = LinkStats::default();
        // Four 1 MB requests sent together, answered every 10 ms: 100 MB/s.
        for _ in 0..4 {
            l.on_request_sent(t0);
        }
        for i in 1..=4 {
            assert!(l.on_response(1_000_000, ms(10 * i)));
        }
        let bps = l.report().throughput_bps.unwrap();
        assert!((bps - 100e6).abs() < 1e3, "{bps}");
        assert_eq!(l.report().bytes_received, 4_000_000);
    }

    #[test]
    fn idle_gaps_do_not_count() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut l = LinkStats::default();
        l.on_request_sent(t0);
        l.on_response(1_000_000, ms(10));
        // One second idle, then another 10 ms transfer: still 100 MB/s.
        l.on_request_sent(ms(1010));
        l.on_response(1_000_000, ms(1020));
        let bps = l.report().throughput_bps.unwrap();
        assert!((bps - 100e6).abs() < 1e3, "{bps}");
    }

    #[test]
    fn failures_and_offences_count() {
        let mut l = LinkStats::default();
        l.on_request_sent(Instant::now());
        l.on_request_ended();
        l.on_failure();
        l.on_offence();
        l.on_offence();
        assert_eq!(l.report().failures, 1);
        assert_eq!(l.report().offences, 2);
        assert_eq!(l.report().throughput_bps, None);
    }
}
