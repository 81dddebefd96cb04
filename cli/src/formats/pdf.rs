//! `synod seal`: a PAdES signature (ETSI EN 319 142-1, B-B level) added to a PDF
//! as an incremental update, so the original bytes stay as they were.
//!
//! The update adds a signature dictionary (`/Filter /Adobe.PPKLite /SubFilter
//! /ETSI.CAdES.detached`) whose `/ByteRange` covers the whole file but its own
//! `/Contents`, a signature field that is also the widget annotation on page 1,
//! an AcroForm with `/SigFlags 3`, and a new cross-reference section whose
//! trailer points at the previous one (`/Prev`). The `/Contents` is a detached
//! CMS over the byte ranges, built as for `synod sign --format cms` but with no
//! signing-time attribute (PAdES puts the claimed time in `/M`).
//!
//! The reader here is only what sealing needs: the last cross-reference table
//! and its predecessors, the trailer, the catalog, the page tree down to the
//! first page, and the AcroForm. It reads classic cross-reference tables;
//! a PDF with cross-reference streams is refused with the way to rewrite it.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{anyhow, bail, Context};
use sha2::{Digest, Sha512};

use super::cms::{
    check_certificate, read_certificate, signed_attributes, signed_data, signer, AttributeOptions, SealArgs,
};
use crate::display::{note, shown};
use crate::Output;

/// The largest PDF sealed, in bytes (it is read into memory).
const PDF_BYTES_MAX: u64 = 512 << 20;
/// The room reserved for the CMS in `/Contents`, in bytes (a seal with one
/// certificate takes about 1 KiB; a certificate chain fits too).
const CONTENTS_BYTES_MAX: usize = 16 * 1024;
/// How deeply PDF arrays and dictionaries may nest.
const DEPTH_MAX: usize = 64;
/// How many cross-reference sections are followed through `/Prev`.
const SECTIONS_MAX: usize = 256;
/// How many page-tree levels are walked down to the first page.
const PAGE_TREE_DEPTH_MAX: usize = 32;
/// The width the `/ByteRange` numbers are padded to, so they can be filled in place.
const RANGE_DIGITS: usize = 12;

/// A PDF object, as much as sealing needs: every token that is not a container
/// or a reference is kept as its bytes, so objects are written back unchanged.
#[derive(Clone, Debug, PartialEq)]
enum Obj {
    Dict(Vec<(Vec<u8>, Obj)>),
    Array(Vec<Obj>),
    Ref(u32, u16),
    /// A name (with its `/`), number, string (with its delimiters), boolean or null.
    Raw(Vec<u8>),
}

impl Obj {
    fn get(&self, key: &str) -> Option<&Obj> {
        match self {
            Obj::Dict(entries) => entries.iter().find(|(k, _)| k == format!("/{key}").as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: Obj) {
        if let Obj::Dict(entries) = self {
            let key = format!("/{key}").into_bytes();
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value,
                None => entries.push((key, value)),
            }
        }
    }

    fn is_name(&self, name: &str) -> bool {
        matches!(self, Obj::Raw(bytes) if bytes == format!("/{name}").as_bytes())
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Obj::Dict(entries) => {
                out.extend_from_slice(b"<<");
                for (key, value) in entries {
                    out.extend_from_slice(key);
                    out.push(b' ');
                    value.write(out);
                    out.push(b' ');
                }
                out.extend_from_slice(b">>");
            }
            Obj::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Obj::Ref(number, generation) => out.extend_from_slice(format!("{number} {generation} R").as_bytes()),
            Obj::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b'\0' | b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%')
}

/// Reads PDF tokens and objects from one position of the file.
struct Lexer<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn at(bytes: &'a [u8], pos: usize) -> Self {
        Lexer { bytes, pos }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b) = self.peek() {
            if is_space(b) {
                self.pos += 1;
            } else if b == b'%' {
                while self.peek().is_some_and(|b| b != b'\n' && b != b'\r') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// A run of regular characters (a number or a keyword).
    fn token(&mut self) -> &'a [u8] {
        self.skip_space();
        self.pos = self.pos.min(self.bytes.len());
        let start = self.pos;
        while self.peek().is_some_and(|b| !is_space(b) && !is_delimiter(b)) {
            self.pos += 1;
        }
        &self.bytes[start..self.pos]
    }

    fn number<T: std::str::FromStr>(&mut self, what: &str) -> anyhow::Result<T> {
        let at = self.pos;
        let token = self.token();
        std::str::from_utf8(token)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow!("expected {what} at byte {at} of the PDF"))
    }

    fn keyword(&mut self, keyword: &str) -> anyhow::Result<()> {
        let at = self.pos;
        if self.token() != keyword.as_bytes() {
            bail!("expected `{keyword}` at byte {at} of the PDF");
        }
        Ok(())
    }

    fn object(&mut self, depth: usize) -> anyhow::Result<Obj> {
        if depth > DEPTH_MAX {
            bail!("PDF objects nest more than {DEPTH_MAX} deep");
        }
        self.skip_space();
        let start = self.pos;
        let first = self.peek().ok_or_else(|| anyhow!("the PDF ends inside an object"))?;
        match first {
            b'<' if self.bytes.get(self.pos + 1) == Some(&b'<') => {
                self.pos += 2;
                let mut entries = Vec::new();
                loop {
                    self.skip_space();
                    if self.bytes[self.pos..].starts_with(b">>") {
                        self.pos += 2;
                        return Ok(Obj::Dict(entries));
                    }
                    let key = match self.object(depth + 1)? {
                        Obj::Raw(key) if key.first() == Some(&b'/') => key,
                        _ => bail!("a PDF dictionary key at byte {} is not a name", self.pos),
                    };
                    let value = self.object(depth + 1)?;
                    entries.push((key, value));
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_space();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        return Ok(Obj::Array(items));
                    }
                    items.push(self.object(depth + 1)?);
                }
            }
            b'<' => {
                let end = self.bytes[self.pos..]
                    .iter()
                    .position(|&b| b == b'>')
                    .ok_or_else(|| anyhow!("a PDF hex string at byte {start} does not end"))?;
                self.pos += end + 1;
                Ok(Obj::Raw(self.bytes[start..self.pos].to_vec()))
            }
            b'(' => {
                self.literal_string()?;
                Ok(Obj::Raw(self.bytes[start..self.pos].to_vec()))
            }
            b'/' => {
                self.pos += 1;
                while self.peek().is_some_and(|b| !is_space(b) && !is_delimiter(b)) {
                    self.pos += 1;
                }
                Ok(Obj::Raw(self.bytes[start..self.pos].to_vec()))
            }
            _ => {
                let token = self.token();
                if token.is_empty() {
                    bail!("unexpected byte {first:#04x} at byte {start} of the PDF");
                }
                // `N G R` is a reference; look ahead without consuming otherwise.
                if let Ok(number) = std::str::from_utf8(token).unwrap_or("").parse::<u32>() {
                    let after = self.pos;
                    let generation = std::str::from_utf8(self.token()).ok().and_then(|t| t.parse::<u16>().ok());
                    if let (Some(generation), b"R") = (generation, self.token()) {
                        return Ok(Obj::Ref(number, generation));
                    }
                    self.pos = after;
                }
                Ok(Obj::Raw(token.to_vec()))
            }
        }
    }

    fn literal_string(&mut self) -> anyhow::Result<()> {
        let start = self.pos;
        let mut open = 0usize;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'\\' => self.pos += 1,
                b'(' => open += 1,
                b')' => {
                    open -= 1;
                    if open == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        bail!("a PDF string at byte {start} does not end")
    }
}

/// The file's objects by number (the newest cross-reference entry of each) and its trailer.
struct Pdf<'a> {
    bytes: &'a [u8],
    offsets: BTreeMap<u32, Option<(usize, u16)>>,
    trailer: Obj,
    last_xref: usize,
}

impl<'a> Pdf<'a> {
    fn read(bytes: &'a [u8]) -> anyhow::Result<Self> {
        let tail_start = bytes.len().saturating_sub(1024);
        let tail = &bytes[tail_start..];
        let at = tail
            .windows(9)
            .rposition(|w| w == b"startxref")
            .ok_or_else(|| anyhow!("no `startxref` near the end: this is not a PDF, or it is truncated"))?;
        let last_xref: usize = Lexer::at(bytes, tail_start + at + 9).number("the cross-reference offset")?;
        let mut pdf = Pdf { bytes, offsets: BTreeMap::new(), trailer: Obj::Dict(vec![]), last_xref };
        let mut next = Some(last_xref);
        let mut seen = Vec::new();
        while let Some(offset) = next {
            if seen.contains(&offset) || seen.len() >= SECTIONS_MAX {
                bail!("the PDF's cross-reference sections loop or exceed {SECTIONS_MAX}");
            }
            seen.push(offset);
            let trailer = pdf.section(offset)?;
            next = match trailer.get("Prev") {
                Some(Obj::Raw(prev)) => Some(
                    std::str::from_utf8(prev).ok().and_then(|p| p.parse().ok()).ok_or_else(|| anyhow!("bad /Prev"))?,
                ),
                _ => None,
            };
            if seen.len() == 1 {
                pdf.trailer = trailer;
            }
        }
        Ok(pdf)
    }

    /// Reads the cross-reference table at `offset` (entries already known from
    /// a newer section win) and returns its trailer.
    fn section(&mut self, offset: usize) -> anyhow::Result<Obj> {
        let mut lexer = Lexer::at(self.bytes, offset);
        if offset >= self.bytes.len() || lexer.token() != b"xref" {
            bail!(
                "the PDF's cross-reference at byte {offset} is not a classic table (a cross-reference stream?); \
                 rewrite it with one, e.g. `qpdf --object-streams=disable --compress-streams=n in.pdf out.pdf`, \
                 and seal that"
            );
        }
        loop {
            lexer.skip_space();
            if self.bytes[lexer.pos..].starts_with(b"trailer") {
                lexer.pos += 7;
                return lexer.object(0);
            }
            let first: u32 = lexer.number("a cross-reference subsection")?;
            let count: usize = lexer.number("a cross-reference subsection's length")?;
            if count > self.bytes.len() / 18 {
                bail!("a cross-reference subsection claims {count} entries, more than the file holds");
            }
            for i in 0..count {
                let object_offset: usize = lexer.number("a cross-reference entry")?;
                let generation: u16 = lexer.number("a cross-reference generation")?;
                let kind = lexer.token();
                let number = first.checked_add(i as u32).ok_or_else(|| anyhow!("object numbers overflow"))?;
                let entry = match kind {
                    b"n" => Some((object_offset, generation)),
                    b"f" => None,
                    _ => bail!("a cross-reference entry near byte {} is neither n nor f", lexer.pos),
                };
                self.offsets.entry(number).or_insert(entry);
            }
        }
    }

    /// The object `number` (its value, without `obj`/`endobj`).
    fn object(&self, number: u32) -> anyhow::Result<Obj> {
        let (offset, generation) = self
            .offsets
            .get(&number)
            .copied()
            .flatten()
            .ok_or_else(|| anyhow!("object {number} is not in the PDF's cross-reference tables"))?;
        let mut lexer = Lexer::at(self.bytes, offset);
        let found: u32 = lexer.number("an object number")?;
        let found_generation: u16 = lexer.number("an object generation")?;
        if found != number || found_generation != generation {
            bail!("the cross-reference entry of object {number} points at object {found} {found_generation}");
        }
        lexer.keyword("obj")?;
        lexer.object(0)
    }

    fn resolve(&self, obj: &Obj) -> anyhow::Result<Obj> {
        match obj {
            Obj::Ref(number, _) => self.object(*number),
            other => Ok(other.clone()),
        }
    }

    fn reference(obj: Option<&Obj>, what: &str) -> anyhow::Result<(u32, u16)> {
        match obj {
            Some(Obj::Ref(number, generation)) => Ok((*number, *generation)),
            _ => bail!("the PDF's {what} is not an indirect reference"),
        }
    }

    /// The first page: down the page tree through the first kid of each node.
    fn first_page(&self, catalog: &Obj) -> anyhow::Result<((u32, u16), Obj)> {
        let mut node_ref = Self::reference(catalog.get("Pages"), "catalog /Pages")?;
        for _ in 0..PAGE_TREE_DEPTH_MAX {
            let node = self.object(node_ref.0)?;
            if node.get("Type").is_some_and(|t| t.is_name("Page")) {
                return Ok((node_ref, node));
            }
            let kids = self.resolve(node.get("Kids").ok_or_else(|| anyhow!("a page tree node has no /Kids"))?)?;
            let Obj::Array(kids) = kids else { bail!("a page tree node's /Kids is not an array") };
            node_ref = Self::reference(kids.first(), "first page")?;
        }
        bail!("the PDF's page tree is deeper than {PAGE_TREE_DEPTH_MAX} levels")
    }
}

/// The update being appended: new and replaced objects, then the new cross-reference section.
struct Update {
    out: Vec<u8>,
    offsets: BTreeMap<u32, (usize, u16)>,
}

impl Update {
    fn object(&mut self, (number, generation): (u32, u16), body: &[u8]) -> usize {
        let offset = self.out.len();
        self.offsets.insert(number, (offset, generation));
        self.out.extend_from_slice(format!("{number} {generation} obj\n").as_bytes());
        let body_at = self.out.len();
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\nendobj\n");
        body_at
    }

    fn finish(&mut self, trailer: &Obj) {
        let xref = self.out.len();
        self.out.extend_from_slice(b"xref\n");
        for (number, (offset, generation)) in &self.offsets {
            self.out.extend_from_slice(format!("{number} 1\n{offset:010} {generation:05} n \n").as_bytes());
        }
        self.out.extend_from_slice(b"trailer\n");
        trailer.write(&mut self.out);
        self.out.extend_from_slice(format!("\nstartxref\n{xref}\n%%EOF\n").as_bytes());
    }
}

/// A PDF literal string of `text`, escaped.
fn pdf_string(text: &str) -> Obj {
    let mut out = vec![b'('];
    for b in text.bytes() {
        if matches!(b, b'(' | b')' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b')');
    Obj::Raw(out)
}

fn raw(text: &str) -> Obj {
    Obj::Raw(text.as_bytes().to_vec())
}

/// The sealed file with a zeroed `/Contents`, and the offsets of the
/// `/Contents` hex string (its `<` and one past its `>`) and of the
/// `/ByteRange` placeholder.
fn prepare(
    bytes: &[u8],
    reason: Option<&str>,
    now: std::time::SystemTime,
) -> anyhow::Result<(Vec<u8>, usize, usize, usize)> {
    let pdf = Pdf::read(bytes)?;
    let root = Pdf::reference(pdf.trailer.get("Root"), "trailer /Root")?;
    let mut catalog = pdf.object(root.0)?;
    let (page_ref, mut page) = pdf.first_page(&catalog)?;
    let size: u32 = match pdf.trailer.get("Size") {
        Some(Obj::Raw(size)) => std::str::from_utf8(size).ok().and_then(|s| s.parse().ok()),
        _ => None,
    }
    .ok_or_else(|| anyhow!("the PDF's trailer has no /Size"))?;
    if pdf.trailer.get("Encrypt").is_some() {
        bail!("the PDF is encrypted; `synod seal` seals unencrypted PDFs (decrypt it first, e.g. `qpdf --decrypt`)");
    }
    let new_size = size.checked_add(3).ok_or_else(|| anyhow!("the PDF's trailer /Size is too large"))?;
    let (sig_ref, field_ref, form_ref) = ((size, 0u16), (size + 1, 0u16), (size + 2, 0u16));

    let mut update = Update { out: bytes.to_vec(), offsets: BTreeMap::new() };
    if !update.out.ends_with(b"\n") {
        update.out.push(b'\n');
    }
    // The signature dictionary, with fixed-width placeholders filled in below.
    let stamp = humantime::format_rfc3339_seconds(now).to_string().replace(['-', ':', 'T', 'Z'], "");
    let placeholder = format!("{:>w$} {:>w$} {:>w$} {:>w$}", 0, 0, 0, 0, w = RANGE_DIGITS);
    let mut sig = Obj::Dict(vec![]);
    sig.set("Type", raw("/Sig"));
    sig.set("Filter", raw("/Adobe.PPKLite"));
    sig.set("SubFilter", raw("/ETSI.CAdES.detached"));
    sig.set("M", pdf_string(&format!("D:{stamp}+00'00'")));
    if let Some(reason) = reason {
        sig.set("Reason", pdf_string(reason));
    }
    sig.set("ByteRange", Obj::Raw(format!("[{placeholder}]").into_bytes()));
    sig.set("Contents", Obj::Raw(format!("<{}>", "0".repeat(CONTENTS_BYTES_MAX * 2)).into_bytes()));
    let mut body = Vec::new();
    sig.write(&mut body);
    let body_at = update.object(sig_ref, &body);
    let find = |needle: &[u8]| body.windows(needle.len()).position(|w| w == needle).map(|p| body_at + p);
    let range_at = find(placeholder.as_bytes()).expect("the placeholder is in the dictionary");
    let contents_at = find(b"/Contents <").expect("the contents are in the dictionary") + "/Contents ".len();
    let contents_end = contents_at + CONTENTS_BYTES_MAX * 2 + 2;

    // The field, merged with its (invisible) widget on page 1.
    let mut field = Obj::Dict(vec![]);
    for (key, value) in
        [("Type", "/Annot"), ("Subtype", "/Widget"), ("FT", "/Sig"), ("F", "132"), ("Rect", "[0 0 0 0]")]
    {
        field.set(key, raw(value));
    }
    field.set("T", pdf_string(&format!("Seal {}", sig_ref.0)));
    field.set("V", Obj::Ref(sig_ref.0, sig_ref.1));
    field.set("P", Obj::Ref(page_ref.0, page_ref.1));
    let mut body = Vec::new();
    field.write(&mut body);
    update.object(field_ref, &body);

    // The AcroForm: the existing one's entries, its fields and ours, and SigFlags 3
    // (signatures exist; append only).
    let mut form = match catalog.get("AcroForm") {
        Some(existing) => pdf.resolve(existing)?,
        None => Obj::Dict(vec![]),
    };
    let mut fields = match form.get("Fields") {
        Some(existing) => match pdf.resolve(existing)? {
            Obj::Array(items) => items,
            _ => bail!("the PDF's AcroForm /Fields is not an array"),
        },
        None => vec![],
    };
    fields.push(Obj::Ref(field_ref.0, field_ref.1));
    form.set("Fields", Obj::Array(fields));
    form.set("SigFlags", raw("3"));
    let mut body = Vec::new();
    form.write(&mut body);
    update.object(form_ref, &body);

    let mut annots = match page.get("Annots") {
        Some(existing) => match pdf.resolve(existing)? {
            Obj::Array(items) => items,
            _ => bail!("the first page's /Annots is not an array"),
        },
        None => vec![],
    };
    annots.push(Obj::Ref(field_ref.0, field_ref.1));
    page.set("Annots", Obj::Array(annots));
    let mut body = Vec::new();
    page.write(&mut body);
    update.object(page_ref, &body);

    catalog.set("AcroForm", Obj::Ref(form_ref.0, form_ref.1));
    let mut body = Vec::new();
    catalog.write(&mut body);
    update.object(root, &body);

    let mut trailer = Obj::Dict(vec![]);
    trailer.set("Size", raw(&new_size.to_string()));
    trailer.set("Root", Obj::Ref(root.0, root.1));
    for key in ["Info", "ID"] {
        if let Some(value) = pdf.trailer.get(key) {
            trailer.set(key, value.clone());
        }
    }
    trailer.set("Prev", raw(&pdf.last_xref.to_string()));
    update.finish(&trailer);
    Ok((update.out, contents_at, contents_end, range_at))
}

/// `synod seal`.
pub async fn seal(args: SealArgs) -> anyhow::Result<()> {
    let len = std::fs::metadata(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?.len();
    if len > PDF_BYTES_MAX {
        bail!("{} is {len} bytes; `synod seal` reads PDFs of at most {PDF_BYTES_MAX} bytes", args.input.display());
    }
    let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    if !bytes.starts_with(b"%PDF-") {
        bail!("{} is not a PDF (it does not start with %PDF-)", args.input.display());
    }
    let cert = read_certificate(&args.cert)?;
    let signer = signer(&args.client, &args.key, &args.wait).await?;
    check_certificate(&cert, &signer)?;
    let (mut out, contents_at, contents_end, range_at) =
        prepare(&bytes, args.reason.as_deref(), std::time::SystemTime::now())
            .with_context(|| format!("cannot seal {}", args.input.display()))?;

    // Everything but the /Contents hex string is signed.
    let ranges = [0, contents_at, contents_end, out.len() - contents_end];
    let filled = ranges.iter().map(|n| format!("{n:>w$}", w = RANGE_DIGITS)).collect::<Vec<_>>().join(" ");
    out[range_at..range_at + filled.len()].copy_from_slice(filled.as_bytes());
    let mut hasher = Sha512::new();
    hasher.update(&out[..contents_at]);
    hasher.update(&out[contents_end..]);
    let digest: [u8; 64] = hasher.finalize().into();

    let attributes = signed_attributes(&digest, &cert, &AttributeOptions { signing_time: false })?;
    let (cms, signed) = signed_data(&signer, &cert, attributes).await?;
    if cms.len() > CONTENTS_BYTES_MAX {
        bail!("the CMS is {} bytes, more than the {CONTENTS_BYTES_MAX} reserved for it", cms.len());
    }
    let hex = hex::encode(&cms);
    out[contents_at + 1..contents_at + 1 + hex.len()].copy_from_slice(hex.as_bytes());

    let mut file = std::fs::File::create(&args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    file.write_all(&out).with_context(|| format!("cannot write {}", args.out.display()))?;
    if args.client.output.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&signed.info)?);
    }
    note(format_args!("sealed PDF (request {}) written to {}", shown(&signed.info.request_id), args.out.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_objects_round_trip_and_references_are_read() {
        let text = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /T (a \\) (b)) /H <0aFF> /N 5 >>";
        let obj = Lexer::at(text, 0).object(0).unwrap();
        assert_eq!(obj.get("Parent"), Some(&Obj::Ref(2, 0)));
        assert_eq!(obj.get("N"), Some(&raw("5")));
        assert!(obj.get("Type").unwrap().is_name("Page"));
        let mut out = Vec::new();
        obj.write(&mut out);
        assert_eq!(out, b"<</Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /T (a \\) (b)) /H <0aFF> /N 5 >>");
    }

    #[test]
    fn pdf_hostile_input_is_an_error() {
        assert!(Lexer::at(&[b'['; 200], 0).object(0).is_err(), "deep nesting");
        assert!(Lexer::at(b"<< /A (open", 0).object(0).is_err());
        assert!(Pdf::read(b"%PDF-1.7\nno cross reference").is_err());
        let error = Pdf::read(b"%PDF-1.7\n1 0 obj <<>> endobj\nstartxref\n9\n%%EOF").err().unwrap().to_string();
        assert!(error.contains("not a classic table"), "{error}");
        assert!(Pdf::read(b"%PDF-1.7\nxref\n0 99999999\ntrailer <<>>\nstartxref\n9\n%%EOF").is_err());
    }
}
