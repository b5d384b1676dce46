//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::io::IsTerminal;

use cairn_castore::import::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count bar that the import code reports into.
#[derive(Clone)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A hidden bar unless stderr is a terminal.
    pub fn new(verb: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(&format!(
            "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{msg}} ({{bytes_per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Bar { bar: Some(bar) }
    }

    /// A bar for work whose size may be unknown: a spinner with the bytes
    /// done and the rate, becoming a bar once [`set_total`](Self::set_total)
    /// says how much there is.
    pub fn bytes_unknown_total(verb: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = ProgressBar::no_length();
        let style = ProgressStyle::with_template(&format!(
            "{{spinner}} {verb}: {{bytes}} ({{bytes_per_sec}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Bar { bar: Some(bar) }
    }

    /// Sets the total, turning a spinner into a bar.
    pub fn set_total(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            let style = ProgressStyle::with_template(
                "[{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.set_length(bytes);
        }
    }

    /// Counts bytes done.
    pub fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl cairn_store::copy::CopyProgress for Bar {
    fn bytes_sent(&self, n: u64) {
        self.advance(n);
    }
}

impl Progress for Bar {
    fn add_total(&self, files: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(bytes);
            b.set_message(format!("{files} files"));
        }
    }

    fn file_done(&self, bytes: u64) {
        self.advance(bytes);
    }
}
