//! SHA-256 of any serializable value, without JSON: postcard's compact binary
//! encoding fed straight into the hash, with no intermediate buffer.
//!
//! Why: the state-agreement checker hashes node states, and the state grows
//! with every write, request and key. Through `serde_json` (unoptimised in the
//! debug builds CI runs) a quarter of a chaos run went into escaping JSON
//! strings byte by byte.
//!
//! Why postcard: it is already built (FROST uses it), it is canonical (equal
//! values give equal bytes; state maps are `BTreeMap`s, so their order is
//! fixed), and for values of one type it is unambiguous: postcard can decode
//! what it encodes, so two different values cannot share an encoding. That
//! holds for the types hashed here, which skip no field conditionally
//! (`skip_serializing_if` would break it).
//!
//! Postcard cannot encode a map whose length it is not told up front, which
//! is how serde writes a struct with a `#[serde(flatten)]` field (a sign
//! request's format, rules 9). A value holding one is hashed as JSON instead,
//! also written straight into the hash: equal values still give equal bytes
//! (JSON of `BTreeMap`s and structs is canonical), and JSON is unambiguous.

use sha2::{Digest, Sha256};

/// SHA-256 (hex) of `value`'s postcard encoding.
pub fn digest_hex<T: serde::Serialize + ?Sized>(value: &T) -> String {
    match postcard::serialize_with_flavor(value, Hashing(Sha256::new())) {
        Ok(hash) => hex::encode(hash),
        // Postcard refuses only sequences of unknown length: a flattened struct.
        Err(postcard::Error::SerializeSeqLengthUnknown) => json_digest_hex(value),
        Err(e) => panic!("a state value has no postcard encoding: {e}"),
    }
}

/// SHA-256 (hex) of `value`'s JSON, for values postcard cannot encode. A
/// domain byte first, so that no JSON hashes like some postcard encoding.
fn json_digest_hex<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let mut hashing = HashingWriter(Sha256::new());
    hashing.0.update([0xff]);
    serde_json::to_writer(&mut hashing, value).expect("a state value serializes as JSON");
    hex::encode(hashing.0.finalize())
}

/// An `io::Write` that hashes what it is given.
struct HashingWriter(Sha256);

impl std::io::Write for HashingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A postcard output that hashes what it is given.
struct Hashing(Sha256);

impl postcard::ser_flavors::Flavor for Hashing {
    type Output = [u8; 32];

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.update([byte]);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.update(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<[u8; 32]> {
        Ok(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::digest_hex;

    #[derive(serde::Serialize)]
    struct Pair {
        a: String,
        b: String,
    }

    #[derive(serde::Serialize)]
    #[serde(tag = "status", rename_all = "snake_case")]
    enum Status {
        Pending,
        Signed { signature: String },
    }

    #[test]
    fn digest_equal_values_hash_equal_and_boundaries_matter() {
        // Equal values give equal digests; moving bytes between fields, maps or variants changes the digest.
        let pair = |a: &str, b: &str| Pair { a: a.into(), b: b.into() };
        assert_eq!(digest_hex(&pair("ab", "c")), digest_hex(&pair("ab", "c")));
        assert_ne!(digest_hex(&pair("ab", "c")), digest_hex(&pair("a", "bc")));
        let map = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_ne!(digest_hex(&map("k", "vv")), digest_hex(&map("kv", "v")));
        assert_ne!(digest_hex(&Status::Pending), digest_hex(&Status::Signed { signature: String::new() }));
        assert_ne!(digest_hex(&Some(0u64)), digest_hex(&None::<u64>));
        assert_ne!(digest_hex(&vec![vec![1u8], vec![]]), digest_hex(&vec![vec![], vec![1u8]]));
    }

    #[derive(serde::Serialize)]
    struct Flat {
        a: String,
        #[serde(flatten)]
        inner: Pair,
    }

    #[test]
    fn digest_takes_flattened_structs() {
        // A flattened struct (which postcard cannot encode) hashes too: equal values equal, others not.
        let flat = |a: &str, b: &str| Flat { a: a.into(), inner: Pair { a: b.into(), b: String::new() } };
        assert_eq!(digest_hex(&flat("x", "y")), digest_hex(&flat("x", "y")));
        assert_ne!(digest_hex(&flat("x", "y")), digest_hex(&flat("x", "z")));
    }
}
