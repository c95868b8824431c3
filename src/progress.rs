//! The resync's progress bar: the library reports through
//! `syncd::primary::Progress`; drawing is the binary's.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use syncd::primary::{NoProgress, Progress};

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, bytes: u64, files: usize) {
        self.0.set_length(bytes);
        self.0.set_message(format!("0/{files} files"));
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn files(&self, done: u64) {
        self.0.set_message(format!("{done} files"));
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A bar on stderr when `enabled`, else nothing.
pub fn bar(enabled: bool) -> Arc<dyn Progress> {
    if !enabled {
        return Arc::new(NoProgress);
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Arc::new(Bar(b))
}
