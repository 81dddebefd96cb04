//! RFC 9421 HTTP message signatures: the signature base (section 2.5), which is
//! exactly what the `ed25519` algorithm signs (section 3.3.6).
//!
//! A base is one line per covered component, `"name": value`, then the line
//! `"@signature-params": (...)params`, joined by line feeds with none after the
//! last. A node reads it strictly, as a verifier rebuilds it: every component line
//! names a lowercase component identifier without parameters, no component twice,
//! no control character anywhere, and the final line's inner list names exactly the
//! component lines, in their order. The signature parameters are read as RFC 8941
//! parameters (integers or strings, each once); `alg`, when present, is `ed25519`.
//!
//! The artifact hash is the body's digest as the covered `content-digest` line
//! states it (RFC 9530: `sha-256` or `sha-512`); the summary is the request line,
//! `POST https://…`, from `@method` and `@target-uri`.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{hash_label, Inspection};

/// The most components one signature base may cover.
pub const COMPONENTS_MAX: usize = 64;

/// The `alg` parameter of an Ed25519 signature (RFC 9421 section 6.2.2).
pub const ALG: &str = "ed25519";

/// A signature base as a node read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureBase {
    /// The covered components, in order: (identifier without quotes, value).
    pub components: Vec<(String, String)>,
    /// The signature parameters: (name, value as serialized: `1618884473` or `"text"`).
    pub params: Vec<(String, String)>,
    /// The value of the `@signature-params` line: the inner list and its parameters.
    pub signature_params: String,
}

impl SignatureBase {
    /// The value of a covered component.
    pub fn component(&self, name: &str) -> Option<&str> {
        self.components.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A string parameter's value without its quotes.
    pub fn string_param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.strip_prefix('"')?.strip_suffix('"'))
    }
}

/// The signature parameters `("name" ...);created=…;keyid="…";alg="ed25519"`: the value of
/// a `Signature-Input` member and of the base's last line.
pub fn signature_params(names: &[&str], created_s: u64, keyid: &str) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("({});created={created_s};keyid=\"{keyid}\";alg=\"{ALG}\"", quoted.join(" "))
}

/// The signature base (section 2.5) of `components` (identifier, value), in order, under
/// `params`, checked by [`read`] as every verifier rebuilds it: what a signer signs, the one
/// builder both the CLI and a node's webhook sender use.
pub fn signature_base(components: &[(&str, &str)], params: &str) -> Result<String, String> {
    let mut base = String::new();
    for (name, value) in components {
        base.push_str(&format!("\"{name}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    read(base.as_bytes())?;
    Ok(base)
}

/// Reads the format's to-be-signed bytes.
pub fn inspect(message: &[u8]) -> Result<Inspection, String> {
    let base = read(message)?;
    let artifact_hash = match base.component("content-digest") {
        Some(value) => Some(content_digest_hash(value)?),
        None => None,
    };
    let summary =
        [base.component("@method"), base.component("@target-uri")].into_iter().flatten().collect::<Vec<_>>().join(" ");
    Ok(Inspection { artifact_hash, namespace: None, opaque: false, summary })
}

/// Reads and checks a signature base (see the module documentation for what is refused).
pub fn read(message: &[u8]) -> Result<SignatureBase, String> {
    if let Some(at) = message.iter().position(|b| *b != b'\n' && !(0x20..0x7f).contains(b)) {
        return Err(format!(
            "byte {at} is {:#04x}; a signature base is printable ASCII lines (a header value with control \
             or non-ASCII characters cannot be signed)",
            message[at]
        ));
    }
    // Checked ASCII above, so this cannot fail.
    let text = std::str::from_utf8(message).map_err(|e| e.to_string())?;
    let mut lines: Vec<&str> = text.split('\n').collect();
    let last = lines.pop().unwrap_or_default();
    if lines.len() > COMPONENTS_MAX {
        return Err(format!("it covers {} components; the limit is {COMPONENTS_MAX}", lines.len()));
    }
    let mut components = Vec::with_capacity(lines.len());
    let mut seen = BTreeSet::new();
    for (index, line) in lines.iter().enumerate() {
        let (name, value) = component_line(line).map_err(|why| format!("line {}: {why}", index + 1))?;
        if name == "@signature-params" {
            return Err(format!("line {}: \"@signature-params\" must be the last line and only there", index + 1));
        }
        if !seen.insert(name) {
            return Err(format!("line {}: component \"{name}\" is covered twice", index + 1));
        }
        components.push((name.to_string(), value.to_string()));
    }
    let signature_params = last.strip_prefix("\"@signature-params\": ").ok_or(
        "the last line is not \"@signature-params\": (...); a signature base ends with the signature parameters",
    )?;
    let (listed, params) = inner_list(signature_params)?;
    let covered: Vec<&str> = components.iter().map(|(n, _)| n.as_str()).collect();
    if listed != covered {
        return Err(format!(
            "the signature parameters list ({}) but the lines cover ({}); they must name the same components in \
             the same order",
            listed.join(" "),
            covered.join(" ")
        ));
    }
    Ok(SignatureBase { components, params, signature_params: signature_params.to_string() })
}

/// `"name": value` with a lowercase identifier and no component parameters.
fn component_line(line: &str) -> Result<(&str, &str), String> {
    let rest = line.strip_prefix('"').ok_or("a component line starts with a quoted name")?;
    let (name, value) = rest.split_once("\": ").ok_or("a component line is \"name\": value")?;
    check_name(name)?;
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(format!("the value of \"{name}\" has space around it; field values are trimmed"));
    }
    Ok((name, value))
}

/// A field name (an RFC 9110 token in lowercase) or a derived component (`@` and one).
fn check_name(name: &str) -> Result<(), String> {
    let bare = name.strip_prefix('@').unwrap_or(name);
    let token = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    if bare.is_empty() || !bare.bytes().all(token) {
        return Err(format!(
            "component {name:?} is not a lowercase field name or derived component (parameters like ;sf are \
             not read)"
        ));
    }
    Ok(())
}

/// `("a" "b");created=1;keyid="k"`: the listed identifiers and the parameters.
#[allow(clippy::type_complexity)]
fn inner_list(text: &str) -> Result<(Vec<&str>, Vec<(String, String)>), String> {
    let rest = text.strip_prefix('(').ok_or("the signature parameters do not start with an inner list '('")?;
    let (list, mut rest) = rest.split_once(')').ok_or("the signature parameters' inner list has no ')'")?;
    let mut names = Vec::new();
    if !list.is_empty() {
        for item in list.split(' ') {
            let name = item
                .strip_prefix('"')
                .and_then(|i| i.strip_suffix('"'))
                .filter(|n| !n.contains('"'))
                .ok_or_else(|| format!("inner list item {item:?} is not one quoted component name"))?;
            names.push(name);
        }
    }
    let mut params: Vec<(String, String)> = Vec::new();
    while !rest.is_empty() {
        let param = rest.strip_prefix(';').ok_or("the signature parameters are ;name=value after the list")?;
        let end = param.find(';').unwrap_or(param.len());
        let (pair, tail) = param.split_at(end);
        let (name, value) = pair.split_once('=').ok_or_else(|| format!("parameter {pair:?} has no value"))?;
        check_param(name, value)?;
        if params.iter().any(|(n, _)| n == name) {
            return Err(format!("parameter {name} appears twice"));
        }
        params.push((name.to_string(), value.to_string()));
        rest = tail;
    }
    if let Some((_, alg)) = params.iter().find(|(n, _)| n == "alg") {
        if alg != &format!("\"{ALG}\"") {
            return Err(format!("the alg parameter is {alg}; the cluster signs only \"{ALG}\""));
        }
    }
    Ok((names, params))
}

/// An RFC 8941 key with an integer or a string (no ';' inside, which the split above relies on).
fn check_param(name: &str, value: &str) -> Result<(), String> {
    let key_ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
    if !key_ok {
        return Err(format!("parameter name {name:?} is not a lowercase key"));
    }
    let integer = !value.is_empty()
        && value.len() <= 16
        && value.strip_prefix('-').unwrap_or(value).bytes().all(|b| b.is_ascii_digit());
    let string = value.len() >= 2
        && value.starts_with('"')
        && value.ends_with('"')
        && !value[1..value.len() - 1].bytes().any(|b| b == b'"' || b == b'\\');
    if !(integer || string) {
        return Err(format!("parameter {name}'s value {value:?} is neither an integer nor a plain quoted string"));
    }
    Ok(())
}

/// The artifact hash a `content-digest` value states: its `sha-256` member, else its `sha-512`.
fn content_digest_hash(value: &str) -> Result<String, String> {
    let mut found: Vec<(&str, Vec<u8>)> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches(' ');
        let (name, encoded) =
            member.split_once('=').ok_or_else(|| format!("content-digest member {member:?} is not alg=:base64:"))?;
        let bytes = encoded
            .strip_prefix(':')
            .and_then(|e| e.strip_suffix(':'))
            .and_then(|e| STANDARD.decode(e).ok())
            .ok_or_else(|| format!("content-digest member {name} is not a byte sequence :base64:"))?;
        if found.iter().any(|(n, _)| *n == name) {
            return Err(format!("content-digest names {name} twice"));
        }
        found.push((name, bytes));
    }
    for (name, label, length) in [("sha-256", "sha256", 32), ("sha-512", "sha512", 64)] {
        if let Some((_, digest)) = found.iter().find(|(n, _)| *n == name) {
            if digest.len() != length {
                return Err(format!("content-digest {name} is {} bytes; it is {length}", digest.len()));
            }
            return Ok(hash_label(label, digest));
        }
    }
    Err("content-digest has neither sha-256 nor sha-512; sign the body's sha-256 (RFC 9530)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9421 appendix B.2.6's signature base (Ed25519), which the RFC signs with its
    /// test-key-ed25519.
    const RFC9421_B26: &str = concat!(
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
        "\"@method\": POST\n",
        "\"@path\": /foo\n",
        "\"@authority\": example.com\n",
        "\"content-type\": application/json\n",
        "\"content-length\": 18\n",
        "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\")",
        ";created=1618884473;keyid=\"test-key-ed25519\""
    );

    fn base(digest: &str) -> String {
        format!(
            "\"@method\": POST\n\"@target-uri\": https://example.com/foo?param=Value&Pet=dog\n\
             \"content-digest\": {digest}\n\"x-delivery\": 42\n\
             \"@signature-params\": (\"@method\" \"@target-uri\" \"content-digest\" \"x-delivery\")\
             ;created=1618884473;keyid=\"NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs\";alg=\"ed25519\""
        )
    }

    /// RFC 9530's example: the sha-256 of `{"hello": "world"}`.
    const DIGEST: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";

    #[test]
    fn http_signature_reads_the_rfc_base_and_the_content_digest() {
        let read = inspect(RFC9421_B26.as_bytes()).unwrap();
        assert_eq!(read.summary, "POST");
        assert_eq!(read.artifact_hash, None);
        let read = inspect(base(DIGEST).as_bytes()).unwrap();
        assert_eq!(read.summary, "POST https://example.com/foo?param=Value&Pet=dog");
        assert_eq!(
            read.artifact_hash.as_deref(),
            Some("sha256:5f8f04f6a3a892aaabbddb6cf273894493773960d4a325b105fee46eef4304f1")
        );
        let parsed = read_base(&base(DIGEST));
        assert_eq!(parsed.string_param("alg"), Some("ed25519"));
        assert_eq!(parsed.component("x-delivery"), Some("42"));
        let both = format!("sha-512=:{}:, {}", STANDARD.encode([7u8; 64]), DIGEST);
        assert!(inspect(base(&both).as_bytes()).unwrap().artifact_hash.unwrap().starts_with("sha256:5f8f"));
        let sha512 = format!("sha-512=:{}:", STANDARD.encode([7u8; 64]));
        assert_eq!(inspect(base(&sha512).as_bytes()).unwrap().artifact_hash, Some(hash_label("sha512", &[7u8; 64])));
        // No components at all is a base too (it signs only the parameters).
        assert!(inspect(b"\"@signature-params\": ();created=1").is_ok());
    }

    #[test]
    fn http_signature_base_builder_makes_what_the_reader_reads() {
        let names = ["@method", "@target-uri", "content-digest", "x-delivery"];
        let params = signature_params(&names, 1618884473, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        let values = ["POST", "https://example.com/foo?param=Value&Pet=dog", DIGEST, "42"];
        let components: Vec<(&str, &str)> = names.into_iter().zip(values).collect();
        assert_eq!(signature_base(&components, &params).unwrap(), base(DIGEST));
        assert!(signature_base(&[("x-a", "1\t")], "(\"x-a\")").is_err());
        assert!(signature_base(&[("x-a", "1")], "(\"x-b\")").unwrap_err().contains("same components"));
    }

    fn read_base(text: &str) -> SignatureBase {
        read(text.as_bytes()).unwrap()
    }

    #[test]
    fn http_signature_refuses_malformed_bases() {
        let good = base(DIGEST);
        let params_line = good.lines().last().unwrap().to_string();
        for (message, why) in [
            (String::new(), "last line"),
            (good.replace("\"@signature-params\": ", "\"@signature-param\": "), "last line"),
            (format!("{good}\n"), "last line"),
            (good.replace("\"x-delivery\": 42\n", ""), "same components"),
            (good.replace(" \"x-delivery\")", ")"), "same components"),
            (good.replace("\"x-delivery\": 42", "\"X-Delivery\": 42"), "lowercase"),
            (good.replace("\"x-delivery\": 42", "\"x-delivery\";sf: 42"), "\"name\": value"),
            (good.replace("\"x-delivery\": 42", "\"x-delivery\":42"), "\"name\": value"),
            (good.replace("\"x-delivery\": 42", "\"x-delivery\":  42"), "space around"),
            (good.replace("\"x-delivery\": 42", "\"x-delivery\": 4\t2"), "0x09"),
            (good.replace("\"x-delivery\": 42", "\"x-delivery\": 4\r2"), "0x0d"),
            (good.replace("\"x-delivery\": 42", "\"x-delivery\": \u{e9}"), "0xc3"),
            (good.replace("\"x-delivery\": 42", "\"@method\": GET"), "twice"),
            (good.replace("\"x-delivery\": 42", &params_line), "last line and only"),
            (good.replace("alg=\"ed25519\"", "alg=\"rsa-pss-sha512\""), "alg"),
            (good.replace(";created=1618884473", ";created=1618884473;created=1"), "twice"),
            (good.replace(";created=1618884473", ";created=16.5"), "neither"),
            (good.replace(";created=1618884473", ";Created=1"), "lowercase key"),
            (good.replace(";created=1618884473", ";created"), "no value"),
            (good.replace(";created=1618884473", "x"), ";name=value"),
            (good.replace("(\"@method\"", "\"@method\""), "inner list"),
            (good.replace("\" \"x-delivery\")", "\"  \"x-delivery\")"), "quoted"),
            (good.replace(DIGEST, "sha-256=:AAAA:"), "32"),
            (good.replace(DIGEST, "sha-256=X48E"), "byte sequence"),
            (good.replace(DIGEST, "md5=:AAAA:"), "neither sha-256"),
            (good.replace(DIGEST, &format!("{DIGEST}, {DIGEST}")), "twice"),
            (good.replace(DIGEST, "nothing"), "alg=:base64:"),
        ] {
            let error = inspect(message.as_bytes()).unwrap_err();
            assert!(error.contains(why), "{message:?}: {error}");
        }
    }

    #[test]
    fn http_signature_bounds_components_and_hostile_sizes() {
        let mut lines = String::new();
        let mut names = Vec::new();
        for i in 0..=COMPONENTS_MAX {
            lines.push_str(&format!("\"x-{i}\": v\n"));
            names.push(format!("\"x-{i}\""));
        }
        let many = format!("{lines}\"@signature-params\": ({})", names.join(" "));
        assert!(inspect(many.as_bytes()).unwrap_err().contains("limit"));
        let long = format!("\"@signature-params\": ({})", "\"a\" ".repeat(16_000));
        assert!(inspect(long.as_bytes()).is_err());
        assert!(inspect(&[b'"'; 65_536]).is_err());
        assert!(inspect(&[b'\n'; 65_536]).is_err());
    }
}
