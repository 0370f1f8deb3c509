//! TLS identities of Vigil: the collector's CA, its server certificate, agent keys, CSRs and
//! client certificates, enrollment tokens that pin the CA, and the rustls configurations both
//! binaries use.
//!
//! Enrollment (as `kubeadm join --discovery-token-ca-cert-hash`): the collector owns a CA; an
//! enrollment token carries the SHA-256 of the CA certificate's DER ([`Pin`]). An agent without a
//! certificate connects with [`enroll_client_config`], which accepts the collector only if it
//! presents a certificate with that hash and its server certificate chains to it. The agent sends
//! its CSR ([`new_key_and_csr`]) and the token; the collector answers with [`sign_agent_csr`].
//! From then on the agent connects with [`mtls_client_config`] and the collector reads the agent
//! id from the client certificate ([`peer_agent_id`]).
//!
//! Every config is TLS 1.3 only, uses the ring provider through `builder_with_provider` (never the
//! process-default provider) and sets ALPN [`proto::ALPN`]; the server name is always
//! [`proto::SERVER_NAME`].
//!
//! This module must never open sockets or files, read the clock (callers pass `now`), log secrets
//! or private keys, or panic on bad input. The private key of an agent is made here but never
//! leaves the caller.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rand::distr::{Alphanumeric, SampleString};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::proto;

/// Validity of the collector's CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the collector's server certificate.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before `now`, so a peer whose clock lags a little still
/// accepts a certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);
/// Longest agent id accepted (see [`valid_agent_id`]).
pub const MAX_AGENT_ID_LEN: usize = 64;
/// DNS suffix of the SAN in agent certificates: `<agent_id>.agent.vigil`.
pub const AGENT_SAN_SUFFIX: &str = ".agent.vigil";
/// Version prefix of enrollment tokens.
pub const TOKEN_PREFIX: &str = "v1";
/// Length of a generated token id.
pub const TOKEN_ID_LEN: usize = 8;
/// Length of a generated token secret (alphanumerics: ~190 bits).
pub const TOKEN_SECRET_LEN: usize = 32;
/// Longest token id or secret accepted when parsing.
pub const MAX_TOKEN_FIELD_LEN: usize = 128;

/// SHA-256 of a CA certificate's DER encoding.
pub type Pin = [u8; 32];

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate operation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid {what} PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("cannot parse certificate: {0}")]
    X509(String),
    #[error("certificate has no subject common name")]
    MissingCommonName,
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("invalid agent id {0:?}: expected 1-64 characters of a-z, 0-9 and '-'")]
    InvalidAgentId(String),
    #[error("invalid certificate name {0:?}")]
    InvalidName(String),
    #[error("invalid CA hash: {0}")]
    BadPin(String),
    #[error("certificate validity overflows the time range")]
    TimeOverflow,
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Why an enrollment token did not parse. Messages never echo the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("enrollment token is empty")]
    Empty,
    #[error("enrollment token must start with `v1.` (it starts with {found:?})")]
    Prefix { found: String },
    #[error(
        "enrollment token must have 4 dot-separated parts `v1.<id>.<secret>.<ca-hash>`, found {found}"
    )]
    PartCount { found: usize },
    #[error("enrollment token {field} must be 1-128 ASCII letters or digits")]
    Field { field: &'static str },
    #[error("enrollment token CA hash: {0}")]
    Pin(String),
}

/// The ring crypto provider, shared by every config this module builds.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The collector's CA: certificate and PKCS#8 private key, both PEM.
#[derive(Clone)]
pub struct CaBundle {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CaBundle {
    /// The pin of this CA (what enrollment tokens carry).
    pub fn pin(&self) -> Result<Pin, IdentityError> {
        pin_of_pem(&self.cert_pem)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, IdentityError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }
}

fn new_key() -> Result<KeyPair, IdentityError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// A random positive serial of 126 bits (top bit clear so the DER INTEGER stays positive and
/// second bit set so it has no leading zero byte).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Sets `not_before` (backdated by [`CLOCK_SKEW_ALLOWANCE`]) and `not_after = now + validity`.
fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    validity: Duration,
) -> Result<(), IdentityError> {
    let not_before = now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now);
    let not_after = now
        .checked_add(validity)
        .ok_or(IdentityError::TimeOverflow)?;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(())
}

fn subject_cn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Generates a new CA: ECDSA P-256, valid [`CA_VALIDITY`], may sign end-entity certificates only.
pub fn generate_ca(common_name: &str, now: SystemTime) -> Result<CaBundle, IdentityError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_cn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, now, CA_VALIDITY)?;
    let cert = params.self_signed(&key)?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// SHA-256 of a certificate's DER bytes.
pub fn pin_of_der(der: &[u8]) -> Pin {
    Sha256::digest(der).into()
}

/// Pin of the first certificate in `cert_pem`.
pub fn pin_of_pem(cert_pem: &str) -> Result<Pin, IdentityError> {
    Ok(pin_of_der(&first_cert(cert_pem, "certificate")?))
}

/// Lowercase hex of a pin (64 characters).
pub fn pin_to_hex(pin: &Pin) -> String {
    hex::encode(pin)
}

/// Parses 64 hex characters (either case) into a pin.
pub fn pin_from_hex(s: &str) -> Result<Pin, IdentityError> {
    let mut pin = [0u8; 32];
    if s.len() != 64 {
        return Err(IdentityError::BadPin(format!(
            "expected 64 hex characters, got {}",
            s.len()
        )));
    }
    hex::decode_to_slice(s, &mut pin).map_err(|e| IdentityError::BadPin(e.to_string()))?;
    Ok(pin)
}

fn san_for(name: &str) -> Result<SanType, IdentityError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
    if !valid {
        return Err(IdentityError::InvalidName(name.to_owned()));
    }
    let ia5 = name
        .try_into()
        .map_err(|_| IdentityError::InvalidName(name.to_owned()))?;
    Ok(SanType::DnsName(ia5))
}

/// Issues the collector's server certificate, signed by `ca`: a new P-256 key, valid
/// [`SERVER_CERT_VALIDITY`], server-auth EKU, SANs [`proto::SERVER_NAME`], `localhost`,
/// 127.0.0.1, ::1 and `extra_names` (IP addresses or DNS names). Returns (cert PEM, key PEM).
pub fn issue_server_cert(
    ca: &CaBundle,
    extra_names: &[String],
    now: SystemTime,
) -> Result<(String, String), IdentityError> {
    let issuer = ca.issuer()?;
    let key = new_key()?;
    let mut names: Vec<&str> = vec![proto::SERVER_NAME, "localhost", "127.0.0.1", "::1"];
    for extra in extra_names {
        if !names.contains(&extra.as_str()) {
            names.push(extra);
        }
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_cn(proto::SERVER_NAME);
    params.subject_alt_names = names.into_iter().map(san_for).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, now, SERVER_CERT_VALIDITY)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes an agent key (P-256) and a CSR for it. `hostname` only goes into the CSR's subject as
/// information; the collector ignores everything in the CSR but the public key.
/// Returns (key PEM, CSR PEM).
pub fn new_key_and_csr(hostname: &str) -> Result<(String, String), IdentityError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if !hostname.is_empty() {
        params.distinguished_name.push(DnType::CommonName, hostname);
    }
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Signs an agent's CSR with the CA. Only the CSR's public key is used (after checking the
/// CSR's signature, which proves the agent holds the key): subject CN = `agent_id`, SAN DNS
/// `<agent_id>.agent.vigil`, client-auth EKU, a random serial, valid `validity` from `now`.
pub fn sign_agent_csr(
    ca: &CaBundle,
    csr_pem: &str,
    agent_id: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<String, IdentityError> {
    if !valid_agent_id(agent_id) {
        return Err(IdentityError::InvalidAgentId(agent_id.to_owned()));
    }
    // from_pem verifies the CSR's self-signature.
    let requested = CertificateSigningRequestParams::from_pem(csr_pem)?;
    let issuer = ca.issuer()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_cn(agent_id);
    params.subject_alt_names = vec![san_for(&format!("{agent_id}{AGENT_SAN_SUFFIX}"))?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, now, validity)?;
    let to_sign = CertificateSigningRequestParams {
        params,
        public_key: requested.public_key,
    };
    Ok(to_sign.signed_by(&issuer)?.pem())
}

/// The agent id (subject CN) of a DER certificate; fails unless it is a [`valid_agent_id`].
pub fn agent_id_from_cert_der(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::X509(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or(IdentityError::MissingCommonName)?
        .as_str()
        .map_err(|e| IdentityError::X509(e.to_string()))?;
    if !valid_agent_id(cn) {
        return Err(IdentityError::InvalidAgentId(cn.to_owned()));
    }
    Ok(cn.to_owned())
}

/// Whether `id` matches `[a-z0-9-]{1,64}`.
pub fn valid_agent_id(id: &str) -> bool {
    (1..=MAX_AGENT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A new random agent id: 16 lowercase hex characters (64 bits).
pub fn new_agent_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// `len` random ASCII letters and digits from a CSPRNG (url-safe).
pub fn random_secret(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// SHA-256 hex of a secret, for storage. Secrets are high-entropy random strings, so a plain
/// hash (no salt, no slow KDF) is the right tool.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `stored_hash` (hex from [`hash_secret`]), compared in constant
/// time.
pub fn secret_matches(stored_hash: &str, secret: &str) -> bool {
    constant_time_eq(&hash_secret(secret), stored_hash)
}

/// Whether two strings are equal, in time that depends on their length only.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An enrollment token: `v1.<id>.<secret>.<ca-pin-hex>`. The collector stores `id` and
/// [`hash_secret`]`(secret)`; the agent uses `ca_pin` to recognize the collector.
/// `Debug` redacts the secret; `Display` prints the full token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    pub id: String,
    pub secret: String,
    pub ca_pin: Pin,
}

impl EnrollToken {
    /// A new random token for the CA with pin `ca_pin`.
    pub fn generate(ca_pin: Pin) -> EnrollToken {
        let id = hex::encode(rand::random::<[u8; TOKEN_ID_LEN / 2]>());
        EnrollToken {
            id,
            secret: random_secret(TOKEN_SECRET_LEN),
            ca_pin,
        }
    }
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_pin", &pin_to_hex(&self.ca_pin))
            .finish()
    }
}

impl fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id,
            self.secret,
            pin_to_hex(&self.ca_pin)
        )
    }
}

fn valid_token_field(s: &str) -> bool {
    (1..=MAX_TOKEN_FIELD_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl FromStr for EnrollToken {
    type Err = TokenError;

    /// Parses a token; surrounding whitespace (a pasted newline) is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts[0] != TOKEN_PREFIX {
            let found: String = parts[0].chars().take(8).collect();
            return Err(TokenError::Prefix { found });
        }
        let [_, id, secret, pin] = parts[..] else {
            return Err(TokenError::PartCount { found: parts.len() });
        };
        if !valid_token_field(id) {
            return Err(TokenError::Field { field: "id" });
        }
        if !valid_token_field(secret) {
            return Err(TokenError::Field { field: "secret" });
        }
        let ca_pin = pin_from_hex(pin).map_err(|e| match e {
            IdentityError::BadPin(reason) => TokenError::Pin(reason),
            other => TokenError::Pin(other.to_string()),
        })?;
        Ok(EnrollToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_pin,
        })
    }
}

fn pem_err(what: &'static str, e: impl fmt::Display) -> IdentityError {
    IdentityError::Pem {
        what,
        reason: e.to_string(),
    }
}

fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(what, e))?;
    if certs.is_empty() {
        return Err(pem_err(what, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn first_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| pem_err(what, e))
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| pem_err("private key", e))
}

fn root_store(ca_cert_pem: &str) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut roots = RootCertStore::empty();
    roots.add(first_cert(ca_cert_pem, "CA certificate")?)?;
    Ok(Arc::new(roots))
}

fn alpn() -> Vec<Vec<u8>> {
    vec![proto::ALPN.to_vec()]
}

/// The collector's TLS config: sends [server cert, CA cert]; verifies client certificates
/// against the CA but also admits clients without one (enrollment), so the caller must check
/// `peer_certificates()` and accept only `Enroll` from an anonymous peer.
pub fn server_config(
    ca_cert_pem: &str,
    server_cert_pem: &str,
    server_key_pem: &str,
) -> Result<rustls::ServerConfig, IdentityError> {
    let provider = provider();
    let ca_cert = first_cert(ca_cert_pem, "CA certificate")?;
    let mut chain = certs_from_pem(server_cert_pem, "server certificate")?;
    if chain.last() != Some(&ca_cert) {
        chain.push(ca_cert);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        root_store(ca_cert_pem)?,
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_from_pem(server_key_pem)?)?;
    config.alpn_protocols = alpn();
    Ok(config)
}

/// The agent's config for enrollment: no client certificate; the server is accepted only if it
/// presents a certificate whose SHA-256 is `pin` and its end-entity certificate chains to that
/// certificate for [`proto::SERVER_NAME`].
pub fn enroll_client_config(pin: Pin) -> Result<rustls::ClientConfig, IdentityError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        pin,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn();
    Ok(config)
}

/// The agent's config after enrollment: verifies the server against the CA and presents the
/// agent's certificate. Connect with server name [`proto::SERVER_NAME`].
pub fn mtls_client_config(
    ca_cert_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, IdentityError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca_cert_pem)?)
        .with_client_auth_cert(
            certs_from_pem(cert_pem, "agent certificate")?,
            key_from_pem(key_pem)?,
        )?;
    config.alpn_protocols = alpn();
    Ok(config)
}

/// The agent id of a verified peer: the CN of the first (end-entity) certificate.
pub fn peer_agent_id(certs: &[CertificateDer<'_>]) -> Result<String, IdentityError> {
    let first = certs.first().ok_or(IdentityError::NoPeerCertificate)?;
    agent_id_from_cert_der(first)
}

/// No presented certificate matches the pin of the enrollment token.
#[derive(Debug, thiserror::Error)]
#[error("no certificate presented by the server matches the CA hash of the enrollment token")]
struct PinMismatch;

/// Server verifier for enrollment: trust-on-pin (see [`enroll_client_config`]).
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| pin_of_der(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(PinMismatch),
                )))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        // The name is fixed by the protocol, whatever the caller dialed.
        let name = ServerName::try_from(proto::SERVER_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    use rcgen::PublicKeyData;
    use x509_parser::extensions::GeneralName;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// SANs of a certificate as strings (DNS names as is, IPs in their usual notation).
    fn san_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
        let san = cert.subject_alternative_name().expect("ext").expect("san");
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(s) => s.to_string(),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("v4")).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).expect("v6")).to_string(),
                },
                other => format!("{other}"),
            })
            .collect()
    }

    fn now() -> SystemTime {
        // rustls verifies against the real clock, so test certificates must be current.
        SystemTime::now()
    }

    /// A CA with a server certificate.
    struct Collector {
        ca: CaBundle,
        cert: String,
        key: String,
    }

    impl Collector {
        fn new(name: &str) -> Collector {
            let ca = generate_ca(name, now()).expect("ca");
            let (cert, key) = issue_server_cert(&ca, &[], now()).expect("server cert");
            Collector { ca, cert, key }
        }

        fn server_config(&self) -> rustls::ServerConfig {
            server_config(&self.ca.cert_pem, &self.cert, &self.key).expect("server config")
        }

        fn pin(&self) -> Pin {
            self.ca.pin().expect("pin")
        }

        /// An enrolled agent: (cert PEM, key PEM).
        fn agent(&self, id: &str) -> (String, String) {
            let (key, csr) = new_key_and_csr("host1").expect("csr");
            let cert = sign_agent_csr(&self.ca, &csr, id, 30 * DAY, now()).expect("sign");
            (cert, key)
        }
    }

    #[derive(Debug)]
    enum Side {
        Client,
        Server,
    }

    /// Drives a handshake in memory. Ok: both sides finished; Err: which side failed and why.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<(ClientConnection, ServerConnection), (Side, rustls::Error)> {
        let name = ServerName::try_from(proto::SERVER_NAME).expect("name");
        let mut c = ClientConnection::new(Arc::new(client), name).expect("client conn");
        let mut s = ServerConnection::new(Arc::new(server)).expect("server conn");
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("client write");
            }
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).expect("server read");
                s.process_new_packets().map_err(|e| (Side::Server, e))?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("server write");
            }
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).expect("client read");
                c.process_new_packets().map_err(|e| (Side::Client, e))?;
            }
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                return Ok((c, s));
            }
        }
        panic!("handshake did not finish in 20 rounds");
    }

    #[test]
    fn enrollment_with_right_pin_completes_without_client_cert() {
        let col = Collector::new("vigil test CA");
        let client = enroll_client_config(col.pin()).expect("enroll config");
        let (c, s) = handshake(client, col.server_config()).expect("handshake");
        assert!(s.peer_certificates().is_none());
        assert_eq!(c.alpn_protocol(), Some(proto::ALPN));
        assert_eq!(s.alpn_protocol(), Some(proto::ALPN));
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    }

    #[test]
    fn enrollment_with_wrong_pin_fails_on_client() {
        let col = Collector::new("vigil test CA");
        let other = Collector::new("other CA");
        let client = enroll_client_config(other.pin()).expect("enroll config");
        let err = handshake(client, col.server_config()).expect_err("must fail");
        assert!(
            matches!(&err, (Side::Client, rustls::Error::InvalidCertificate(CertificateError::Other(e))) if e.to_string().contains("CA hash")),
            "{err:?}"
        );
    }

    #[test]
    fn enrollment_rejects_pinned_ca_that_did_not_sign_the_server_cert() {
        // An impostor presents the real CA certificate next to a server cert of its own CA.
        let real = Collector::new("real CA");
        let evil = Collector::new("evil CA");
        let server = server_config(&real.ca.cert_pem, &evil.cert, &evil.key).expect("config");
        let client = enroll_client_config(real.pin()).expect("enroll config");
        let err = handshake(client, server).expect_err("must fail");
        assert!(
            matches!(
                err,
                (
                    Side::Client,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn enrollment_rejects_agent_cert_posing_as_server() {
        // An enrolled agent holds a CA-signed cert, but not one for SERVER_NAME / server auth.
        let col = Collector::new("vigil test CA");
        let (agent_cert, agent_key) = col.agent("agent-1");
        let server =
            server_config(&col.ca.cert_pem, &agent_cert, &agent_key).expect("server config");
        let client = enroll_client_config(col.pin()).expect("enroll config");
        let err = handshake(client, server).expect_err("must fail");
        assert!(
            matches!(
                err,
                (
                    Side::Client,
                    rustls::Error::InvalidCertificate(
                        CertificateError::InvalidPurposeContext { .. }
                    )
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn mtls_with_ca_signed_agent_cert_completes() {
        let col = Collector::new("vigil test CA");
        let (cert, key) = col.agent("web-01");
        let client = mtls_client_config(&col.ca.cert_pem, &cert, &key).expect("mtls config");
        let (c, s) = handshake(client, col.server_config()).expect("handshake");
        let peer = s.peer_certificates().expect("client cert");
        assert_eq!(peer_agent_id(peer).expect("agent id"), "web-01");
        assert_eq!(c.alpn_protocol(), Some(proto::ALPN));
    }

    #[test]
    fn server_rejects_client_cert_from_another_ca() {
        let col = Collector::new("vigil test CA");
        let other = Collector::new("other CA");
        let (cert, key) = other.agent("web-01");
        // The client trusts the real collector, but its cert comes from another CA.
        let client = mtls_client_config(&col.ca.cert_pem, &cert, &key).expect("mtls config");
        let err = handshake(client, col.server_config()).expect_err("must fail");
        assert!(
            matches!(
                err,
                (
                    Side::Server,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn server_rejects_expired_agent_cert() {
        let col = Collector::new("vigil test CA");
        let (key, csr) = new_key_and_csr("host1").expect("csr");
        let past = now() - 10 * DAY;
        let cert = sign_agent_csr(&col.ca, &csr, "old", DAY, past).expect("sign");
        let client = mtls_client_config(&col.ca.cert_pem, &cert, &key).expect("mtls config");
        let err = handshake(client, col.server_config()).expect_err("must fail");
        assert!(
            matches!(
                err,
                (
                    Side::Server,
                    rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn mtls_client_rejects_server_from_another_ca() {
        let col = Collector::new("vigil test CA");
        let other = Collector::new("other CA");
        let (cert, key) = col.agent("web-01");
        let client = mtls_client_config(&col.ca.cert_pem, &cert, &key).expect("mtls config");
        let err = handshake(client, other.server_config()).expect_err("must fail");
        assert!(
            matches!(
                err,
                (
                    Side::Client,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn csr_round_trip_uses_only_the_public_key() {
        let col = Collector::new("vigil test CA");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        // The CSR asks for far more than it may get.
        let mut params = CertificateParams::new(vec![proto::SERVER_NAME.to_owned()]).expect("p");
        params.distinguished_name = subject_cn("admin");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");

        let cert_pem = sign_agent_csr(&col.ca, &csr, "db-7", 30 * DAY, now()).expect("sign");
        let der = first_cert(&cert_pem, "cert").expect("der");
        assert_eq!(agent_id_from_cert_der(&der).expect("id"), "db-7");

        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        assert!(!cert.is_ca());
        let names = san_names(&cert);
        assert_eq!(names, ["db-7.agent.vigil"]);
        let eku = cert.extended_key_usage().expect("ext").expect("eku").value;
        assert!(eku.client_auth && !eku.server_auth);
        let ca_der = first_cert(&col.ca.cert_pem, "ca").expect("ca der");
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("parse ca");
        assert_eq!(cert.issuer(), ca.subject());
    }

    #[test]
    fn sign_rejects_bad_agent_id_and_bad_csr() {
        let col = Collector::new("vigil test CA");
        let (_, csr) = new_key_and_csr("host1").expect("csr");
        let sign = |csr: &str, id: &str| sign_agent_csr(&col.ca, csr, id, DAY, now());
        assert!(matches!(
            sign(&csr, "Bad_ID"),
            Err(IdentityError::InvalidAgentId(_))
        ));
        assert!(matches!(
            sign("garbage", "ok"),
            Err(IdentityError::Rcgen(_))
        ));

        // Flip one base64 character inside the signature (the tail of the DER).
        let end = csr.find("-----END").expect("end marker");
        let body: Vec<usize> = csr[..end]
            .char_indices()
            .filter(|(_, ch)| ch.is_ascii_alphanumeric() || *ch == '+' || *ch == '/')
            .map(|(i, _)| i)
            .collect();
        let at = body[body.len() - 10];
        let old = csr.as_bytes()[at];
        let new = if old == b'A' { "B" } else { "A" };
        let tampered = format!("{}{}{}", &csr[..at], new, &csr[at + 1..]);
        assert!(matches!(
            sign(&tampered, "ok"),
            Err(IdentityError::Rcgen(
                rcgen::Error::InvalidCertificationRequestSignature
            ))
        ));
    }

    #[test]
    fn server_cert_names_and_ca_properties() {
        let ca = generate_ca("vigil CA", now()).expect("ca");
        let extra = vec!["collector.example.org".to_owned(), "10.0.0.5".to_owned()];
        let (cert_pem, _) = issue_server_cert(&ca, &extra, now()).expect("server cert");
        let der = first_cert(&cert_pem, "cert").expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let names = san_names(&cert);
        assert_eq!(
            names,
            [
                "vigil-collector",
                "localhost",
                "127.0.0.1",
                "::1",
                "collector.example.org",
                "10.0.0.5",
            ]
        );
        let eku = cert.extended_key_usage().expect("ext").expect("eku").value;
        assert!(eku.server_auth && !eku.client_auth);

        let ca_der = first_cert(&ca.cert_pem, "ca").expect("ca der");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).expect("parse ca");
        assert!(ca_cert.is_ca());
        let ku = ca_cert.key_usage().expect("ext").expect("ku").value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let years = ca_cert
            .validity()
            .time_to_expiration()
            .expect("valid")
            .whole_days()
            / 365;
        assert_eq!(years, 9, "about 10 years minus a bit");

        assert!(matches!(
            issue_server_cert(&ca, &["bad name!".to_owned()], now()),
            Err(IdentityError::InvalidName(_))
        ));
    }

    #[test]
    fn pins() {
        let ca = generate_ca("vigil CA", now()).expect("ca");
        let der = first_cert(&ca.cert_pem, "ca").expect("der");
        let pin = pin_of_pem(&ca.cert_pem).expect("pin");
        assert_eq!(pin, pin_of_der(&der));
        let hex = pin_to_hex(&pin);
        assert_eq!(hex.len(), 64);
        assert_eq!(pin_from_hex(&hex).expect("round trip"), pin);
        assert_eq!(pin_from_hex(&hex.to_uppercase()).expect("upper"), pin);
        // Known vector: SHA-256 of the empty input.
        assert_eq!(
            pin_to_hex(&pin_of_der(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for bad in [
            "",
            "abc",
            &hex[..62],
            &format!("{}zz", &hex[..62]),
            &format!("{hex}00"),
        ] {
            assert!(
                matches!(pin_from_hex(bad), Err(IdentityError::BadPin(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            pin_of_pem("not pem"),
            Err(IdentityError::Pem { .. })
        ));
    }

    #[test]
    fn token_round_trip() {
        let pin = [7u8; 32];
        let token = EnrollToken::generate(pin);
        assert_eq!(token.id.len(), TOKEN_ID_LEN);
        assert_eq!(token.secret.len(), TOKEN_SECRET_LEN);
        let text = token.to_string();
        assert!(text.starts_with("v1."));
        assert_eq!(text.parse::<EnrollToken>().expect("parse"), token);
        assert_eq!(
            format!(" {text}\n").parse::<EnrollToken>().expect("trim"),
            token
        );
        assert!(!format!("{token:?}").contains(&token.secret));
        assert_ne!(EnrollToken::generate(pin), token);
    }

    #[test]
    fn token_parse_errors() {
        let pin = "ab".repeat(32);
        let check = |input: &str, expected: TokenError| {
            assert_eq!(input.parse::<EnrollToken>(), Err(expected), "{input:?}");
        };
        check("", TokenError::Empty);
        check("  \n", TokenError::Empty);
        check(
            &format!("v2.abc.def.{pin}"),
            TokenError::Prefix { found: "v2".into() },
        );
        check(
            "garbage",
            TokenError::Prefix {
                found: "garbage".into(),
            },
        );
        check("v1.abc.def", TokenError::PartCount { found: 3 });
        check(
            &format!("v1.abc.def.{pin}.x"),
            TokenError::PartCount { found: 5 },
        );
        check(&format!("v1..def.{pin}"), TokenError::Field { field: "id" });
        check(
            &format!("v1.a-b.def.{pin}"),
            TokenError::Field { field: "id" },
        );
        check(
            &format!("v1.abc..{pin}"),
            TokenError::Field { field: "secret" },
        );
        check(
            &format!("v1.abc.d/f.{pin}"),
            TokenError::Field { field: "secret" },
        );
        check(
            "v1.abc.def.1234",
            TokenError::Pin("expected 64 hex characters, got 4".into()),
        );
        check(
            &format!("v1.abc.def.{}", "zz".repeat(32)),
            TokenError::Pin("Invalid character 'z' at position 0".into()),
        );
        let ok: EnrollToken = format!("v1.abc.def.{pin}").parse().expect("valid");
        assert_eq!(
            (ok.id.as_str(), ok.secret.as_str(), ok.ca_pin),
            ("abc", "def", [0xab; 32])
        );
    }

    #[test]
    fn token_error_does_not_echo_secret() {
        let err = "v9.id.supersecretvalue.00"
            .parse::<EnrollToken>()
            .expect_err("bad");
        assert!(!err.to_string().contains("supersecret"));
    }

    #[test]
    fn agent_id_validation() {
        let check = |id: &str, expected: bool| assert_eq!(valid_agent_id(id), expected, "{id:?}");
        check("a", true);
        check("web-01", true);
        check("0123456789abcdef", true);
        check(&"a".repeat(64), true);
        check("", false);
        check(&"a".repeat(65), false);
        check("Web-01", false);
        check("web_01", false);
        check("web.01", false);
        check("web 01", false);
        check("wéb", false);
        for _ in 0..10 {
            let id = new_agent_id();
            assert_eq!(id.len(), 16);
            check(&id, true);
        }
        assert_ne!(new_agent_id(), new_agent_id());
    }

    #[test]
    fn agent_id_from_cert_rejects_non_agent_certs() {
        let col = Collector::new("vigil test CA");
        let der = first_cert(&col.ca.cert_pem, "ca").expect("der");
        // The CA's CN "vigil test CA" is not an agent id.
        assert!(matches!(
            agent_id_from_cert_der(&der),
            Err(IdentityError::InvalidAgentId(_))
        ));
        assert!(matches!(
            agent_id_from_cert_der(b"junk"),
            Err(IdentityError::X509(_))
        ));
        assert!(matches!(
            peer_agent_id(&[]),
            Err(IdentityError::NoPeerCertificate)
        ));
    }

    #[test]
    fn secrets() {
        let s = random_secret(32);
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_secret(32), s);
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(secret_matches(&hash_secret(&s), &s));
        assert!(!secret_matches(&hash_secret(&s), "other"));
        assert!(!secret_matches("", &s));
    }

    #[test]
    fn ca_debug_redacts_key() {
        let ca = generate_ca("vigil CA", now()).expect("ca");
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
