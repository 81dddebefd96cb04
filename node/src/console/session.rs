//! The console's login and registration challenges, its sessions, and its registration
//! budget, in this node's memory only.
//!
//! Nothing here is replicated or written to disk: a session lets one browser read pages on
//! the node that served its login, and authorises nothing by itself (every approval or
//! denial carries its own passkey assertion, which every node verifies). A restart ends
//! every session and voids every open challenge. Every map is bounded.
//!
//! A challenge costs no memory until it is answered, since anyone may ask for one: it is
//! a random nonce ([`NONCE_BYTES`] from the node's RNG seam), its expiry, and an HMAC-SHA-256
//! under a secret this node drew at start over the purpose, the operator, the nonce and the
//! expiry. The browser's client data carries it back (base64url); the node recomputes the
//! HMAC, so a challenge answers only for the operator and purpose it was drawn for, within
//! [`CHALLENGE_LIFE_MS`]. Answered nonces are kept until their challenge expires, so each
//! challenge is used once. A session id is 32 random bytes; the map keeps only its SHA-256,
//! so neither a lookup's timing nor a memory dump hands out a live cookie.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use synod_proto::webauthn::{b64url, from_b64url};
use zeroize::Zeroizing;

/// Sessions held at once; the least recently used is dropped for a new one.
pub const SESSIONS_MAX: usize = 1024;
/// Answered challenges remembered at once (each until its expiry, to refuse a second
/// answer). When full, answers are refused until the oldest expire: a forgotten nonce could
/// be answered twice.
pub const USED_CHALLENGES_MAX: usize = 4096;
/// How long a login or registration challenge may be answered.
pub const CHALLENGE_LIFE_MS: u64 = 5 * 60 * 1000;
/// A session unused this long ends.
pub const SESSION_IDLE_MS: u64 = 15 * 60 * 1000;
/// A session ends this long after its login, used or not.
pub const SESSION_LIFE_MS: u64 = 8 * 60 * 60 * 1000;
/// Registrations this node writes to the log per minute, from everyone: each costs a log
/// entry on every node, and anyone may send one.
pub const REGISTRATIONS_PER_MINUTE_MAX: u32 = 10;
/// Registrations this node writes per minute for one client address.
pub const REGISTRATIONS_PER_IP_PER_MINUTE_MAX: u32 = 3;
const _: () = assert!(CHALLENGE_LIFE_MS < SESSION_IDLE_MS && SESSION_IDLE_MS < SESSION_LIFE_MS);
const _: () = assert!(REGISTRATIONS_PER_IP_PER_MINUTE_MAX <= REGISTRATIONS_PER_MINUTE_MAX);
/// The random part of a challenge.
pub const NONCE_BYTES: usize = 16;
/// A challenge's bytes: nonce, expiry (milliseconds, big-endian) and HMAC-SHA-256.
const CHALLENGE_BYTES: usize = NONCE_BYTES + 8 + 32;

/// The name of the session cookie.
pub const COOKIE_NAME: &str = "synod_console";

/// What a challenge was drawn for: a login answer cannot register a passkey, nor the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Login,
    Register,
}

impl Purpose {
    /// The byte the HMAC covers for this purpose.
    fn tag(self) -> u8 {
        match self {
            Purpose::Login => 1,
            Purpose::Register => 2,
        }
    }
}

/// A logged-in browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The operator who logged in with a passkey; pages show what this operator may see.
    pub operator: String,
    /// The passkey that logged in: the session lasts only while the operator still has it.
    pub credential_id: String,
    /// When that passkey was added: a passkey removed and registered again (or an operator
    /// removed and added again, or a new RP ID) is another passkey, and ends the session.
    pub passkey_added_at_ms: u64,
    /// When the login happened: the session ends [`SESSION_LIFE_MS`] later.
    pub created_ms: u64,
    /// When the session was last used: it ends [`SESSION_IDLE_MS`] after.
    pub last_seen_ms: u64,
}

impl Session {
    fn alive(&self, now_ms: u64) -> bool {
        now_ms < self.created_ms.saturating_add(SESSION_LIFE_MS)
            && now_ms < self.last_seen_ms.saturating_add(SESSION_IDLE_MS)
    }
}

/// Why a challenge answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error(
        "this challenge was not drawn by this node for this operator and purpose (or the node restarted since); \
         start again"
    )]
    Unknown,
    #[error("this challenge was already used; start again")]
    Used,
    #[error("this challenge has expired (they last {} minutes); start again", CHALLENGE_LIFE_MS / 60_000)]
    Expired,
    #[error("too many logins and registrations in the last {} minutes; try again in a few minutes", CHALLENGE_LIFE_MS / 60_000)]
    Busy,
}

/// Why a registration may not be written now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationLimit {
    #[error(
        "this node has written {REGISTRATIONS_PER_MINUTE_MAX} passkey registrations in the last minute; try again in \
         a minute"
    )]
    Node,
    #[error(
        "{REGISTRATIONS_PER_IP_PER_MINUTE_MAX} passkey registrations came from your address in the last minute; try \
         again in a minute"
    )]
    Address,
}

/// Session ids, challenge HMACs and the registration budget of one node's console.
pub struct Sessions {
    /// The HMAC key of this node's challenges, drawn at start; never leaves memory.
    secret: Zeroizing<[u8; 32]>,
    inner: std::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Answered nonces, by the expiry of their challenge.
    used: BTreeMap<[u8; NONCE_BYTES], u64>,
    /// By SHA-256 of the session id.
    sessions: BTreeMap<[u8; 32], Session>,
    /// The minute (now / 60 000) the registration counts below are for.
    registration_minute: u64,
    /// Registrations written this minute.
    registrations: u32,
    /// The same per client address; at most [`REGISTRATIONS_PER_MINUTE_MAX`] entries, since
    /// only admitted registrations are counted.
    registrations_by_ip: BTreeMap<IpAddr, u32>,
}

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// HMAC-SHA-256 (RFC 2104) of `parts`, concatenated, under `key`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

impl Sessions {
    /// The console state of a node that drew `secret` from its RNG seam at start.
    pub fn new(secret: [u8; 32]) -> Self {
        Sessions { secret: Zeroizing::new(secret), inner: Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mac(&self, operator: &str, purpose: Purpose, nonce: &[u8], expiry: &[u8]) -> Hmac<Sha256> {
        // The operator's length goes first, so no two (operator, nonce) pairs share an input.
        let length = u32::try_from(operator.len()).unwrap_or(u32::MAX).to_be_bytes();
        hmac_sha256(&self.secret, &[&[purpose.tag()], &length, operator.as_bytes(), nonce, expiry])
    }

    /// A challenge for `operator` and `purpose` with the random `nonce`; its base64url text.
    /// Nothing is stored.
    pub fn begin(&self, operator: &str, purpose: Purpose, nonce: [u8; NONCE_BYTES], now_ms: u64) -> String {
        let expiry = now_ms.saturating_add(CHALLENGE_LIFE_MS).to_be_bytes();
        let mut bytes = Vec::with_capacity(CHALLENGE_BYTES);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&expiry);
        bytes.extend_from_slice(&self.mac(operator, purpose, &nonce, &expiry).finalize().into_bytes());
        b64url(&bytes)
    }

    /// Takes (uses up) the challenge `text` for `operator` and `purpose`: its bytes, which the
    /// assertion or registration must sign, or why not. A challenge this node drew is
    /// remembered as used whatever happens next, so each is tried once.
    pub fn take(&self, text: &str, operator: &str, purpose: Purpose, now_ms: u64) -> Result<Vec<u8>, ChallengeError> {
        let bytes = from_b64url(text).map_err(|_| ChallengeError::Unknown)?;
        if bytes.len() != CHALLENGE_BYTES {
            return Err(ChallengeError::Unknown);
        }
        let (nonce, rest) = bytes.split_at(NONCE_BYTES);
        let (expiry, mac) = rest.split_at(8);
        // verify_slice compares in constant time.
        if self.mac(operator, purpose, nonce, expiry).verify_slice(mac).is_err() {
            return Err(ChallengeError::Unknown);
        }
        let expires_ms = u64::from_be_bytes(expiry.try_into().expect("8 bytes"));
        if now_ms >= expires_ms {
            return Err(ChallengeError::Expired);
        }
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("NONCE_BYTES");
        let mut inner = self.lock();
        inner.used.retain(|_, expires| now_ms < *expires);
        if inner.used.contains_key(&nonce) {
            return Err(ChallengeError::Used);
        }
        if inner.used.len() >= USED_CHALLENGES_MAX {
            return Err(ChallengeError::Busy);
        }
        inner.used.insert(nonce, expires_ms);
        Ok(bytes)
    }

    /// Counts one registration to write now from `ip` (when known), or says which budget is
    /// spent; only admitted registrations count.
    pub fn admit_registration(&self, ip: Option<IpAddr>, now_ms: u64) -> Result<(), RegistrationLimit> {
        let mut inner = self.lock();
        let minute = now_ms / 60_000;
        if inner.registration_minute != minute {
            inner.registration_minute = minute;
            inner.registrations = 0;
            inner.registrations_by_ip.clear();
        }
        if inner.registrations >= REGISTRATIONS_PER_MINUTE_MAX {
            return Err(RegistrationLimit::Node);
        }
        if let Some(ip) = ip {
            let from_ip = inner.registrations_by_ip.entry(ip).or_insert(0);
            if *from_ip >= REGISTRATIONS_PER_IP_PER_MINUTE_MAX {
                return Err(RegistrationLimit::Address);
            }
            *from_ip += 1;
        }
        inner.registrations += 1;
        Ok(())
    }

    /// Starts a session for `operator`, logged in with the passkey `credential_id` added at
    /// `passkey_added_at_ms`, with the id `random`; returns the id for the cookie.
    pub fn login(
        &self,
        operator: &str,
        credential_id: &str,
        passkey_added_at_ms: u64,
        random: [u8; 32],
        now_ms: u64,
    ) -> String {
        let id = b64url(&random);
        let mut inner = self.lock();
        inner.sessions.retain(|_, s| s.alive(now_ms));
        while inner.sessions.len() >= SESSIONS_MAX {
            let oldest = inner.sessions.iter().min_by_key(|(_, s)| s.last_seen_ms).map(|(k, _)| *k);
            let Some(oldest) = oldest else { break };
            inner.sessions.remove(&oldest);
        }
        let session = Session {
            operator: operator.to_string(),
            credential_id: credential_id.to_string(),
            passkey_added_at_ms,
            created_ms: now_ms,
            last_seen_ms: now_ms,
        };
        inner.sessions.insert(session_key(&id), session);
        id
    }
    /// The live session of cookie value `id`, marked as used now; an ended one is removed.
    pub fn get(&self, id: &str, now_ms: u64) -> Option<Session> {
        let key = session_key(id);
        let mut inner = self.lock();
        let session = inner.sessions.get_mut(&key)?;
        if !session.alive(now_ms) {
            inner.sessions.remove(&key);
            return None;
        }
        session.last_seen_ms = session.last_seen_ms.max(now_ms);
        Some(session.clone())
    }

    /// Ends the session of cookie value `id`, if there is one.
    pub fn logout(&self, id: &str) {
        self.lock().sessions.remove(&session_key(id));
    }

    /// How many sessions and answered challenges are held (for tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.sessions.len(), inner.used.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: u32) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        bytes
    }

    fn nonce(n: u32) -> [u8; NONCE_BYTES] {
        random(n)[..NONCE_BYTES].try_into().unwrap()
    }

    #[test]
    fn console_hmac_matches_rfc_4231() {
        // RFC 4231 test case 2 has a short key; padded with zeros to 32 bytes it is the same key.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]).finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn console_challenge_is_used_once_for_its_operator_and_purpose() {
        // A challenge answers once, only for the operator and purpose it was drawn for, only on
        // the node (secret) that drew it, unaltered, and not after CHALLENGE_LIFE_MS; drawing
        // one stores nothing.
        let sessions = Sessions::new(random(7));
        let text = sessions.begin("alice", Purpose::Login, nonce(1), 1_000);
        assert_eq!(sessions.counts(), (0, 0), "a challenge costs no memory until it is answered");
        assert_eq!(sessions.take(&text, "alice", Purpose::Login, 2_000).map(|b| b.len()), Ok(CHALLENGE_BYTES));
        assert_eq!(sessions.take(&text, "alice", Purpose::Login, 2_000), Err(ChallengeError::Used));
        let text = sessions.begin("alice", Purpose::Login, nonce(2), 1_000);
        assert_eq!(sessions.take(&text, "bob", Purpose::Login, 2_000), Err(ChallengeError::Unknown));
        assert_eq!(sessions.take(&text, "alice", Purpose::Register, 2_000), Err(ChallengeError::Unknown));
        assert_eq!(Sessions::new(random(8)).take(&text, "alice", Purpose::Login, 2_000), Err(ChallengeError::Unknown));
        let mut bytes = from_b64url(&text).unwrap();
        bytes[NONCE_BYTES + 7] ^= 1; // a later expiry
        assert_eq!(sessions.take(&b64url(&bytes), "alice", Purpose::Login, 2_000), Err(ChallengeError::Unknown));
        assert_eq!(sessions.take("not-a-challenge", "alice", Purpose::Login, 2_000), Err(ChallengeError::Unknown));
        assert!(sessions.take(&text, "alice", Purpose::Login, 2_000).is_ok(), "failed tries did not use it up");
        let text = sessions.begin("alice", Purpose::Login, nonce(4), 1_000);
        assert_eq!(
            sessions.take(&text, "alice", Purpose::Login, 1_000 + CHALLENGE_LIFE_MS),
            Err(ChallengeError::Expired)
        );
    }

    #[test]
    fn console_used_challenges_are_bounded_and_forgotten_at_expiry() {
        // Answered nonces are remembered until their challenge expires; past USED_CHALLENGES_MAX
        // answers are refused (never forgotten early), and room returns as they expire.
        let sessions = Sessions::new(random(7));
        for n in 0..USED_CHALLENGES_MAX as u32 {
            let text = sessions.begin("alice", Purpose::Login, nonce(n), 0);
            assert!(sessions.take(&text, "alice", Purpose::Login, 1).is_ok());
        }
        let late = sessions.begin("alice", Purpose::Login, nonce(u32::MAX), 10);
        assert_eq!(sessions.take(&late, "alice", Purpose::Login, 11), Err(ChallengeError::Busy));
        assert!(sessions.take(&late, "alice", Purpose::Login, CHALLENGE_LIFE_MS).is_ok(), "the first ones expired");
        assert_eq!(sessions.counts().1, 1);
    }

    #[test]
    fn console_registrations_are_limited_per_node_and_per_address() {
        // One address writes REGISTRATIONS_PER_IP_PER_MINUTE_MAX a minute; the node writes
        // REGISTRATIONS_PER_MINUTE_MAX in all; the next minute starts afresh.
        let sessions = Sessions::new(random(7));
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..REGISTRATIONS_PER_IP_PER_MINUTE_MAX {
            assert_eq!(sessions.admit_registration(Some(one), 0), Ok(()));
        }
        assert_eq!(sessions.admit_registration(Some(one), 1), Err(RegistrationLimit::Address));
        let mut n = 0u8;
        while sessions.admit_registration(Some(IpAddr::from([198, 51, 100, n])), 2).is_ok() {
            n += 1;
        }
        assert_eq!(u32::from(n) + REGISTRATIONS_PER_IP_PER_MINUTE_MAX, REGISTRATIONS_PER_MINUTE_MAX);
        assert_eq!(sessions.admit_registration(None, 3), Err(RegistrationLimit::Node));
        assert_eq!(sessions.admit_registration(Some(one), 60_000), Ok(()));
    }

    #[test]
    fn console_session_ends_when_idle_or_old_and_on_logout() {
        // A session lives while used at least every SESSION_IDLE_MS, never past SESSION_LIFE_MS,
        // and ends at logout; an unknown cookie finds nothing.
        let sessions = Sessions::new(random(7));
        let id = sessions.login("alice", "cred", 5, random(1), 0);
        let session = sessions.get(&id, 1).unwrap();
        assert_eq!(
            (session.operator.as_str(), session.credential_id.as_str(), session.passkey_added_at_ms),
            ("alice", "cred", 5)
        );
        assert!(sessions.get("not-a-session", 1).is_none());
        assert!(sessions.get(&id, 1 + SESSION_IDLE_MS).is_none(), "idle too long");
        assert_eq!(sessions.counts().0, 0, "an ended session leaves the map");

        let id = sessions.login("alice", "cred", 5, random(2), 0);
        let mut now = 0;
        while now + SESSION_IDLE_MS / 2 < SESSION_LIFE_MS {
            now += SESSION_IDLE_MS / 2;
            assert!(sessions.get(&id, now).is_some(), "kept alive at {now}");
        }
        assert!(sessions.get(&id, SESSION_LIFE_MS).is_none(), "never past its life");

        let id = sessions.login("bob", "cred", 5, random(3), 0);
        sessions.logout(&id);
        assert!(sessions.get(&id, 1).is_none());
    }

    #[test]
    fn console_sessions_are_capped_least_recently_used_first() {
        // Past SESSIONS_MAX sessions, the one used longest ago makes room; the others stay.
        let sessions = Sessions::new(random(7));
        let ids: Vec<String> =
            (0..SESSIONS_MAX as u32).map(|n| sessions.login("alice", "cred", 0, random(n), u64::from(n))).collect();
        // Use the first one, so the second is now the least recently used.
        assert!(sessions.get(&ids[0], 5_000).is_some());
        let newest = sessions.login("bob", "cred", 0, random(99_999), 5_001);
        assert_eq!(sessions.counts().0, SESSIONS_MAX);
        assert!(sessions.get(&ids[1], 5_002).is_none(), "the least recently used was dropped");
        assert!(sessions.get(&ids[0], 5_002).is_some());
        assert!(sessions.get(&newest, 5_002).is_some());
    }
}
