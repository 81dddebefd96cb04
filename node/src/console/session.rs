//! The console's login challenges and sessions, in this node's memory only.
//!
//! Nothing here is replicated or written to disk: a session lets one browser read pages on
//! the node that served its login, and authorises nothing by itself (every approval or
//! denial carries its own passkey assertion, which every node verifies). A restart ends
//! every session. Both maps are bounded; when one is full the oldest entry makes room.
//!
//! A challenge is 32 random bytes drawn from the node's RNG seam, named by its base64url
//! text (what the browser's client data carries back), used once, for one operator and one
//! purpose, within [`CHALLENGE_LIFE_MS`]. A session id is 32 random bytes too; the map keeps
//! only its SHA-256, so neither a lookup's timing nor a memory dump hands out a live cookie.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use synod_proto::webauthn::b64url;

/// Sessions held at once; the oldest is dropped for a new one.
pub const SESSIONS_MAX: usize = 1024;
/// Login and registration challenges open at once; the oldest is dropped for a new one.
pub const CHALLENGES_MAX: usize = 256;
/// How long a login or registration challenge may be answered.
pub const CHALLENGE_LIFE_MS: u64 = 5 * 60 * 1000;
/// A session unused this long ends.
pub const SESSION_IDLE_MS: u64 = 15 * 60 * 1000;
/// A session ends this long after its login, used or not.
pub const SESSION_LIFE_MS: u64 = 8 * 60 * 60 * 1000;
const _: () = assert!(CHALLENGE_LIFE_MS < SESSION_IDLE_MS && SESSION_IDLE_MS < SESSION_LIFE_MS);
const _: () = assert!(CHALLENGES_MAX <= SESSIONS_MAX);

/// The name of the session cookie.
pub const COOKIE_NAME: &str = "synod_console";

/// What a challenge was drawn for: a login answer cannot register a passkey, nor the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Login,
    Register,
}

/// An open challenge.
#[derive(Clone, Debug)]
struct Challenge {
    /// The operator it was drawn for: the answer must come for the same one.
    operator: String,
    purpose: Purpose,
    /// The raw bytes, which the assertion or registration must sign.
    bytes: [u8; 32],
    /// When it was drawn (the node's clock).
    created_ms: u64,
}

/// A logged-in browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The operator who logged in with a passkey; pages show what this operator may see.
    pub operator: String,
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
    #[error("this challenge is unknown or already used (or the node restarted); start again")]
    Unknown,
    #[error("this challenge has expired (they last {} minutes); start again", CHALLENGE_LIFE_MS / 60_000)]
    Expired,
    #[error("this challenge was drawn for another operator or purpose; start again")]
    Mismatch,
}

/// The challenges and sessions of one node's console.
#[derive(Default)]
pub struct Sessions {
    inner: std::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By the challenge's base64url text.
    challenges: BTreeMap<String, Challenge>,
    /// By SHA-256 of the session id.
    sessions: BTreeMap<[u8; 32], Session>,
}

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a challenge of `random` bytes for `operator`; returns its base64url text.
    pub fn begin(&self, operator: &str, purpose: Purpose, random: [u8; 32], now_ms: u64) -> String {
        let text = b64url(&random);
        let mut inner = self.lock();
        inner.challenges.retain(|_, c| now_ms < c.created_ms.saturating_add(CHALLENGE_LIFE_MS));
        while inner.challenges.len() >= CHALLENGES_MAX {
            let oldest = inner.challenges.iter().min_by_key(|(_, c)| c.created_ms).map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            inner.challenges.remove(&oldest);
        }
        let challenge = Challenge { operator: operator.to_string(), purpose, bytes: random, created_ms: now_ms };
        inner.challenges.insert(text.clone(), challenge);
        text
    }

    /// Takes (uses up) the challenge named `text` for `operator` and `purpose`: its bytes,
    /// or why not. A challenge is removed whatever the outcome, so each is tried once.
    pub fn take(&self, text: &str, operator: &str, purpose: Purpose, now_ms: u64) -> Result<[u8; 32], ChallengeError> {
        let challenge = self.lock().challenges.remove(text).ok_or(ChallengeError::Unknown)?;
        if now_ms >= challenge.created_ms.saturating_add(CHALLENGE_LIFE_MS) {
            return Err(ChallengeError::Expired);
        }
        if challenge.operator != operator || challenge.purpose != purpose {
            return Err(ChallengeError::Mismatch);
        }
        Ok(challenge.bytes)
    }

    /// Starts a session for `operator` with the id `random`; returns the id for the cookie.
    pub fn login(&self, operator: &str, random: [u8; 32], now_ms: u64) -> String {
        let id = b64url(&random);
        let mut inner = self.lock();
        inner.sessions.retain(|_, s| s.alive(now_ms));
        while inner.sessions.len() >= SESSIONS_MAX {
            let oldest = inner.sessions.iter().min_by_key(|(_, s)| s.last_seen_ms).map(|(k, _)| *k);
            let Some(oldest) = oldest else { break };
            inner.sessions.remove(&oldest);
        }
        let session = Session { operator: operator.to_string(), created_ms: now_ms, last_seen_ms: now_ms };
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

    /// How many sessions and challenges are held (for tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.sessions.len(), inner.challenges.len())
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

    #[test]
    fn console_challenge_is_used_once_for_its_operator_and_purpose() {
        // A challenge answers once, only for the operator and purpose it was drawn for, and
        // not after CHALLENGE_LIFE_MS.
        let sessions = Sessions::default();
        let text = sessions.begin("alice", Purpose::Login, random(1), 1_000);
        assert_eq!(sessions.take(&text, "alice", Purpose::Login, 2_000), Ok(random(1)));
        assert_eq!(sessions.take(&text, "alice", Purpose::Login, 2_000), Err(ChallengeError::Unknown));
        let text = sessions.begin("alice", Purpose::Login, random(2), 1_000);
        assert_eq!(sessions.take(&text, "bob", Purpose::Login, 2_000), Err(ChallengeError::Mismatch));
        let text = sessions.begin("alice", Purpose::Register, random(3), 1_000);
        assert_eq!(sessions.take(&text, "alice", Purpose::Login, 2_000), Err(ChallengeError::Mismatch));
        let text = sessions.begin("alice", Purpose::Login, random(4), 1_000);
        assert_eq!(
            sessions.take(&text, "alice", Purpose::Login, 1_000 + CHALLENGE_LIFE_MS),
            Err(ChallengeError::Expired)
        );
    }

    #[test]
    fn console_challenges_are_capped_oldest_first() {
        // Past CHALLENGES_MAX open challenges, the oldest is dropped and the newest kept.
        let sessions = Sessions::default();
        let texts: Vec<String> = (0..CHALLENGES_MAX as u32 + 1)
            .map(|n| sessions.begin("alice", Purpose::Login, random(n), u64::from(n)))
            .collect();
        assert_eq!(sessions.counts().1, CHALLENGES_MAX);
        assert_eq!(sessions.take(&texts[0], "alice", Purpose::Login, 1_000), Err(ChallengeError::Unknown));
        assert!(sessions.take(&texts[CHALLENGES_MAX], "alice", Purpose::Login, 1_000).is_ok());
        assert!(sessions.take(&texts[1], "alice", Purpose::Login, 1_000).is_ok());
    }

    #[test]
    fn console_session_ends_when_idle_or_old_and_on_logout() {
        // A session lives while used at least every SESSION_IDLE_MS, never past SESSION_LIFE_MS,
        // and ends at logout; an unknown cookie finds nothing.
        let sessions = Sessions::default();
        let id = sessions.login("alice", random(1), 0);
        assert_eq!(sessions.get(&id, 1).map(|s| s.operator), Some("alice".to_string()));
        assert!(sessions.get("not-a-session", 1).is_none());
        assert!(sessions.get(&id, 1 + SESSION_IDLE_MS).is_none(), "idle too long");
        assert_eq!(sessions.counts().0, 0, "an ended session leaves the map");

        let id = sessions.login("alice", random(2), 0);
        let mut now = 0;
        while now + SESSION_IDLE_MS / 2 < SESSION_LIFE_MS {
            now += SESSION_IDLE_MS / 2;
            assert!(sessions.get(&id, now).is_some(), "kept alive at {now}");
        }
        assert!(sessions.get(&id, SESSION_LIFE_MS).is_none(), "never past its life");

        let id = sessions.login("bob", random(3), 0);
        sessions.logout(&id);
        assert!(sessions.get(&id, 1).is_none());
    }

    #[test]
    fn console_sessions_are_capped_least_recently_used_first() {
        // Past SESSIONS_MAX sessions, the one used longest ago makes room; the others stay.
        let sessions = Sessions::default();
        let ids: Vec<String> =
            (0..SESSIONS_MAX as u32).map(|n| sessions.login("alice", random(n), u64::from(n))).collect();
        // Use the first one, so the second is now the least recently used.
        assert!(sessions.get(&ids[0], 5_000).is_some());
        let newest = sessions.login("bob", random(99_999), 5_001);
        assert_eq!(sessions.counts().0, SESSIONS_MAX);
        assert!(sessions.get(&ids[1], 5_002).is_none(), "the least recently used was dropped");
        assert!(sessions.get(&ids[0], 5_002).is_some());
        assert!(sessions.get(&newest, 5_002).is_some());
    }
}
