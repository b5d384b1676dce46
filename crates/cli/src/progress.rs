//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::io::IsTerminal;

use cairn_castore::import::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count bar that the import code reports into.
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

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
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
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }
}
