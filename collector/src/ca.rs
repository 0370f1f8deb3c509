//! The collector's certificate authority and server certificate, kept in the data dir.
//!
//! On first start the collector generates its CA (`ca.pem`, `ca.key`) and a server certificate
//! signed by it (`server.pem`, `server.key`); later starts and the admin commands load them. Key
//! files are written 0600 and never leave the data dir. Enrollment tokens pin the CA certificate's
//! SHA-256, so replacing `ca.pem` invalidates every token and every agent certificate: this
//! module never regenerates an existing CA.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use vigil_runtime::fs as rfs;
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

/// Writes `contents` to `path` atomically: 0600 when `private` (keys, tokens), else 0644.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let mode = if private { rfs::PRIVATE } else { rfs::PUBLIC };
    rfs::write_atomic(path, contents, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The CA certificate's file in a data dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file in a data dir (0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// Loads the CA of a collector that has started at least once (admin commands: they never
/// create a CA, so a mistyped data dir cannot mint tokens pinned to a CA no collector has).
pub fn load_ca(data_dir: &Path) -> Result<(CaBundle, Pin)> {
    let cert = path(data_dir, CA_CERT_FILE);
    let cert_pem =
        fs::read_to_string(&cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let pin = identity::pin_of_pem(&cert_pem)
        .with_context(|| format!("bad CA certificate {}", cert.display()))?;
    let key = path(data_dir, CA_KEY_FILE);
    let key_pem =
        fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
    Ok((CaBundle { cert_pem, key_pem }, pin))
}

/// Loads the CA, creating it on first use.
pub fn load_or_create_ca(data_dir: &Path, now: SystemTime) -> Result<(CaBundle, Pin)> {
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (cert, key) = (path(data_dir, CA_CERT_FILE), path(data_dir, CA_KEY_FILE));
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

impl ServerIdentity {
    /// The QUIC endpoint configuration, with a stateless-reset key that survives restarts.
    ///
    /// quinn's default picks a random reset key (and a connection-id generator with a random key)
    /// per process, so a collector restarted after a crash silently drops the packets of the
    /// connections it lost, and every agent waits out its idle timeout (30 s) before it
    /// reconnects. Deriving the key from the server's private key (secret, kept in the data dir)
    /// lets the restarted collector answer such packets with a stateless reset (RFC 9000
    /// section 10.3) that the agent recognises: it reconnects and replays its spool at once.
    pub fn quic_endpoint_config(&self) -> quinn::EndpointConfig {
        let Some(key) = self.reset_key() else {
            return quinn::EndpointConfig::default();
        };
        let mut config = quinn::EndpointConfig::new(Arc::new(key));
        // The default generator validates connection ids with a per-process random key, which
        // would drop (not reset) the packets of connections from before the restart.
        config.cid_generator(|| Box::new(RandomCids));
        config
    }

    /// The stateless-reset key: HKDF of the server's private key.
    fn reset_key(&self) -> Option<ResetKey> {
        let hkdf = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()?
            .hkdf_provider;
        let key = hkdf
            .extract_from_secret(
                Some(b"vigil quic stateless reset v1"),
                self.server_key_pem.as_bytes(),
            )
            .expand_block(&[]);
        Some(ResetKey { hkdf, key })
    }
}

/// HMAC-SHA256 (rustls' ring provider) under a key derived from the server key.
struct ResetKey {
    hkdf: &'static dyn rustls::crypto::tls13::Hkdf,
    key: rustls::crypto::tls13::OkmBlock,
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let n = signature_out.len().min(tag.as_ref().len());
        signature_out[..n].copy_from_slice(&tag.as_ref()[..n]);
    }

    fn signature_len(&self) -> usize {
        self.hkdf.hmac_sign(&self.key, b"").as_ref().len()
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let expected = tag.as_ref();
        // Constant time in the contents: fold every byte before deciding.
        let diff = expected
            .iter()
            .zip(signature)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if expected.len() == signature.len() && diff == 0 {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// Random 8-byte connection ids (what quinn's `RandomConnectionIdGenerator` does; quinn does
/// not re-export it).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn reset_key_is_stable_across_restarts_and_secret_per_collector() {
        use quinn::crypto::HmacKey;
        let sign = |id: &ServerIdentity, data: &[u8]| {
            let key = id.reset_key().expect("reset key");
            assert_eq!(key.signature_len(), 32);
            let mut out = [0u8; 32];
            key.sign(data, &mut out);
            key.verify(data, &out).expect("verify own tag");
            assert!(key.verify(data, &out[..16]).is_err());
            let mut bad = out;
            bad[0] ^= 1;
            assert!(key.verify(data, &bad).is_err());
            out
        };
        let now = SystemTime::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create(dir.path(), &[], now).expect("create");
        let a2 = load_or_create(dir.path(), &[], now).expect("load");
        let other = tempfile::tempdir().expect("tempdir");
        let b = load_or_create(other.path(), &[], now).expect("create");
        assert_eq!(
            sign(&a, b"cid-1"),
            sign(&a2, b"cid-1"),
            "same key after a restart"
        );
        assert_ne!(sign(&a, b"cid-1"), sign(&a, b"cid-2"));
        assert_ne!(
            sign(&a, b"cid-1"),
            sign(&b, b"cid-1"),
            "another collector, another key"
        );
    }

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
