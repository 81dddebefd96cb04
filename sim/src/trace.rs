//! The event trace: one line per event, stamped with simulated time only, and
//! hashed as it is written. Same seed, same commit: same bytes, same hash.

use std::cell::RefCell;
use std::rc::Rc;

use sha2::{Digest, Sha256};

/// The trace of one run.
#[derive(Default)]
pub struct Trace {
    /// Every line, for the tail printed on failure and for `--trace-file`.
    lines: Vec<String>,
    /// SHA-256 over every line and its newline.
    hasher: Sha256,
}

/// The trace, shared by the driver and the simulated clients (one OS thread).
pub type SharedTrace = Rc<RefCell<Trace>>;

impl Trace {
    /// Appends one event at simulated time `now_ms`.
    pub fn event(&mut self, now_ms: u64, text: impl AsRef<str>) {
        let line = format!("{now_ms:>8} {}", text.as_ref());
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.lines.push(line);
    }

    /// The hash of everything so far, as hex.
    pub fn hash(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.lines[self.lines.len().saturating_sub(n)..].to_vec()
    }

    /// Every line.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}
