//! Showing text that others chose (request ids, purposes, attributes,
//! operator and key names, refusal reasons) on an operator's terminal.
//!
//! Such text has only a length limit, so it can hold terminal escape
//! sequences (`ESC [ 2 J` clears the screen and can draw a different request
//! in its place) or bidirectional overrides (U+202E shows `exe.txt` as
//! `txt.exe`). Every table printer of the CLI passes such text through
//! [`shown`], which writes the C0 controls, DEL, the C1 controls, the bidi
//! controls and the invisible separators as `\u{..}` escapes, and a backslash
//! as `\\`, so what the terminal shows is what the cluster holds, and an
//! escape in the data cannot pass for one the CLI made. JSON output
//! (`-o json`) is data for programs and is left exact (serde_json escapes the
//! C0 controls in it).

use std::fmt;

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
}
