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

use sha2::{Digest, Sha256};

/// SHA-256 (hex) of `value`'s postcard encoding.
pub fn digest_hex<T: serde::Serialize + ?Sized>(value: &T) -> String {
    match postcard::serialize_with_flavor(value, Hashing(Sha256::new())) {
        Ok(hash) => hex::encode(hash),
        // Postcard refuses only sequences of unknown length, which no state type makes.
        Err(e) => panic!("a state value has no postcard encoding: {e}"),
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
}
