//! Process hygiene for a process that holds secrets: no core dumps, no
//! ptrace by other users, memory kept out of swap where the OS allows it,
//! and secrets read from files, systemd credentials or the environment in a
//! way that leaves no copy in `/proc/<pid>/environ`.
//!
//! Two steps, both in `main` of the `synod` binary before the async runtime
//! (so before any thread exists):
//! - [`take_env_secrets`] moves the named secret variables out of the
//!   environment into this module: it overwrites each value with zeros in the
//!   process's original environment block (the bytes the kernel shows in
//!   `/proc/<pid>/environ`; `unsetenv` alone leaves them there) and then removes
//!   the variable, so child processes do not inherit it either.
//! - [`harden`]: `PR_SET_DUMPABLE 0` (no core dump, and only a privileged
//!   process may ptrace it or read its memory), `RLIMIT_CORE 0`, and, for a
//!   node, `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` so that pages
//!   holding unsealed shares and nonces are never swapped out. What the OS
//!   refused is kept in [`Hardening`] for the log and `synod status`.
//!
//! [`secret`] then resolves a secret by the name of its variable, in this
//! order: a file named by `<NAME>_FILE` (mode 0600 or stricter),
//! `$CREDENTIALS_DIRECTORY/<NAME>` (systemd `LoadCredential=`), the value taken
//! from the environment at start. A variable set but not taken at start (a
//! library caller that skipped [`take_env_secrets`]) is read and reported as
//! not scrubbed.
//!
//! Memory locking is attempted only when it cannot later starve the process:
//! with `MCL_FUTURE`, every later mapping counts against `RLIMIT_MEMLOCK`, and
//! once over it allocations fail. So a node locks its memory only when that
//! limit is unlimited or the process may exceed it (`CAP_IPC_LOCK`, e.g. root);
//! otherwise it reports why not (`LimitMEMLOCK=infinity` in a systemd unit
//! fixes it). `MCL_ONFAULT` locks pages as they are touched, so the untouched
//! reserve of thread stacks and the store's mappings costs no memory.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use zeroize::Zeroizing;

/// What hardening took and what the OS refused, for the log and `synod status`.
#[derive(Clone, Debug)]
pub struct Hardening {
    /// `PR_SET_DUMPABLE 0`: no core dump; other users cannot ptrace the
    /// process or read `/proc/<pid>/mem`. `Err` holds the OS's refusal.
    pub not_dumpable: Result<(), String>,
    /// `RLIMIT_CORE 0`: no core file even if the process becomes dumpable again.
    pub core_limit_zero: Result<(), String>,
    /// Whether the process's pages are locked in memory (never swapped out);
    /// `Err` says why not and what would allow it. Not attempted (`Err`) when
    /// the caller asked for no lock.
    pub memory_locked: Result<(), String>,
}

/// Which hardening steps to take: every process drops dumpability and core
/// files; only a long-running node locks its memory.
#[derive(Clone, Copy, Debug)]
pub struct HardeningSteps {
    /// Whether to lock memory (`mlockall`); a node does, a short CLI command does not.
    pub lock_memory: bool,
}

static HARDENING: OnceLock<Hardening> = OnceLock::new();

/// Secrets taken out of the environment at start, by variable name.
static ENV_SECRETS: Mutex<BTreeMap<String, Zeroizing<String>>> = Mutex::new(BTreeMap::new());

/// Hardens this process once (later calls return the first result). Safe to
/// call at any time; the `synod` binary calls it before its runtime starts.
pub fn harden(steps: HardeningSteps) -> &'static Hardening {
    HARDENING.get_or_init(|| {
        let not_dumpable = nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE, 0): {e}"));
        let core_limit_zero = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
            .map_err(|e| format!("setrlimit(RLIMIT_CORE, 0): {e}"));
        let memory_locked = if steps.lock_memory {
            lock_memory()
        } else {
            Err("not attempted: this command does not lock memory".into())
        };
        Hardening { not_dumpable, core_limit_zero, memory_locked }
    })
}

/// What [`harden`] did, or `None` when it was never called (an in-process node
/// of the simulator or a unit test).
pub fn hardening() -> Option<&'static Hardening> {
    HARDENING.get()
}

/// Logs what hardening did; a refusal is a warning naming the fix.
pub fn log_hardening() {
    let Some(h) = hardening() else {
        tracing::warn!("process hardening was not applied (no core-dump or memory-lock protection)");
        return;
    };
    for (what, result) in
        [("not dumpable", &h.not_dumpable), ("core limit 0", &h.core_limit_zero), ("memory locked", &h.memory_locked)]
    {
        match result {
            Ok(()) => tracing::info!(step = what, "process hardening"),
            Err(why) => tracing::warn!(step = what, why, "process hardening refused by the OS"),
        }
    }
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`, only where a finite
/// `RLIMIT_MEMLOCK` cannot later make allocations fail (see the module doc).
fn lock_memory() -> Result<(), String> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    let (soft, _) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| format!("getrlimit(RLIMIT_MEMLOCK): {e}"))?;
    if soft != RLIM_INFINITY && !has_cap_ipc_lock() {
        return Err(format!(
            "RLIMIT_MEMLOCK is {soft} bytes and the process lacks CAP_IPC_LOCK; locking all memory under a finite \
             limit would make later allocations fail. Raise the limit (systemd: LimitMEMLOCK=infinity; shell: \
             ulimit -l unlimited) to keep secrets out of swap"
        ));
    }
    // SAFETY: mlockall takes flags only and touches no memory of ours.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 {
        return Err(format!("mlockall: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether the effective capability set holds CAP_IPC_LOCK (bit 14 of `CapEff`).
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

extern "C" {
    /// The C library's environment: a null-terminated array of `NAME=value`
    /// strings. At start they point into the block the kernel copied onto the
    /// stack, the bytes `/proc/<pid>/environ` shows.
    static mut environ: *mut *mut libc::c_char;
}

/// Moves the named variables out of the environment: keeps each value here
/// for [`secret`], overwrites it with zeros where the process's environment
/// block holds it, and removes the variable. Returns the names it took.
///
/// Call it before any thread exists (before the async runtime starts): it
/// writes to the environment, which another thread could be reading.
pub fn take_env_secrets<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    let mut taken = Vec::new();
    for name in names.iter().map(AsRef::as_ref) {
        let Some(value) = std::env::var_os(name) else { continue };
        let text = Zeroizing::new(String::from_utf8_lossy(value.as_bytes()).into_owned());
        let mut value = value.into_encoded_bytes();
        zeroize::Zeroize::zeroize(&mut value);
        scrub_environ(name);
        std::env::remove_var(name);
        ENV_SECRETS.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), text);
        taken.push(name.to_string());
    }
    taken
}

/// Overwrites with zeros the value bytes of every `name=` entry of `environ`.
fn scrub_environ(name: &str) {
    let prefix = [name.as_bytes(), b"="].concat();
    // SAFETY: called before any thread exists (see `take_env_secrets`), so no
    // one reads or changes the environment meanwhile. `environ` is the C
    // library's null-terminated array of null-terminated strings; every write
    // stays within one string's bytes before its terminator.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry);
            let len = text.to_bytes().len();
            if text.to_bytes().starts_with(&prefix) {
                let value = (*entry).add(prefix.len()).cast::<u8>();
                std::ptr::write_bytes(value, 0, len - prefix.len());
            }
            entry = entry.add(1);
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} from {path} (named by {source_name}): {reason}")]
    Unreadable { what: String, path: PathBuf, source_name: String, reason: String },
    #[error("{path} holds {what} and is readable by other users; run chmod 600 {path}")]
    TooOpen { what: String, path: PathBuf },
    #[error("{path} holds {what} but is empty")]
    Empty { what: String, path: PathBuf },
}

/// The secret named `name` (a variable name such as `SYNOD_KEK_PASSPHRASE`),
/// from `<name>_FILE`, `$CREDENTIALS_DIRECTORY/<name>` or the environment, in
/// that order; `None` if none holds it. `what` names it in errors ("the KEK
/// passphrase"). A file's trailing newline is not part of the secret.
pub fn secret(name: &str, what: &str) -> Result<Option<Zeroizing<String>>, SecretError> {
    let file_var = format!("{name}_FILE");
    if let Some(path) = std::env::var_os(&file_var) {
        return read_secret_file(Path::new(&path), what, &file_var).map(Some);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(name);
        if path.exists() {
            return read_secret_file(&path, what, "CREDENTIALS_DIRECTORY").map(Some);
        }
    }
    if let Some(value) = ENV_SECRETS.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
        return Ok(Some(value.clone()));
    }
    match std::env::var_os(name) {
        Some(value) => {
            tracing::warn!(
                variable = name,
                "{what} is read from the environment but was not scrubbed from it at start-up"
            );
            Ok(Some(Zeroizing::new(String::from_utf8_lossy(OsStr::as_bytes(&value)).into_owned())))
        }
        None => Ok(None),
    }
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret_file(path: &Path, what: &str, source_name: &str) -> Result<Zeroizing<String>, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| SecretError::Unreadable {
        what: what.into(),
        path: path.into(),
        source_name: source_name.into(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretError::TooOpen { what: what.into(), path: path.into() });
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(unreadable)?);
    let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
    let trimmed = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if trimmed.is_empty() {
        return Err(SecretError::Empty { what: what.into(), path: path.into() });
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hygiene_secret_file_refuses_open_modes_and_strips_the_newline() {
        // Proves that a secret file readable by others is refused by name, and a private one loses only its newline.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "  12 34 \n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = read_secret_file(&path, "the PIN", "TEST_FILE").unwrap_err();
        assert!(matches!(open, SecretError::TooOpen { .. }) && open.to_string().contains("chmod 600"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&*read_secret_file(&path, "the PIN", "TEST_FILE").unwrap(), "  12 34 ");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(read_secret_file(&path, "the PIN", "TEST_FILE"), Err(SecretError::Empty { .. })));
    }
}
