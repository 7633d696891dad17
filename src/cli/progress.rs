//! Progress bars (on stderr, drawn only when it is a terminal) and the
//! failed-inputs tally that sets the exit status of commands over many files.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items (or bytes, with `bytes`).
pub fn bar(len: u64, what: &str, bytes: bool) -> ProgressBar {
    let template = if bytes {
        "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})"
    } else {
        "{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} (eta {eta})"
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    let pb = ProgressBar::new(len).with_style(style);
    pb.set_prefix(what.to_string());
    pb
}

/// Inputs that could not be processed, reported one by one above the bar
/// and summed up at the end.
#[derive(Default)]
pub struct Failures {
    failed: usize,
}

impl Failures {
    pub fn record(&mut self, pb: &ProgressBar, input: &std::path::Path, e: impl std::fmt::Display) {
        self.failed += 1;
        pb.suspend(|| eprintln!("{}: {e}", input.display()));
    }

    /// The summary line; an error (non-zero exit) when anything failed,
    /// unless `keep_going`.
    pub fn finish(self, total: usize, keep_going: bool) -> anyhow::Result<()> {
        if self.failed == 0 {
            return Ok(());
        }
        let line = format!("{} of {total} inputs failed (see above)", self.failed);
        if keep_going {
            eprintln!("{line}; --keep-going: exit status 0");
            Ok(())
        } else {
            anyhow::bail!("{line}; pass --keep-going to exit 0 anyway")
        }
    }
}
