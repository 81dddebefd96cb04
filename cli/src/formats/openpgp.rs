//! OpenPGP (RFC 4880): `synod key openpgp` exports a cluster key as a v4 public
//! key certified by the cluster, and `synod sign --format openpgp` makes a
//! detached signature that `gpgv`, `gpg --verify` and `sqv` check.
//!
//! The key is EdDSA with the Ed25519 curve OID (algorithm 22, what GnuPG 2.2 and
//! every OpenPGP implementation read; RFC 9580's algorithm 27 needs GnuPG 2.4+ or v6
//! keys). EdDSA in OpenPGP signs the hash of the data and the signature's hashed
//! trailer, so the cluster signs exactly that digest, as one request declaring
//! format openpgp (nodes accept only a 32- or 64-byte digest and mark it opaque).
//!
//! The packets are built here rather than with an OpenPGP library: the format
//! needs three packet kinds, one key algorithm and one signature layout, and the
//! libraries that write them pull in dozens of crates for ciphers, compression
//! and algorithms a cluster key never uses.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use sha2::Digest;
use synod_proto::api::KeyInfo;
use synod_proto::format::SignFormat;
use synod_proto::keyfmt::{self, SignatureFormat};

use super::{Candidates, ClusterSigner, Declared};
use crate::client::ApiClient;
use crate::display::{note, shown};
use crate::{ClientArgs, Output, SignArgs, VerifyArgs};

/// Packet tags (RFC 4880 4.3).
const TAG_SIGNATURE: u8 = 2;
const TAG_PUBLIC_KEY: u8 = 6;
const TAG_USER_ID: u8 = 13;
/// EdDSA with a curve OID (RFC 4880bis, "EdDSALegacy" in RFC 9580).
const ALGORITHM_EDDSA: u8 = 22;
/// Ed25519's curve OID, 1.3.6.1.4.1.11591.15.1, as the key packet writes it.
const ED25519_OID: [u8; 9] = [0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01];
/// Hash algorithm ids (RFC 4880 9.4).
const HASH_SHA256: u8 = 8;
const HASH_SHA512: u8 = 10;
/// Signature types (RFC 4880 5.2.1).
const SIGNATURE_BINARY: u8 = 0x00;
const SIGNATURE_TEXT: u8 = 0x01;
const SIGNATURE_POSITIVE_CERTIFICATION: u8 = 0x13;
/// Signature subpacket types (RFC 4880 5.2.3.1; 33 from RFC 9580).
const SUBPACKET_CREATION_TIME: u8 = 2;
const SUBPACKET_ISSUER: u8 = 16;
const SUBPACKET_PREFERRED_HASH: u8 = 21;
const SUBPACKET_KEY_FLAGS: u8 = 27;
const SUBPACKET_ISSUER_FINGERPRINT: u8 = 33;
/// Key flags: this key certifies user ids and signs data.
const KEY_FLAGS_CERTIFY_SIGN: u8 = 0x01 | 0x02;
/// The longest signature file `synod verify` reads: one signature packet is a few hundred bytes.
const SIGNATURE_FILE_BYTES_MAX: u64 = 64 * 1024;
/// The longest User ID `synod key openpgp` certifies.
const USER_ID_BYTES_MAX: usize = 1024;

/// `synod key openpgp`.
#[derive(clap::Args, Debug)]
pub struct OpenpgpKeyArgs {
    /// The cluster key.
    pub name: String,
    /// The User ID the key is certified for, e.g. "Release Team <release@example.com>".
    #[arg(long)]
    pub user_id: String,
    /// The key's creation time, RFC 3339 (2026-01-01T00:00:00Z) or unix seconds. It is part of
    /// the fingerprint, so it is fixed: by default the key version's creation time in the
    /// cluster (`created_at_ms` of `synod key show -o json`). When you override it, pass the
    /// same value to `synod sign --format openpgp --key-created`.
    #[arg(long)]
    pub created: Option<String>,
    /// Export this version of the key instead of its primary.
    #[arg(long)]
    pub key_version: Option<u32>,
    /// Write the armored key here instead of stdout.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// How long to wait for approvals of the self-certification when the key's policy needs
    /// them, in seconds (0: fail at once, naming the request approvers must approve).
    #[arg(long, default_value_t = 0)]
    pub approval_wait_secs: u64,
    /// Why this is signed, recorded with the request.
    #[arg(long)]
    pub purpose: Option<String>,
    /// How long to wait for the signature, in seconds.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `synod key openpgp`: the public key packet, the User ID and a positive
/// certification of both made by the cluster, armored.
pub async fn key(args: OpenpgpKeyArgs) -> anyhow::Result<()> {
    check_user_id(&args.user_id)?;
    let declared = Declared {
        purpose: args.purpose.clone().unwrap_or_else(|| format!("OpenPGP key certification of {}", args.user_id)),
        wait: Duration::from_secs(args.wait_secs),
        approval_wait: Duration::from_secs(args.approval_wait_secs),
        ..Declared::default()
    };
    let signer = ClusterSigner::new(&args.client, &args.name, args.key_version, declared).await?;
    let created = key_created(&signer, args.created.as_deref()).await?;
    let key = PublicKey { created, key: signer.public_key() };
    let now = unix_now()?;
    if args.created.is_some() && created > now {
        bail!("--created is in the future ({created}); OpenPGP tools refuse keys made in the future");
    }
    // A certification never predates its key, even when this machine's clock is
    // behind the cluster's log time the default creation time comes from.
    let now = now.max(created);

    let hashed = hashed_part(
        SIGNATURE_POSITIVE_CERTIFICATION,
        HASH_SHA512,
        &[
            subpacket(SUBPACKET_CREATION_TIME, &now.to_be_bytes()),
            subpacket(SUBPACKET_ISSUER_FINGERPRINT, &key.issuer_fingerprint()),
            subpacket(SUBPACKET_KEY_FLAGS, &[KEY_FLAGS_CERTIFY_SIGN]),
            subpacket(SUBPACKET_PREFERRED_HASH, &[HASH_SHA512, HASH_SHA256]),
        ]
        .concat(),
    )?;
    let digest = certification_digest(&key, &args.user_id, &hashed)?;
    let signed = signer.sign(SignFormat::Openpgp, &digest, None).await?;

    let certification =
        signature_packet(&hashed, &subpacket(SUBPACKET_ISSUER, &key.key_id()), &digest, &signed.signature);
    let transferable =
        [packet(TAG_PUBLIC_KEY, &key.body()), packet(TAG_USER_ID, args.user_id.as_bytes()), certification].concat();
    let armored = armor("PUBLIC KEY BLOCK", &transferable);
    let fingerprint = hex::encode_upper(key.fingerprint());
    if let Some(path) = &args.out {
        std::fs::write(path, &armored).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.client.output.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "name": signer.key().name,
                "key_version": signer.version(),
                "fingerprint": fingerprint,
                "key_id": hex::encode_upper(key.key_id()),
                "created": created,
                "user_id": args.user_id,
                "request_id": signed.info.request_id,
                "public_key": armored,
            }))?
        ),
        Output::Table if args.out.is_none() => print!("{armored}"),
        Output::Table => {}
    }
    if let Some(path) = &args.out {
        note(format_args!(
            "OpenPGP key {fingerprint} ({}) written to {} (certified by request {})",
            shown(&args.user_id),
            path.display(),
            shown(&signed.info.request_id)
        ));
    }
    Ok(())
}

/// `synod sign --format openpgp`: a detached signature of the file (type 0x00,
/// SHA-512), armored unless `--signature-format raw` asks for the binary packet.
pub async fn sign(args: &SignArgs) -> anyhow::Result<()> {
    refuse_other_options(&args.format)?;
    let binary = match args.signature_format {
        None => false,
        Some(SignatureFormat::Raw) => true,
        Some(other) => {
            bail!("an OpenPGP signature is armored (the default) or binary (--signature-format raw), not {other}")
        }
    };
    let signer = ClusterSigner::of(args).await?;
    let created = key_created(&signer, args.format.key_created.as_deref()).await?;
    let key = PublicKey { created, key: signer.public_key() };
    // A signature never predates its key (the clocks of this machine and the cluster may differ).
    let now = unix_now()?.max(created);

    let hashed = binary_hashed_part(&key, now, HASH_SHA512)?;
    let mut hasher = Hasher::new(HASH_SHA512)?;
    hash_file(&mut hasher, &args.input)?;
    let digest = hasher.finish(&hashed);
    let signed = signer.sign(SignFormat::Openpgp, &digest, None).await?;

    let packet = signature_packet(&hashed, &subpacket(SUBPACKET_ISSUER, &key.key_id()), &digest, &signed.signature);
    let armored = armor("SIGNATURE", &packet);
    let artifact: &[u8] = if binary { &packet } else { armored.as_bytes() };
    if let Some(path) = &args.out {
        std::fs::write(path, artifact).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.client.output.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "format": SignFormat::Openpgp,
                "request_id": signed.info.request_id,
                "key_version": signer.version(),
                "fingerprint": hex::encode_upper(key.fingerprint()),
                "hash": "sha512",
                "signature": armored,
            }))?
        ),
        Output::Table if args.out.is_none() => {
            use std::io::Write;
            std::io::stdout().write_all(artifact)?;
        }
        Output::Table => {}
    }
    if let Some(path) = &args.out {
        note(format_args!(
            "OpenPGP signature for request {} written to {}",
            shown(&signed.info.request_id),
            path.display()
        ));
    }
    Ok(())
}

/// `synod verify --format openpgp`: checks a detached binary-document
/// signature (armored or binary) of the file against the candidates.
pub fn verify(args: &VerifyArgs, candidates: &Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    refuse_other_options(&args.format)?;
    let path = args.signature.as_deref().ok_or_else(|| anyhow!("name the signature file with --signature FILE.asc"))?;
    let bytes = read_bounded(path)?;
    let packet = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes
    } else {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| anyhow!("{} is neither an armored nor a binary OpenPGP signature", path.display()))?;
        dearmor(text, "SIGNATURE").with_context(|| format!("cannot read {}", path.display()))?
    };
    let signature = Signature::parse(&packet).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Hasher::new(signature.hash)?;
    hash_file(&mut hasher, &args.input)?;
    let digest = hasher.finish(&signature.hashed);
    if digest[..2] != signature.left16 {
        bail!("the signature does not match {}: the file or the signature was changed", args.input.display());
    }
    candidates
        .iter()
        .find(|(_, public)| keyfmt::verify(public, &digest, &signature.signature).is_ok())
        .copied()
        .ok_or_else(|| match candidates.len() {
            1 => anyhow!("the signature does not verify with this public key"),
            n => anyhow!("the signature verifies with none of the key's {n} versions"),
        })
}

/// The options of other formats mean nothing here: refused rather than ignored.
fn refuse_other_options(format: &super::args::FormatArgs) -> anyhow::Result<()> {
    format.refuse_others(&["--key-created"])
}

fn check_user_id(user_id: &str) -> anyhow::Result<()> {
    if user_id.trim().is_empty() || user_id.len() > USER_ID_BYTES_MAX || user_id.chars().any(char::is_control) {
        bail!(
            "--user-id must be one line of at most {USER_ID_BYTES_MAX} printable bytes, e.g. \"Release Team <release@example.com>\""
        );
    }
    Ok(())
}

/// The key creation time (unix seconds) the key packet and fingerprint use:
/// `explicit`, or the signing version's creation time in the cluster.
async fn key_created(signer: &ClusterSigner, explicit: Option<&str>) -> anyhow::Result<u32> {
    if let Some(text) = explicit {
        return parse_time(text);
    }
    let key = signer.key();
    let created_at_ms = if signer.version() == key.version {
        key.created_at_ms
    } else {
        // Another version: its own record, looked up by its id.
        let id = key
            .versions
            .iter()
            .find(|v| v.version == signer.version())
            .map(|v| v.id.clone())
            .ok_or_else(|| anyhow!("key {} has no version {}", shown(&key.name), signer.version()))?;
        let (_, version): (u16, KeyInfo) = ApiClient::new(signer.client())?.get(&format!("/v1/keys/{id}")).await?;
        if version.version != signer.version() {
            bail!(
                "the cluster did not return version {} of key {}; pass its creation time with --key-created",
                signer.version(),
                shown(&key.name)
            );
        }
        version.created_at_ms
    };
    u32::try_from(created_at_ms / 1000).map_err(|_| anyhow!("the key's creation time does not fit OpenPGP's 32 bits"))
}

/// RFC 3339 or unix seconds, as OpenPGP's 32-bit time.
fn parse_time(text: &str) -> anyhow::Result<u32> {
    let seconds = match text.parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) => humantime::parse_rfc3339_weak(text)
            .map_err(|_| anyhow!("{text:?} is not a time: give RFC 3339 (2026-01-01T00:00:00Z) or unix seconds"))?
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow!("{text:?} is before 1970"))?
            .as_secs(),
    };
    u32::try_from(seconds).map_err(|_| anyhow!("{text:?} is after 2106, past OpenPGP's 32-bit times"))
}

fn unix_now() -> anyhow::Result<u32> {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|_| anyhow!("the clock is before 1970"))?;
    u32::try_from(seconds.as_secs()).map_err(|_| anyhow!("the clock is past OpenPGP's 32-bit times"))
}

fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > SIGNATURE_FILE_BYTES_MAX {
        bail!("{} is {len} bytes, too long for one OpenPGP signature; is it the signature file?", path.display());
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn hash_file(hasher: &mut Hasher, path: &Path) -> anyhow::Result<()> {
    super::read_in_pieces(path, |piece| hasher.update(piece))
}

/// The two hashes an EdDSA signature here may use.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: u8) -> anyhow::Result<Self> {
        match algorithm {
            HASH_SHA256 => Ok(Hasher::Sha256(sha2::Sha256::new())),
            HASH_SHA512 => Ok(Hasher::Sha512(sha2::Sha512::new())),
            other => bail!("the signature uses hash algorithm {other}; synod reads SHA-256 (8) and SHA-512 (10)"),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest a v4 signature signs: what was hashed so far, then the
    /// signature's hashed part and trailer (RFC 4880 5.2.4).
    fn finish(mut self, hashed: &[u8]) -> Vec<u8> {
        self.update(hashed);
        self.update(&trailer(hashed));
        match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// A v4 EdDSA (Ed25519) public key.
struct PublicKey {
    /// Unix seconds; part of the fingerprint.
    created: u32,
    key: [u8; 32],
}

impl PublicKey {
    /// The public-key packet's body (RFC 4880 5.5.2): version, time, algorithm,
    /// curve OID, and the point as an MPI with the 0x40 native-encoding prefix.
    fn body(&self) -> Vec<u8> {
        let mut body = vec![4];
        body.extend_from_slice(&self.created.to_be_bytes());
        body.push(ALGORITHM_EDDSA);
        body.push(ED25519_OID.len() as u8);
        body.extend_from_slice(&ED25519_OID);
        body.extend_from_slice(&mpi(&[&[0x40u8][..], &self.key].concat()));
        body
    }

    /// What fingerprints and certifications hash the key as (RFC 4880 12.2).
    fn hash_prefix(&self) -> Vec<u8> {
        let body = self.body();
        [&[0x99u8][..], &(body.len() as u16).to_be_bytes(), &body].concat()
    }

    fn fingerprint(&self) -> [u8; 20] {
        use sha1::Digest as _;
        sha1::Sha1::digest(self.hash_prefix()).into()
    }

    /// The issuer fingerprint subpacket's data: key version, then the fingerprint.
    fn issuer_fingerprint(&self) -> Vec<u8> {
        [&[4u8][..], &self.fingerprint()].concat()
    }

    fn key_id(&self) -> [u8; 8] {
        let fingerprint = self.fingerprint();
        fingerprint[12..].try_into().expect("8 bytes")
    }
}

/// A binary-document signature's hashed part: made at `now` by `key`.
fn binary_hashed_part(key: &PublicKey, now: u32, hash: u8) -> anyhow::Result<Vec<u8>> {
    let subpackets = [
        subpacket(SUBPACKET_CREATION_TIME, &now.to_be_bytes()),
        subpacket(SUBPACKET_ISSUER_FINGERPRINT, &key.issuer_fingerprint()),
    ];
    hashed_part(SIGNATURE_BINARY, hash, &subpackets.concat())
}

/// The digest a certification of `user_id` on `key` signs (RFC 4880 5.2.4).
fn certification_digest(key: &PublicKey, user_id: &str, hashed: &[u8]) -> anyhow::Result<Vec<u8>> {
    let user_id_len = u32::try_from(user_id.len()).map_err(|_| anyhow!("the User ID is too long"))?;
    let mut hasher = Hasher::new(HASH_SHA512)?;
    hasher.update(&key.hash_prefix());
    hasher.update(&[0xb4]);
    hasher.update(&user_id_len.to_be_bytes());
    hasher.update(user_id.as_bytes());
    Ok(hasher.finish(hashed))
}

/// A v4 signature's hashed part: version, type, algorithm, hash, and the hashed subpackets.
fn hashed_part(signature_type: u8, hash: u8, subpackets: &[u8]) -> anyhow::Result<Vec<u8>> {
    let len = u16::try_from(subpackets.len()).map_err(|_| anyhow!("the hashed subpackets are too long"))?;
    Ok([&[4, signature_type, ALGORITHM_EDDSA, hash][..], &len.to_be_bytes(), subpackets].concat())
}

/// The v4 trailer hashed after the hashed part (RFC 4880 5.2.4).
fn trailer(hashed: &[u8]) -> [u8; 6] {
    let len = (hashed.len() as u32).to_be_bytes();
    [4, 0xff, len[0], len[1], len[2], len[3]]
}

/// One signature subpacket; every subpacket here is shorter than 192 bytes.
fn subpacket(kind: u8, data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() < 191);
    [&[data.len() as u8 + 1, kind][..], data].concat()
}

/// The signature packet: hashed part, unhashed subpackets, the digest's first
/// two bytes, and EdDSA's R and S as MPIs.
fn signature_packet(hashed: &[u8], unhashed: &[u8], digest: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let body = [
        hashed,
        &(unhashed.len() as u16).to_be_bytes(),
        unhashed,
        &digest[..2],
        &mpi(&signature[..32]),
        &mpi(&signature[32..]),
    ]
    .concat();
    packet(TAG_SIGNATURE, &body)
}

/// A big-endian number as an MPI: its bit count, then its bytes without leading zeros.
fn mpi(bytes: &[u8]) -> Vec<u8> {
    let bytes = &bytes[bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len())..];
    let bits = match bytes.first() {
        Some(first) => (bytes.len() * 8 - first.leading_zeros() as usize) as u16,
        None => 0,
    };
    [&bits.to_be_bytes()[..], bytes].concat()
}

/// A packet with a new-format header (RFC 4880 4.2.2).
fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xc0 | tag];
    match body.len() {
        len @ 0..=191 => out.push(len as u8),
        len @ 192..=8383 => {
            let len = len - 192;
            out.extend_from_slice(&[(len >> 8) as u8 + 192, len as u8]);
        }
        len => {
            out.push(0xff);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(body);
    out
}

/// ASCII armor (RFC 4880 6.2): base64 in 64-column lines and the CRC-24 checksum.
fn armor(kind: &str, data: &[u8]) -> String {
    let base64 = base64::engine::general_purpose::STANDARD;
    let encoded = base64.encode(data);
    let mut out = format!("-----BEGIN PGP {kind}-----\n\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    let crc = crc24(data).to_be_bytes();
    out.push_str(&format!("={}\n-----END PGP {kind}-----\n", base64.encode(&crc[1..])));
    out
}

/// The armored block `kind`'s bytes, checked against its CRC-24 when it has one.
fn dearmor(text: &str, kind: &str) -> anyhow::Result<Vec<u8>> {
    let begin = format!("-----BEGIN PGP {kind}-----");
    let mut lines = text.lines().map(str::trim_end).skip_while(|line| *line != begin);
    if lines.next().is_none() {
        bail!("no {begin} line: it is not an armored OpenPGP {}", kind.to_lowercase());
    }
    // Armor headers ("Comment: …") end at the first blank line.
    let mut lines = lines.skip_while(|line| !line.is_empty()).skip(1);
    let mut encoded = String::new();
    let mut checksum = None;
    for line in lines.by_ref() {
        if line.starts_with("-----END ") {
            break;
        }
        match line.strip_prefix('=') {
            Some(crc) => checksum = Some(crc.to_string()),
            None => encoded.push_str(line),
        }
    }
    let base64 = base64::engine::general_purpose::STANDARD;
    let data = base64.decode(encoded.as_bytes()).map_err(|_| anyhow!("the armored block is not valid base64"))?;
    if let Some(checksum) = checksum {
        let crc = crc24(&data).to_be_bytes();
        if base64.decode(checksum.as_bytes()).ok().as_deref() != Some(&crc[1..]) {
            bail!("the armor checksum does not match: the signature file was changed or cut");
        }
    }
    Ok(data)
}

/// CRC-24 of RFC 4880 6.1.
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xb7_04ce;
    for byte in data {
        crc ^= u32::from(*byte) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4cfb;
            }
        }
    }
    crc & 0xff_ffff
}

/// What `synod verify` needs from a v4 EdDSA binary-document signature.
#[derive(Debug)]
struct Signature {
    hash: u8,
    /// The hashed part (version through hashed subpackets), hashed after the file.
    hashed: Vec<u8>,
    left16: [u8; 2],
    /// R and S, each left-padded to 32 bytes.
    signature: [u8; 64],
}

impl Signature {
    /// Parses exactly one signature packet (old or new header format).
    fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let mut reader = Reader(bytes);
        let (tag, packet) = reader.packet()?;
        if !reader.0.is_empty() {
            bail!("the signature file holds more than one packet; synod reads one detached signature");
        }
        if tag != TAG_SIGNATURE {
            bail!("the packet is not a signature (tag {tag})");
        }
        let mut body = Reader(packet);
        let version = body.byte()?;
        if version != 4 {
            bail!("the signature is version {version}; synod reads version 4");
        }
        let signature_type = body.byte()?;
        match signature_type {
            SIGNATURE_BINARY => {}
            SIGNATURE_TEXT => bail!("the signature is over canonical text (type 0x01); synod reads binary signatures"),
            other => bail!("the signature is of type {other:#04x}, not a detached binary-document signature"),
        }
        let algorithm = body.byte()?;
        if algorithm != ALGORITHM_EDDSA {
            bail!("the signature uses public-key algorithm {algorithm}; synod keys are EdDSA (22)");
        }
        let hash = body.byte()?;
        Hasher::new(hash)?;
        let hashed_len = usize::from(body.u16()?);
        body.take(hashed_len)?;
        // Version, type, algorithms, the length and the subpackets: what the trailer counts.
        let hashed = packet[..6 + hashed_len].to_vec();
        let unhashed_len = usize::from(body.u16()?);
        body.take(unhashed_len)?;
        let left16 = body.take(2)?.try_into().expect("2 bytes");
        let r = body.mpi()?;
        let s = body.mpi()?;
        if !body.0.is_empty() {
            bail!("the signature packet has bytes after its S value");
        }
        let mut signature = [0u8; 64];
        signature[32 - r.len()..32].copy_from_slice(r);
        signature[64 - s.len()..].copy_from_slice(s);
        Ok(Signature { hash, hashed, left16, signature })
    }
}

/// Reads a byte slice front to back; every read checks the length first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> anyhow::Result<&'a [u8]> {
        if self.0.len() < len {
            bail!("the signature packet is cut short");
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    /// An MPI of at most 32 bytes (an EdDSA R or S), without its leading zeros.
    fn mpi(&mut self) -> anyhow::Result<&'a [u8]> {
        let bits = usize::from(self.u16()?);
        if bits > 256 {
            bail!("the signature holds a {bits}-bit value where EdDSA has 256 bits at most");
        }
        self.take(bits.div_ceil(8))
    }

    /// One packet: its tag and body (RFC 4880 4.2; partial lengths refused).
    fn packet(&mut self) -> anyhow::Result<(u8, &'a [u8])> {
        let header = self.byte()?;
        if header & 0x80 == 0 {
            bail!("the data does not start with an OpenPGP packet");
        }
        let (tag, len) = if header & 0x40 != 0 {
            let tag = header & 0x3f;
            let len = match self.byte()? {
                first @ 0..=191 => usize::from(first),
                first @ 192..=223 => ((usize::from(first) - 192) << 8) + usize::from(self.byte()?) + 192,
                255 => self.u32()? as usize,
                _ => bail!("the packet uses partial body lengths, which a signature never needs"),
            };
            (tag, len)
        } else {
            let tag = (header >> 2) & 0x0f;
            let len = match header & 0x03 {
                0 => usize::from(self.byte()?),
                1 => usize::from(self.u16()?),
                2 => self.u32()? as usize,
                _ => self.0.len(),
            };
            (tag, len)
        };
        Ok((tag, self.take(len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signing_key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
    }

    /// A detached signature of `data` made the way `sign` makes it, with a local key.
    fn signed(data: &[u8], hash: u8) -> (Vec<u8>, [u8; 32]) {
        use ed25519_dalek::Signer;
        let key = PublicKey { created: 1_700_000_000, key: signing_key().verifying_key().to_bytes() };
        let hashed = binary_hashed_part(&key, 1_700_000_100, hash).unwrap();
        let mut hasher = Hasher::new(hash).unwrap();
        hasher.update(data);
        let digest = hasher.finish(&hashed);
        let signature = signing_key().sign(&digest).to_bytes();
        (signature_packet(&hashed, &subpacket(SUBPACKET_ISSUER, &key.key_id()), &digest, &signature), key.key)
    }

    fn check(data: &[u8], packet: &[u8], public: [u8; 32]) -> anyhow::Result<()> {
        let signature = Signature::parse(packet)?;
        let mut hasher = Hasher::new(signature.hash)?;
        hasher.update(data);
        let digest = hasher.finish(&signature.hashed);
        anyhow::ensure!(digest[..2] == signature.left16, "left16");
        keyfmt::verify(&public, &digest, &signature.signature).map_err(|e| anyhow!("{e}"))
    }

    #[test]
    fn openpgp_signatures_round_trip_through_armor_and_parse() {
        for hash in [HASH_SHA256, HASH_SHA512] {
            let (packet, public) = signed(b"release.tar.gz contents", hash);
            let text = armor("SIGNATURE", &packet);
            assert!(text.starts_with("-----BEGIN PGP SIGNATURE-----\n\n"), "{text}");
            assert_eq!(dearmor(&text, "SIGNATURE").unwrap(), packet);
            check(b"release.tar.gz contents", &packet, public).unwrap();
            assert!(check(b"release.tar.gz contentS", &packet, public).is_err());
        }
    }

    #[test]
    fn openpgp_refuses_hostile_signature_packets() {
        let (packet, _) = signed(b"data", HASH_SHA512);
        for len in 0..packet.len() {
            assert!(Signature::parse(&packet[..len]).is_err(), "cut at {len}");
        }
        assert!(Signature::parse(&[packet.clone(), vec![0]].concat()).is_err());
        let mut wrong_algorithm = packet.clone();
        wrong_algorithm[4] = 27;
        assert!(Signature::parse(&wrong_algorithm).unwrap_err().to_string().contains("algorithm 27"));
        let mut huge_mpi = packet.clone();
        let r_at = packet.len() - 2 * 34;
        huge_mpi[r_at..r_at + 2].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(Signature::parse(&huge_mpi).is_err());
        let mut armored = armor("SIGNATURE", &packet).into_bytes();
        armored[40] ^= 0x01;
        assert!(dearmor(std::str::from_utf8(&armored).unwrap(), "SIGNATURE").is_err());
    }

    #[test]
    fn openpgp_key_packet_matches_rfc_layout() {
        let key = PublicKey { created: 0x5f00_0000, key: [0x11; 32] };
        let body = key.body();
        // version, 4-byte time, algorithm, OID length and OID, 2-byte MPI length 263, 0x40, point.
        assert_eq!(body.len(), 1 + 4 + 1 + 1 + 9 + 2 + 33);
        assert_eq!(&body[16..19], &[0x01, 0x07, 0x40]);
        assert_eq!(mpi(&[0, 0, 0x01]), vec![0, 1, 1]);
        assert_eq!(mpi(&[0x80]), vec![0, 8, 0x80]);
        assert_eq!(key.key_id(), key.fingerprint()[12..]);
        assert_eq!(crc24(b""), 0xb704ce);
    }

    #[test]
    fn openpgp_times_parse_as_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("5000000000").is_err());
    }
}
