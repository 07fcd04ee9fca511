//! Sealing secret key material under the key-encryption key (KEK) with an
//! AEAD: XChaCha20-Poly1305, a random 192-bit nonce per seal, and the tenant
//! and kid as associated data, so a sealed key moved to another tenant or
//! kid does not open (DESIGN.md "Secrets and transport").
//!
//! Sealed form: base64url (no padding) of `nonce (24 bytes) || ciphertext`.
//!
//! The KEK also keys [`Kek::derive_id`]: identifiers a caller must not be
//! able to predict (idempotent mints) are HMAC-SHA256 under a subkey derived
//! from the KEK, never under the KEK itself.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The info string of the identifier subkey: `HMAC-SHA256(KEK, this)`.
const ID_SUBKEY_INFO: &[u8] = b"tokenledger-kek-subkey-v1\0derive-id";

/// Why a sealed key did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not base64url, or too short.
    #[error("sealed key is malformed")]
    Malformed,
    /// Wrong KEK, wrong tenant or kid, or tampered ciphertext.
    #[error("sealed key does not open under this key-encryption key, tenant and kid")]
    Open,
    /// Encryption failed.
    #[error("sealing failed")]
    Seal,
}

/// The key-encryption key: 256 bits.
#[derive(Clone)]
pub struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

fn aad(tenant: &str, kid: &str) -> Vec<u8> {
    let mut a = b"tokenledger-sealed-key-v1\0".to_vec();
    a.extend_from_slice(tenant.as_bytes());
    a.push(0);
    a.extend_from_slice(kid.as_bytes());
    a
}

impl Kek {
    /// A KEK from 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random KEK.
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Self(k)
    }

    /// The raw bytes, for writing the KEK file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Seals `secret` for `kid` in `tenant`.
    pub fn seal(&self, tenant: &str, kid: &str, secret: &[u8], rng: &mut impl RngCore) -> Result<String, SealError> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad(tenant, kid),
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// A keyed identifier of `data` in the domain `label`: HMAC-SHA256 over
    /// `len(label) (8 bytes, big-endian) || label || data`, keyed by a subkey
    /// derived from the KEK (`HMAC-SHA256(KEK, "tokenledger-kek-subkey-v1\0derive-id")`),
    /// so the KEK itself keys nothing but seals. Deterministic under one KEK;
    /// unpredictable without it. Distinct labels give independent values.
    pub fn derive_id(&self, label: &str, data: &[u8]) -> [u8; 32] {
        let mut sub = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        sub.update(ID_SUBKEY_INFO);
        let subkey = sub.finalize().into_bytes();
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&subkey).expect("HMAC takes any key length");
        mac.update(&(label.len() as u64).to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Opens a sealed secret of `kid` in `tenant`.
    pub fn open(&self, tenant: &str, kid: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| SealError::Malformed)?;
        if raw.len() < 24 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = raw.split_at(24);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &aad(tenant, kid),
                },
            )
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_under_their_kek_tenant_and_kid() {
        let kek = Kek::generate(&mut rand::rng());
        let sealed = kek.seal("acme", "k4.pid.x", b"secret", &mut rand::rng()).unwrap();
        assert!(!sealed.contains("secret"));
        assert_eq!(kek.open("acme", "k4.pid.x", &sealed).unwrap(), b"secret");
        assert_eq!(kek.open("other", "k4.pid.x", &sealed), Err(SealError::Open));
        assert_eq!(kek.open("acme", "k4.pid.y", &sealed), Err(SealError::Open));
        let other = Kek::generate(&mut rand::rng());
        assert_eq!(other.open("acme", "k4.pid.x", &sealed), Err(SealError::Open));
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            kek.open("acme", "k4.pid.x", std::str::from_utf8(&tampered).unwrap())
                .is_err()
        );
        assert_eq!(kek.open("acme", "k4.pid.x", "short"), Err(SealError::Malformed));
    }

    #[test]
    fn derived_ids_are_keyed_label_separated_and_stable() {
        let kek = Kek::from_bytes([7; 32]);
        let a = kek.derive_id("mint-jti", b"acme\0client\0key");
        // Known answer, computed independently (Python hmac/hashlib).
        assert_eq!(
            hex::encode(a),
            "7e816f426a8e7716132c31454d079b06ef5370fa0a14ea94fe4af6d49af3e125"
        );
        // Deterministic under one KEK.
        assert_eq!(a, Kek::from_bytes([7; 32]).derive_id("mint-jti", b"acme\0client\0key"));
        // Another KEK, label or input gives another value.
        assert_ne!(a, Kek::from_bytes([8; 32]).derive_id("mint-jti", b"acme\0client\0key"));
        assert_ne!(a, kek.derive_id("issued-event-id", b"acme\0client\0key"));
        assert_ne!(a, kek.derive_id("mint-jti", b"acme\0client\0kez"));
        // The label is length-prefixed: moving bytes between label and data
        // does not collide.
        assert_ne!(kek.derive_id("ab", b"c"), kek.derive_id("a", b"bc"));
        // Not HMAC keyed by the KEK itself (the subkey is derived).
        let mut direct = <HmacSha256 as Mac>::new_from_slice(&[7; 32]).unwrap();
        direct.update(&8u64.to_be_bytes());
        direct.update(b"mint-jti");
        direct.update(b"acme\0client\0key");
        let direct: [u8; 32] = direct.finalize().into_bytes().into();
        assert_ne!(a, direct);
        // The output does not contain the KEK.
        assert!(!a.windows(8).any(|w| w == [7; 8]));
    }
}
