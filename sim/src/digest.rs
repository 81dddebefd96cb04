//! SHA-256 of any serializable value, without JSON: a serde serializer that
//! feeds a canonical binary encoding straight into the hash.
//!
//! Why: the state-agreement checker hashes every node's whole `ClusterState`
//! at every applied index, and the state grows with every write, request and
//! key. Through `serde_json` (unoptimised in the debug builds CI runs) a
//! quarter of a chaos run went into escaping JSON strings byte by byte; here a
//! string goes to the (optimised) SHA-256 in one call.
//!
//! The encoding is unambiguous for values of one type: every item starts with
//! a tag byte, strings and byte strings carry their length, compound values
//! end with an end tag, enum variants carry their index and struct fields
//! their name (so skipped fields cannot shift others). Equal values give equal
//! bytes; maps are `BTreeMap`s, so their order is canonical.

use serde::ser::{self, Serialize};
use sha2::{Digest, Sha256};

/// SHA-256 (hex) of `value`'s canonical binary encoding.
pub fn digest_hex<T: Serialize + ?Sized>(value: &T) -> String {
    let mut hasher = Hasher(Sha256::new());
    value.serialize(&mut hasher).expect("hashing a value never fails");
    hex::encode(hasher.0.finalize())
}

/// The serializer: every call updates the hash.
struct Hasher(Sha256);

/// Never produced; serde requires an error type.
#[derive(Debug)]
pub struct Never(String);

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Never(msg.to_string())
    }
}

mod tag {
    pub const BOOL: u8 = 1;
    pub const INT: u8 = 2;
    pub const UINT: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const CHAR: u8 = 5;
    pub const STR: u8 = 6;
    pub const BYTES: u8 = 7;
    pub const NONE: u8 = 8;
    pub const SOME: u8 = 9;
    pub const UNIT: u8 = 10;
    pub const VARIANT: u8 = 11;
    pub const SEQ: u8 = 12;
    pub const MAP: u8 = 13;
    pub const STRUCT: u8 = 14;
    pub const FIELD: u8 = 15;
    pub const END: u8 = 16;
}

impl Hasher {
    fn tag(&mut self, tag: u8) {
        self.0.update([tag]);
    }

    fn len_bytes(&mut self, tag: u8, bytes: &[u8]) {
        self.0.update([tag]);
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn variant(&mut self, index: u32) {
        self.0.update([tag::VARIANT]);
        self.0.update(index.to_le_bytes());
    }
}

type Done = Result<(), Never>;

impl ser::Serializer for &mut Hasher {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Done {
        self.0.update([tag::BOOL, u8::from(v)]);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Done {
        self.tag(tag::INT);
        self.0.update(v.to_le_bytes());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Done {
        self.tag(tag::INT);
        self.0.update(v.to_le_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Done {
        self.tag(tag::UINT);
        self.0.update(v.to_le_bytes());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Done {
        self.tag(tag::UINT);
        self.0.update(v.to_le_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Done {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Done {
        self.tag(tag::FLOAT);
        self.0.update(v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Done {
        self.tag(tag::CHAR);
        self.0.update(u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Done {
        self.len_bytes(tag::STR, v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Done {
        self.len_bytes(tag::BYTES, v);
        Ok(())
    }
    fn serialize_none(self) -> Done {
        self.tag(tag::NONE);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        self.tag(tag::SOME);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Done {
        self.tag(tag::UNIT);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Done {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _name: &'static str, index: u32, _variant: &'static str) -> Done {
        self.variant(index);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Done {
        self.variant(index);
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, Never> {
        self.tag(tag::SEQ);
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, Never> {
        self.tag(tag::SEQ);
        Ok(self)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, Never> {
        self.tag(tag::SEQ);
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, Never> {
        self.variant(index);
        self.tag(tag::SEQ);
        Ok(self)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, Never> {
        self.tag(tag::MAP);
        Ok(self)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Never> {
        self.tag(tag::STRUCT);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, Never> {
        self.variant(index);
        self.tag(tag::STRUCT);
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Hasher {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        self.tag(tag::END);
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Hasher {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        self.tag(tag::END);
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Hasher {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        self.tag(tag::END);
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Hasher {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        self.tag(tag::END);
        Ok(())
    }
}

impl ser::SerializeMap for &mut Hasher {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Done {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        self.tag(tag::END);
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Hasher {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
        self.len_bytes(tag::FIELD, key.as_bytes());
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        self.tag(tag::END);
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Hasher {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
        self.len_bytes(tag::FIELD, key.as_bytes());
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        self.tag(tag::END);
        Ok(())
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
