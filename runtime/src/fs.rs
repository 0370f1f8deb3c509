//! File helpers both binaries need: reading a text file no larger than a cap (configuration
//! files, dpkg's status file), writing a file atomically with a given mode (keys are 0600) and
//! creating private directories.
//!
//! Nothing here follows a size the file itself claims: every read stops at its cap.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// File mode of private files (keys, tokens).
pub const PRIVATE: u32 = 0o600;
/// File mode of files anyone on the host may read (certificates, ids).
pub const PUBLIC: u32 = 0o644;

/// Why [`read_text_capped`] refused a file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open: {0}")]
    Open(io::Error),
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("not valid UTF-8")]
    NotUtf8,
}

/// Reads at most `cap` bytes of `path`: the bytes, and whether the file went on past the cap.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)?;
    let over = bytes.len() as u64 > cap;
    if over {
        bytes.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    }
    Ok((bytes, over))
}

/// A UTF-8 text file of at most `cap` bytes (configuration files): anything larger, or not
/// UTF-8, is refused.
pub fn read_text_capped(path: &Path, cap: u64) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(ReadError::Open)?
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Read)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

/// The first `cap` bytes of a text file, invalid UTF-8 replaced (so a stray byte costs one
/// entry of what is parsed from it, not the whole file).
pub fn read_text_lossy_capped(path: &Path, cap: u64) -> io::Result<String> {
    let (bytes, _) = read_capped(path, cap)?;
    Ok(text_lossy(bytes))
}

/// `bytes` as text, invalid UTF-8 replaced (without a copy when it is valid).
pub fn text_lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Writes `contents` to `path` atomically (a temporary file beside it, synced, renamed into
/// place, the directory synced) with permissions `mode`, e.g. [`PRIVATE`] for keys. The file
/// has `mode` from its creation: it is never readable by others, not even for a moment.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    // `ca.pem.tmp`, not `ca.tmp`: files that differ only in extension (`ca.pem`, `ca.key`)
    // never share a temporary file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // An existing temporary file keeps its old mode through `open`: set it again.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700 where it does not exist yet.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The most open files [`raise_open_file_limit`] asks for (the kernel's usual `nr_open`).
const MAX_OPEN_FILES: u64 = 1 << 20;

/// Raises this process's soft limit of open files to its hard limit (at most 2^20); returns the
/// soft limit now in force.
#[allow(unsafe_code)]
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = lim.rlim_max.min(MAX_OPEN_FILES);
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(want);
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_of_siblings_do_not_share_a_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pem, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..200 {
                    write_atomic(&pem, b"certificate", PRIVATE).expect("write pem");
                }
            });
            for _ in 0..200 {
                write_atomic(&key, b"key", PRIVATE).expect("write key");
            }
        });
        assert_eq!(fs::read(&pem).expect("pem"), b"certificate");
        assert_eq!(fs::read(&key).expect("key"), b"key");
    }

    #[test]
    fn capped_reads_stop_at_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        fs::write(&p, "0123456789").expect("write");
        assert_eq!(read_capped(&p, 4).expect("read"), (b"0123".to_vec(), true));
        assert_eq!(
            read_capped(&p, 10).expect("read"),
            (b"0123456789".to_vec(), false)
        );
        assert_eq!(read_text_capped(&p, 10).expect("text"), "0123456789");
        assert!(matches!(
            read_text_capped(&p, 9),
            Err(ReadError::TooLarge(9))
        ));
        fs::write(&p, b"ok\xffok").expect("write");
        assert!(matches!(read_text_capped(&p, 10), Err(ReadError::NotUtf8)));
        assert_eq!(
            read_text_lossy_capped(&p, 10).expect("lossy"),
            "ok\u{fffd}ok"
        );
        assert!(matches!(
            read_text_capped(&dir.path().join("missing"), 10),
            Err(ReadError::Open(_))
        ));
    }

    #[test]
    fn atomic_writes_have_their_mode_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key");
        // A stale temporary file from an interrupted write, readable by all.
        fs::write(p.with_extension("tmp"), "old").expect("stale");
        fs::set_permissions(p.with_extension("tmp"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        write_atomic(&p, b"secret", PRIVATE).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"secret");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!p.with_extension("tmp").exists());
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).expect("dir");
        let mode = fs::metadata(&sub).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
