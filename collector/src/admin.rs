//! What the admin commands share with `serve` and `quickstart`: finding the store a command
//! works on, refusing a data dir that holds no collector, the exclusive lock a running collector
//! holds on its data dir, and creating enrollment tokens against the CA in the data dir.
//!
//! Admin commands work beside a running collector (SQLite WAL lets them), so they never take
//! the lock; two collectors on one data dir are refused, because both would take the same
//! agents and resolve each other's incidents.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use vigil_runtime::clock::now_ms;
use vigil_shared::identity::EnrollToken;

use crate::ca;
use crate::store::{Db, DB_FILE};

/// The lock file a running collector holds in its data dir (its pid inside, for the message a
/// second collector prints).
pub const LOCK_FILE: &str = "collector.lock";

/// An open store of a collector that has started at least once.
pub struct AdminStore {
    pub dir: PathBuf,
    pub db: Db,
}

/// Opens the store in `dir` for an admin command, or refuses a directory that holds no
/// collector (no `vigil.db` or no `ca.pem`): a mistyped `--data-dir` must not silently create a
/// new store and CA.
pub fn open_existing(dir: &Path) -> Result<AdminStore> {
    let missing: Vec<&str> = [DB_FILE, ca::CA_CERT_FILE]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} holds no Vigil collector (no {}): check --data-dir or the config's data_dir; a \
         collector creates its store and CA there on its first start",
        dir.display(),
        missing.join(" and ")
    );
    let db =
        Db::open(dir).with_context(|| format!("cannot open the store in {}", dir.display()))?;
    Ok(AdminStore {
        dir: dir.to_path_buf(),
        db,
    })
}

/// Refuses a data dir whose store was lost: it has the collector's identity (`ca.pem`) but
/// `vigil.db` is missing or empty (with no WAL that could hold its pages). Starting there would
/// create an empty store silently, refuse every enrolled agent as unknown, and print tokens that
/// do not exist.
pub fn refuse_lost_store(dir: &Path) -> Result<()> {
    if !dir.join(ca::CA_CERT_FILE).is_file() {
        return Ok(());
    }
    let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len());
    let wal = size(&format!("{DB_FILE}-wal")).unwrap_or(0);
    let lost = match size(DB_FILE) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("is missing"),
        Ok(0) if wal == 0 => Some("is empty"),
        _ => None,
    };
    if let Some(how) = lost {
        anyhow::bail!(
            "{dir} holds this collector's CA ({ca}) but its store {db} {how}: the store was lost. \
             Restore {db} (with {db}-wal if there is one) from a backup into {dir}, with the \
             collector stopped. To start over with an empty store instead, move {ca}, {key} and \
             the server certificate files out of {dir} too: a new CA is made, and every agent \
             must enroll again with a new token.",
            dir = dir.display(),
            ca = ca::CA_CERT_FILE,
            key = ca::CA_KEY_FILE,
            db = DB_FILE,
        );
    }
    Ok(())
}

impl AdminStore {
    /// A new enrollment token that pins this collector's CA.
    pub fn create_enroll_token(&self, ttl: Duration, single_use: bool) -> Result<EnrollToken> {
        create_enroll_token(&self.dir, &self.db, ttl, single_use)
    }
}

/// The longest an enrollment token may live: a token is a key to the fleet; one that is
/// forgotten in a script or an image should not open it for ever.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Creates an enrollment token that pins the CA in `data_dir` (which must exist), valid for
/// `ttl` (at most [`MAX_TOKEN_TTL`]).
pub fn create_enroll_token(
    data_dir: &Path,
    db: &Db,
    ttl: Duration,
    single_use: bool,
) -> Result<EnrollToken> {
    anyhow::ensure!(
        !ttl.is_zero() && ttl <= MAX_TOKEN_TTL,
        "a token's --ttl must be positive and at most 30d (got {})",
        humantime::format_duration(ttl)
    );
    let (_, pin) = ca::load_ca(data_dir)?;
    Ok(db.create_enroll_token(ttl, single_use, pin, now_ms())?)
}

/// `Ok` when the command found what it was told to change.
pub fn found(existed: bool, what: &str, id: &str) -> Result<()> {
    anyhow::ensure!(existed, "no {what} with id {id:?}");
    Ok(())
}

/// The exclusive lock of a data dir, held for as long as this value lives (the operating system
/// releases it when the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data dir's lock, or says which process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock> {
    vigil_runtime::fs::create_private_dir(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            anyhow::bail!(
                "another collector is running on {} (pid {}): two collectors on one data dir \
                 would take each other's agents; stop it first, or give this one its own data dir",
                dir.display(),
                if holder.is_empty() { "unknown" } else { holder }
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock_data_dir(dir.path()).expect("first");
        let err = lock_data_dir(dir.path()).expect_err("second");
        let msg = format!("{err:#}");
        assert!(msg.contains("another collector is running"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(held);
        lock_data_dir(dir.path()).expect("free again once dropped");
    }

    #[test]
    fn admin_commands_refuse_a_dir_without_a_collector() {
        let dir = tempfile::tempdir().expect("tempdir");
        let typo = dir.path().join("vigil-dta");
        let err = open_existing(&typo).err().expect("refused");
        let msg = format!("{err:#}");
        assert!(msg.contains("holds no Vigil collector"), "{msg}");
        assert!(!typo.exists(), "nothing created");
        // A collector's dir: store and CA.
        let real = dir.path().join("vigil-data");
        Db::open(&real).expect("store");
        ca::load_or_create_ca(&real, std::time::SystemTime::now()).expect("ca");
        let store = open_existing(&real).expect("opens");
        let token = store
            .create_enroll_token(Duration::from_secs(60), true)
            .expect("token");
        assert_eq!(token.ca_pin, ca::load_ca(&real).expect("ca").1);
    }
}
