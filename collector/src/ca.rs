//! The collector's certificate authority and server certificate, kept in the data dir.
//!
//! On first start the collector generates its CA (`ca.pem`, `ca.key`) and a server certificate
//! signed by it (`server.pem`, `server.key`); later starts and the admin commands load them. Key
//! files are written 0600 and never leave the data dir. Enrollment tokens pin the CA certificate's
//! SHA-256, so replacing `ca.pem` invalidates every token and every agent certificate: this
//! module never regenerates an existing CA.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use vigil_shared::identity::{self, CaBundle, Pin};

/// What the QUIC server needs to present itself and sign agent certificates.
#[derive(Clone)]
pub struct ServerIdentity {
    pub ca: CaBundle,
    pub pin: Pin,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Writes `contents` to `path` atomically, readable only by the owner when `private`.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mode = if private { 0o600 } else { 0o644 };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Loads the CA, creating it on first use.
pub fn load_or_create_ca(data_dir: &Path, now: SystemTime) -> Result<(CaBundle, Pin)> {
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (cert, key) = (path(data_dir, "ca.pem"), path(data_dir, "ca.key"));
    let ca = if cert.exists() {
        CaBundle {
            cert_pem: fs::read_to_string(&cert)
                .with_context(|| format!("cannot read {}", cert.display()))?,
            key_pem: fs::read_to_string(&key)
                .with_context(|| format!("cannot read {}", key.display()))?,
        }
    } else {
        let ca = identity::generate_ca("Vigil collector CA", now)?;
        write_file(&key, ca.key_pem.as_bytes(), true)?;
        write_file(&cert, ca.cert_pem.as_bytes(), false)?;
        tracing::info!(path = %cert.display(), "generated collector CA");
        ca
    };
    let pin = identity::pin_of_pem(&ca.cert_pem)
        .with_context(|| format!("bad CA certificate {}", cert.display()))?;
    Ok((ca, pin))
}

/// Loads the CA and a server certificate for `names`, issuing a new server certificate when
/// none exists or the stored one was issued for other names.
pub fn load_or_create(
    data_dir: &Path,
    names: &[String],
    now: SystemTime,
) -> Result<ServerIdentity> {
    let (ca, pin) = load_or_create_ca(data_dir, now)?;
    let (cert, key, names_file) = (
        path(data_dir, "server.pem"),
        path(data_dir, "server.key"),
        path(data_dir, "server.names"),
    );
    let wanted = names.join("\n");
    let current = fs::read_to_string(&names_file).ok();
    let (server_cert_pem, server_key_pem) = match (
        cert.exists() && current.as_deref() == Some(wanted.as_str()),
        fs::read_to_string(&cert),
        fs::read_to_string(&key),
    ) {
        (true, Ok(c), Ok(k)) => (c, k),
        _ => {
            let (c, k) = identity::issue_server_cert(&ca, names, now)?;
            write_file(&key, k.as_bytes(), true)?;
            write_file(&cert, c.as_bytes(), false)?;
            write_file(&names_file, wanted.as_bytes(), false)?;
            (c, k)
        }
    };
    Ok(ServerIdentity {
        ca,
        pin,
        server_cert_pem,
        server_key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_private_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let a = load_or_create(dir.path(), &[], now).expect("create");
        let b = load_or_create(dir.path(), &[], now).expect("load");
        assert_eq!(a.pin, b.pin, "the CA is never regenerated");
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        for key in ["ca.key", "server.key"] {
            let mode = fs::metadata(dir.path().join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let c = load_or_create(dir.path(), &["collector.example.org".into()], now).expect("rename");
        assert_eq!(a.pin, c.pin);
        assert_ne!(
            a.server_cert_pem, c.server_cert_pem,
            "new names, new server certificate"
        );
    }
}
