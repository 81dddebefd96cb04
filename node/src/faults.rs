//! Deliberately broken behaviours for tests, switched on at run time with
//! `SYNOD_FAULTS=name[,name...]`.
//!
//! They exist only in builds with the `fault-injection` cargo feature, which
//! the test command enables and release builds do not: without the feature
//! [`enabled`] is a constant `false` and the faulty branches compile away.

/// A leader that skips its own checks of a client's command (signature,
/// author's authority) before proposing it. Followers must still refuse it.
pub const SKIP_AUTHOR_CHECK: &str = "skip-author-check";

/// Whether the named fault is switched on for this process.
#[cfg(feature = "fault-injection")]
pub fn enabled(name: &str) -> bool {
    std::env::var("SYNOD_FAULTS").map(|v| v.split(',').any(|f| f.trim() == name)).unwrap_or(false)
}

/// Whether the named fault is switched on for this process (never, in this build).
#[cfg(not(feature = "fault-injection"))]
pub fn enabled(_name: &str) -> bool {
    false
}

/// The faults this build can inject, for `synod version`.
pub fn available() -> &'static [&'static str] {
    if cfg!(feature = "fault-injection") {
        &[SKIP_AUTHOR_CHECK]
    } else {
        &[]
    }
}
