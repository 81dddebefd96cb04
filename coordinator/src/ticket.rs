//! What redeems a preprocessed nonce slot on a signer.

/// A signer's nonce slot as the coordinator holds it: the slot number and the
/// signer's boot incarnation it was made in. The signer keeps the nonces; a
/// ticket from an earlier incarnation redeems nothing, because the signer's
/// nonces died with that boot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// The signer's incarnation when it made the slot.
    pub incarnation: String,
    /// The slot number within that incarnation.
    pub slot: u64,
}
