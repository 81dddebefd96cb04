//! The seams through which the outside world reaches a node: time and randomness.
//!
//! Storage ([`crate::store::Store`]) and the network
//! ([`crate::transport::PeerTransport`]) are seams too and live with their
//! implementations. Production wires the system clock and the OS RNG; the
//! simulator wires simulated time and a seeded RNG. Node code never reads the
//! wall clock or a thread RNG directly.

use std::sync::{Arc, Mutex};

use rand_core::{CryptoRng, RngCore};

/// Wall-clock time as the node sees it. Used only to stamp the entries a
/// leader proposes; the state machine reads time from entries, never from here.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
pub struct SystemClock {
    /// Added to the system time: zero, except under the test-only fault
    /// [`crate::faults::CLOCK_AHEAD_200D`] (a node whose clock is wrong).
    ahead_ms: u64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        now.saturating_add(self.ahead_ms)
    }
}

/// A cryptographically secure RNG shared by a node's components.
pub trait SecureRng: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> SecureRng for T {}

/// The RNG handle a node is built with.
pub type SharedRng = Arc<Mutex<dyn SecureRng>>;

/// The OS RNG, for production.
pub fn os_rng() -> SharedRng {
    Arc::new(Mutex::new(rand_core::OsRng))
}

/// The seams a node is assembled from.
#[derive(Clone)]
pub struct Seams {
    pub clock: Arc<dyn Clock>,
    pub rng: SharedRng,
}

impl Seams {
    /// The real clock and the OS RNG.
    pub fn production() -> Self {
        let ahead_ms = if crate::faults::enabled(crate::faults::CLOCK_AHEAD_200D) {
            tracing::warn!("fault clock-ahead-200d: this node's clock runs 200 days ahead");
            crate::faults::FAR_AHEAD_MS
        } else {
            0
        };
        Seams { clock: Arc::new(SystemClock { ahead_ms }), rng: os_rng() }
    }

    /// 16 random bytes as hex (incarnation ids, command ids).
    pub fn random_id(&self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.lock().expect("rng lock").fill_bytes(&mut bytes);
        hex::encode(bytes)
    }
}

/// Runs a blocking store call from async code.
///
/// On a multi-thread runtime (production) it goes to tokio's blocking pool, so
/// an fsync never stalls the async workers. On a current-thread runtime (each
/// host of the deterministic simulator is one) it runs inline: a blocking-pool
/// thread would finish at a wall-clock moment, so the order in which its
/// waiting task is woken relative to the others would change from run to run.
pub async fn run_blocking<T, F>(f: F) -> std::io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    if flavor == tokio::runtime::RuntimeFlavor::CurrentThread {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)
}
