//! What the admin commands share with quickstart: creating enrollment tokens against the CA in
//! the data dir, and turning "no such id" into a clear error.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use vigil_shared::identity::EnrollToken;

use crate::ca;
use crate::store::Db;

pub fn now_ms() -> i64 {
    crate::server::now_ms()
}

/// Creates an enrollment token that pins the CA in `data_dir` (creating the CA on first use).
pub fn create_enroll_token(
    data_dir: &Path,
    db: &Db,
    ttl: Duration,
    single_use: bool,
) -> Result<EnrollToken> {
    let (_, pin) = ca::load_or_create_ca(data_dir, SystemTime::now())?;
    Ok(db.create_enroll_token(ttl, single_use, pin, now_ms())?)
}

/// `Ok` when the command found what it was told to change.
pub fn found(existed: bool, what: &str, id: &str) -> Result<()> {
    anyhow::ensure!(existed, "no {what} with id {id:?}");
    Ok(())
}
