//! Writing files that hold keys, PINs and certificates.
//!
//! One way to do it everywhere: the file must not exist yet (an existing key
//! may seal a data directory or identify a node), it gets exactly the given
//! mode whatever the umask, its contents and its directory entry are fsynced,
//! and a half-written file is removed.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a file only its owner may read: keys, PINs.
pub const PRIVATE_MODE: u32 = 0o600;

/// Creates `path` with `contents` and `mode`. Fails with
/// [`io::ErrorKind::AlreadyExists`] when the file is already there.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    let written = file
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_write_new_sets_mode_and_never_overwrites() {
        // A new file gets exactly the mode asked for; a second write to the same path is refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new(&path, b"secret", PRIVATE_MODE).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_new(&path, b"other", PRIVATE_MODE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }
}
