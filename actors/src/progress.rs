//! Progress bars and spinners for long command-line work (a move, a store check or
//! gc, a checkpointed run, the demo), drawn on stderr with `indicatif`.
//!
//! They are drawn only when stderr is a terminal, `TERM` is not `dumb` and
//! `ROAM_PROGRESS` is not `0`: piped, redirected or in a test, a command prints exactly
//! what it printed without them, so scripts that read its output see no escapes.
//! Lines a command prints while a bar is up go through [`Progress::println`], which
//! lifts the bar, prints the line to stdout and puts the bar back; log lines do the
//! same through [`LogWriter`], the `roam` binary's log writer.

use std::cell::Cell;
use std::io::{IsTerminal as _, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a bar counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes, shown as KiB/MiB.
    Bytes,
    /// Items (chunks, checkpoints, steps), shown as `n/total`.
    Items,
}

/// Whether progress is drawn, given whether stderr is a terminal and the values of
/// `ROAM_PROGRESS` and `TERM`.
pub fn should_draw(
    stderr_is_terminal: bool,
    roam_progress: Option<&str>,
    term: Option<&str>,
) -> bool {
    let off = matches!(
        roam_progress.map(str::trim),
        Some("0" | "off" | "no" | "false")
    );
    stderr_is_terminal && term != Some("dumb") && !off
}

/// [`should_draw`] for this process.
pub fn enabled() -> bool {
    should_draw(
        std::io::stderr().is_terminal(),
        std::env::var("ROAM_PROGRESS").ok().as_deref(),
        std::env::var("TERM").ok().as_deref(),
    )
}

/// The bar on the terminal now, if any: log lines lift it while they are written.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn set_active(bar: Option<&ProgressBar>) {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = bar.cloned();
    }
}

/// Stderr for log lines: lifts the bar drawn there, if any, around each write (the
/// `tracing` formatter writes an event in one piece).
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().ok().and_then(|a| a.clone());
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// What a [`Progress`] draws now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    Spinner,
    Bar(Unit),
}

fn style(look: Look) -> ProgressStyle {
    // One line, whatever the terminal's width: the bar (or the message, on a
    // spinner) takes what the rest leaves.
    let template = match look {
        Look::Spinner => "{spinner} {elapsed:>3} {wide_msg}",
        Look::Bar(Unit::Bytes) => {
            "{spinner} {msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {elapsed:>3}"
        }
        Look::Bar(Unit::Items) => "{spinner} {msg} [{wide_bar}] {pos}/{len} {elapsed:>3}",
    };
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> ").tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A bar or spinner on stderr; a no-op when progress is not drawn.
pub struct Progress {
    bar: ProgressBar,
    look: Cell<Look>,
}

impl Progress {
    fn with(len: Option<u64>, look: Look, msg: String) -> Progress {
        if !enabled() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden())
            .with_message(msg)
            .with_style(style(look));
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(120));
        set_active(Some(&bar));
        Progress {
            bar,
            look: Cell::new(look),
        }
    }

    /// A bar of `len` units.
    pub fn bar(len: u64, unit: Unit, msg: impl Into<String>) -> Progress {
        Progress::with(Some(len), Look::Bar(unit), msg.into())
    }

    /// A spinner with a message and the time since it started.
    pub fn spinner(msg: impl Into<String>) -> Progress {
        Progress::with(None, Look::Spinner, msg.into())
    }

    /// Draws nothing.
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
            look: Cell::new(Look::Spinner),
        }
    }

    fn show(&self, look: Look) {
        if self.look.get() != look {
            self.look.set(look);
            self.bar.set_style(style(look));
        }
    }

    /// Shows a bar of `done` of `total` (a spinner becomes a bar).
    pub fn set_done(&self, done: u64, total: u64, unit: Unit) {
        self.show(Look::Bar(unit));
        self.bar.set_length(total);
        self.bar.set_position(done.min(total));
    }

    /// Shows a spinner (a bar becomes a spinner), e.g. while the total is unknown.
    pub fn set_spinner(&self) {
        self.show(Look::Spinner);
    }

    /// Whether anything is drawn.
    pub fn is_drawn(&self) -> bool {
        !self.bar.is_hidden()
    }

    pub fn set_message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    pub fn inc(&self, by: u64) {
        self.bar.inc(by);
    }

    /// Changes the total (a spinner stays a spinner).
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// Prints `line` to stdout without tearing the bar.
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| println!("{line}"));
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if self.is_drawn() {
            set_active(None);
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_only_on_a_terminal_unless_told() {
        assert!(should_draw(true, None, Some("xterm-256color")));
        assert!(!should_draw(false, None, Some("xterm")));
        assert!(!should_draw(true, None, Some("dumb")));
        assert!(!should_draw(true, Some("0"), None));
        assert!(!should_draw(false, Some("1"), None));
        assert!(should_draw(true, Some(""), None));
    }

    #[test]
    fn a_hidden_bar_takes_every_call() {
        let p = Progress::hidden();
        assert!(!p.is_drawn());
        p.set_length(10);
        p.inc(3);
        p.set_position(5);
        p.set_message("x");
        p.finish();
    }
}
