//! What the CLI shows people: text that others chose, times, and notes and
//! errors on stderr.
//!
//! Text that others chose (request ids, purposes, attributes, operator and
//! key names, refusal reasons) has only a length limit, so it can hold
//! terminal escape sequences (`ESC [ 2 J` clears the screen and can draw a
//! different request in its place) or bidirectional overrides (U+202E shows
//! `exe.txt` as `txt.exe`). Every table printer of the CLI passes such text
//! through [`shown`], which writes the C0 controls, DEL, the C1 controls, the
//! bidi controls and the invisible separators as `\u{..}` escapes, and a
//! backslash as `\\`, so what the terminal shows is what the cluster holds,
//! and an escape in the data cannot pass for one the CLI made. JSON output
//! (`-o json`) is data for programs and is left exact (serde_json escapes the
//! C0 controls in it).
//!
//! Times. The cluster keeps times as milliseconds since the Unix epoch (log
//! time, fields named `..._ms`). Table output shows every such time as RFC 3339
//! in UTC with milliseconds, `2026-12-03T18:41:01.123Z` ([`time_ms`]).
//! JSON output keeps the integers and adds nothing: it prints the API's own
//! documents as the node sent them, so a program reads the same shape from
//! the CLI as from the HTTP API, and an integer converts without parsing.
//!
//! Stderr. Progress and advice go to stderr through [`note`]. When the command
//! asked for JSON ([`set_json_stderr`], called once by `main`), every line on
//! stderr is a JSON object: `{"note": "..."}` for a note and, last,
//! `{"errors": ["..."]}` when the command fails ([`error`]), so `jq` reads
//! stderr as it reads stdout. Otherwise notes print as text and an error as
//! `Error: ...`, escaped with [`shown_lines`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// `ms` (milliseconds since the Unix epoch) as RFC 3339 in UTC with
/// milliseconds: `2026-12-03T18:41:01.123Z`.
pub fn time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// [`time_ms`] of a time that may be unset, `-` when it is.
pub fn time_ms_or_dash(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_string(), time_ms)
}

/// Whether stderr carries JSON lines: set once by `main` when the command asked for `-o json`.
static JSON_STDERR: AtomicBool = AtomicBool::new(false);

/// Makes [`note`] and [`error`] write JSON lines (`-o json`) or text.
pub fn set_json_stderr(json: bool) {
    JSON_STDERR.store(json, Ordering::Relaxed);
}

/// Writes a progress or advice line to stderr: text, or `{"note": "..."}`
/// under `-o json`. The text is printed as given: callers escape what others
/// chose with [`shown`], as for stdout.
pub fn note(text: impl fmt::Display) {
    if JSON_STDERR.load(Ordering::Relaxed) {
        eprintln!("{}", serde_json::json!({ "note": text.to_string() }));
    } else {
        eprintln!("{text}");
    }
}

/// Writes a failed command's error to stderr: `{"errors": ["..."]}` under
/// `-o json` (exact), `Error: ...` otherwise (escaped: errors quote the
/// cluster's refusals, which quote what users typed).
pub fn error(message: &str) {
    if JSON_STDERR.load(Ordering::Relaxed) {
        eprintln!("{}", serde_json::json!({ "errors": [message] }));
    } else {
        eprintln!("Error: {}", shown_lines(message));
    }
}

/// `text` as it may be printed on a terminal: see the module documentation.
pub fn shown(text: &str) -> Shown<'_> {
    Shown { text, keep_newlines: false }
}

/// Like [`shown`], but keeps line feeds and tabs (a multi-line error message).
pub fn shown_lines(text: &str) -> Shown<'_> {
    Shown { text, keep_newlines: true }
}

/// Text that prints with its control characters escaped ([`shown`]).
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a> {
    /// The text as the cluster or the user gave it.
    text: &'a str,
    /// Whether `\n` and `\t` print as themselves (multi-line messages).
    keep_newlines: bool,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        if !self.text.chars().any(|c| c == '\\' || escaped(c)) {
            // Padding (`{:<24}`) applies to the plain text only.
            return f.pad(self.text);
        }
        let mut out = String::with_capacity(self.text.len() + 8);
        for c in self.text.chars() {
            match c {
                '\n' | '\t' if self.keep_newlines => out.push(c),
                '\\' => out.push_str("\\\\"),
                c if escaped(c) => write!(out, "\\u{{{:x}}}", c as u32)?,
                c => out.push(c),
            }
        }
        f.pad(&out)
    }
}

/// Whether `c` changes what a terminal shows instead of being shown: C0, DEL,
/// C1, the bidirectional controls, and invisible separators and joiners.
fn escaped(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{61c}'                    // Arabic letter mark
        | '\u{200b}'..='\u{200f}'      // zero-width space/joiners, LRM, RLM
        | '\u{2028}'..='\u{202e}'      // line/paragraph separators, LRE RLE PDF LRO RLO
        | '\u{2060}'..='\u{2069}'      // word joiner, invisible operators, LRI RLI FSI PDI
        | '\u{feff}'                   // zero-width no-break space
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_escapes_controls_bidi_and_backslashes_only() {
        // Proves that escape sequences, C1, bidi overrides and backslashes print escaped, and other text as given.
        assert_eq!(shown("\x1b[2Jpay").to_string(), "\\u{1b}[2Jpay");
        assert_eq!(shown("abc\u{202e}gpj.exe").to_string(), "abc\\u{202e}gpj.exe");
        assert_eq!(shown("\u{9b}31m\u{7f}").to_string(), "\\u{9b}31m\\u{7f}");
        assert_eq!(shown("a\\u{1b}").to_string(), "a\\\\u{1b}");
        assert_eq!(shown("Zürich 5 000 € — ok").to_string(), "Zürich 5 000 € — ok");
        assert_eq!(shown("a\nb").to_string(), "a\\u{a}b");
        assert_eq!(shown_lines("a\n\tb\r").to_string(), "a\n\tb\\u{d}");
        assert_eq!(format!("[{:<5}]", shown("ab")), "[ab   ]");
    }

    #[test]
    fn display_times_are_rfc3339_utc_with_milliseconds() {
        // Proves that epoch milliseconds print as RFC 3339 in UTC, milliseconds kept.
        assert_eq!(time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time_ms(1_796_323_261_123), "2026-12-03T18:41:01.123Z");
        assert_eq!(time_ms_or_dash(None), "-");
    }
}
