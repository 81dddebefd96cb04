//! Node-to-node RPC over QUIC: one bidirectional stream per call, one frame each way.
//!
//! A frame is a 4-byte big-endian length, a 1-byte version and a JSON body. The
//! length is checked against [`FRAME_BYTES_MAX`] before anything is allocated,
//! so a hostile or broken peer cannot make a node buffer without bound.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::WriteResponse;
use crate::command::SignedCommand;
use crate::error::NodeError;
use crate::{NodeId, TypeConfig};

/// Version byte of the frame format. 2: AppendEntries answers carry the
/// follower's clock, so a node of version 1 cannot read them.
pub const FRAME_VERSION: u8 = 2;
/// Largest frame either side accepts (header excluded).
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Raft sends at most this many entries per AppendEntries; with
/// [`crate::command::ENVELOPE_BYTES_MAX`] (JSON-escaped, at most doubled) it fits a frame.
pub const APPEND_ENTRIES_MAX: u64 = 32;
/// Snapshot chunk size; JSON writes a byte as up to 4 characters.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// A call from one node to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower hands a client's signed command to the leader.
    Forward(SignedCommand),
    /// Connectivity check (`synod node ping`): proves both certificates and membership.
    Ping,
    /// A DKG round-2 package: the sender's secret share for the receiver. Sent
    /// only point to point over mutual TLS, never through the log; the sender is
    /// the authenticated peer.
    DkgRound2 {
        key_id: String,
        package: SecretHex,
    },
    /// A refresh round-2 package: the sender's share of its zero-constant
    /// polynomial for the receiver, for generation `generation` of the key.
    /// Point to point over mutual TLS, never through the log.
    RefreshRound2 {
        key_id: String,
        generation: u32,
        /// The refresh attempt (the log index of its `refresh_key`).
        attempt: u64,
        package: SecretHex,
    },
    /// A repair helper's value `δ` for another helper (the sender is the
    /// authenticated peer), for the repair of `target`'s share of the key.
    RepairDelta {
        key_id: String,
        target: NodeId,
        /// The repair attempt (the log index of its `repair_share`).
        attempt: u64,
        delta: SecretHex,
    },
    /// A repair helper's sum `σ` of the values it received, for the target.
    RepairSigma {
        key_id: String,
        attempt: u64,
        sigma: SecretHex,
    },
    /// FROST preprocessing: the coordinator asks a signer for `count` fresh
    /// nonce commitments for a key, ahead of any request. The signer keeps the
    /// nonces in memory only, each in its own numbered slot, bound to this key
    /// and to the asking node; a slot signs at most one signing package.
    SignPreprocess {
        key_id: String,
        count: u32,
    },
    /// Signing: one signature share per ask, for a batch of committed requests
    /// (one network message for every request the coordinator has ready for
    /// this signer). The answers come back in the same order.
    SignShare {
        asks: Vec<ShareAsk>,
    },
}

impl PeerRequest {
    /// Whether the request carries a secret (a DKG round-2 package), so that
    /// its frame is built and dropped in wiped buffers.
    pub fn carries_secret(&self) -> bool {
        matches!(
            self,
            PeerRequest::DkgRound2 { .. }
                | PeerRequest::RefreshRound2 { .. }
                | PeerRequest::RepairDelta { .. }
                | PeerRequest::RepairSigma { .. }
        )
    }
}

/// Most nonce commitments one [`PeerRequest::SignPreprocess`] may ask for.
pub const PREPROCESS_COUNT_MAX: u32 = 256;
/// Most asks in one [`PeerRequest::SignShare`].
pub const SHARE_ASKS_MAX: usize = 256;

/// A batch of preprocessed nonce commitments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceBatch {
    /// The signer's boot incarnation; its nonces die with it.
    pub incarnation: String,
    /// The slot of the first commitment; the others follow in order.
    pub first_slot: u64,
    /// Hex FROST `SigningCommitments`, one per slot.
    pub commitments: Vec<String>,
}

/// One request's signing package for one signer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareAsk {
    pub request_id: String,
    /// The preprocessed slot whose commitments the package carries for this signer.
    pub slot: u64,
    /// The incarnation the signer returned with that slot.
    pub incarnation: String,
    /// Hex FROST `SigningPackage` (message and every chosen signer's commitments).
    pub signing_package: String,
    /// The coordinator's applied index when it took the request up: the signer
    /// first catches up to it, so it judges the request on at least that state.
    pub min_index: u64,
    /// The generation of the key's shares the coordinator verifies the share
    /// against (a refresh makes a new one). A signer whose own state holds
    /// another generation refuses, so no session mixes generations.
    #[serde(default)]
    pub generation: u32,
}

/// Hex text that is secret (a DKG share): zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHex(zeroize::Zeroizing<String>);

impl SecretHex {
    /// Wraps hex text.
    pub fn new(text: String) -> Self {
        SecretHex(zeroize::Zeroizing::new(text))
    }

    /// The hex text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretHex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretHex::new(String::deserialize(d)?))
    }
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerResponse {
    /// Raft's answer, with the follower's clock when it answered, so that the
    /// leader can stamp entries with the time of a majority of clocks rather
    /// than its own (ARCHITECTURE.md, "Time").
    AppendEntries {
        result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>,
        /// The answering node's clock, ms since the Unix epoch.
        clock_ms: u64,
    },
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Forward(Result<WriteResponse, NodeError>),
    Pong {
        node_id: NodeId,
        cluster_id: Option<String>,
        /// The last log index the answering node has applied (a node that
        /// installed a snapshot asks its peers before it signs again).
        #[serde(default)]
        last_applied: Option<u64>,
        /// The answering node's Raft vote, and the id of the last entry in its
        /// log: a node that has just started asks a majority for them before it
        /// votes, because its own disk may have been rolled back (ARCHITECTURE.md,
        /// invariant 35).
        #[serde(default)]
        vote: Option<openraft::Vote<NodeId>>,
        #[serde(default)]
        last_log: Option<openraft::LogId<NodeId>>,
    },
    /// The receiver refused the call (unknown peer, malformed frame, ...).
    Refused(String),
    /// A follower refused entries stamped too far ahead of its clock (or a
    /// later call of the leader that stamped them, in that term): the leader
    /// learns that its time is refused, and stops standing for election.
    TimeRefused(String),
    DkgRound2(Result<(), String>),
    RefreshRound2(Result<(), String>),
    RepairDelta(Result<(), String>),
    RepairSigma(Result<(), String>),
    SignPreprocess(Result<NonceBatch, String>),
    /// Per ask, in order: a hex FROST `SignatureShare`, or why the signer refused.
    SignShare(Vec<Result<String, String>>),
}

impl PeerResponse {
    /// The receiver's answer to a secret sent point to point (a DKG or
    /// refresh round-2 package, a repair value or sum): `None` when this is
    /// not such an answer.
    pub fn secret_taken(&self) -> Option<&Result<(), String>> {
        match self {
            PeerResponse::DkgRound2(answer)
            | PeerResponse::RefreshRound2(answer)
            | PeerResponse::RepairDelta(answer)
            | PeerResponse::RepairSigma(answer) => Some(answer),
            _ => None,
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame version {0} is not supported (this node speaks {FRAME_VERSION}); upgrade the older node")]
    Version(u8),
    #[error("frame is not valid: {0}")]
    Malformed(String),
}

/// Encodes a value as one frame, header included.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION]);
    serde_json::to_writer(&mut body, value).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = body.len() - 5;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    body[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(body)
}

/// Encodes a frame that carries a secret (a DKG round-2 package) into a buffer
/// of exactly its size that is wiped when dropped: the value is measured
/// first, so no grown-and-abandoned copy of the secret is left on the heap.
pub fn encode_secret<T: Serialize>(value: &T) -> Result<zeroize::Zeroizing<Vec<u8>>, FrameError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = count.0;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    let mut frame = zeroize::Zeroizing::new(Vec::with_capacity(5 + len));
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.push(FRAME_VERSION);
    serde_json::to_writer(&mut *frame, value).map_err(|e| FrameError::Malformed(e.to_string()))?;
    debug_assert_eq!(frame.len(), 5 + len, "a value serialises to the same length twice");
    Ok(frame)
}

/// Reads the header: returns the body length after checking version and limit.
pub fn decode_header(header: [u8; 5]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if header[4] != FRAME_VERSION {
        return Err(FrameError::Version(header[4]));
    }
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    Ok(len)
}

/// Parses a frame body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_secret_frame_is_the_plain_frame_in_an_exact_buffer() {
        // Proves that a secret frame has the same bytes as the ordinary encoding, in a buffer of exactly its size.
        let request = PeerRequest::DkgRound2 { key_id: "k".into(), package: SecretHex::new("ab".repeat(100)) };
        let secret = encode_secret(&request).unwrap();
        assert_eq!(*secret, encode(&request).unwrap());
        assert_eq!(secret.capacity(), secret.len());
        assert!(request.carries_secret());
    }

    #[test]
    fn frame_round_trip() {
        // A frame decodes back to what was encoded.
        let frame = encode(&PeerResponse::Refused("no".into())).unwrap();
        let len = decode_header(frame[..5].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 5);
        let back: PeerResponse = decode_body(&frame[5..]).unwrap();
        assert!(matches!(back, PeerResponse::Refused(s) if s == "no"));
    }

    #[test]
    fn frame_bad_headers_are_refused() {
        // An oversized length or an unknown version is refused before any allocation.
        let mut header = [0xff, 0xff, 0xff, 0xff, FRAME_VERSION];
        assert!(matches!(decode_header(header), Err(FrameError::TooLarge { .. })));
        header = [0, 0, 0, 1, 9];
        assert!(matches!(decode_header(header), Err(FrameError::Version(9))));
        assert!(decode_body::<PeerRequest>(b"{nonsense").is_err());
    }
}
