//! Key generation and PASERK ids (`k4.pid.…` for public keys, `k4.lid.…`
//! for local keys; PASERK "ID" operation).

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate, SymmetricKey};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::version4::V4;
use tokenledger_domain::events::KeyPurpose;

/// A key that signs (public) or encrypts (local) tokens.
pub enum SigningKey {
    /// Ed25519 secret key for `v4.public`.
    Public(AsymmetricSecretKey<V4>),
    /// Symmetric key for `v4.local`.
    Local(SymmetricKey<V4>),
}

/// A key that verifies (public) or decrypts (local) tokens.
#[derive(Clone)]
pub enum VerifyingKey {
    /// Ed25519 public key.
    Public(AsymmetricPublicKey<V4>),
    /// Symmetric key.
    Local(SymmetricKey<V4>),
}

/// Key errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key bytes or PASERK string are not a v4 key of that purpose.
    #[error("not a valid v4 key: {0}")]
    Invalid(String),
}

/// A freshly generated key: its id, its PASERK public form (public keys),
/// and its secret bytes (to be sealed at once).
pub struct GeneratedKey {
    /// `k4.pid.…` or `k4.lid.…`.
    pub kid: String,
    /// Public or local.
    pub purpose: KeyPurpose,
    /// `k4.public.…` for public keys.
    pub public_key: Option<String>,
    /// The secret bytes: Ed25519 secret key (64 bytes) or local key (32 bytes).
    pub secret: Vec<u8>,
}

impl GeneratedKey {
    /// The signing key.
    pub fn signing_key(&self) -> Result<SigningKey, KeyError> {
        signing_key(self.purpose, &self.secret)
    }

    /// The verifying key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        match self.purpose {
            KeyPurpose::Public => public_key(self.public_key.as_deref().unwrap_or_default()),
            KeyPurpose::Local => Ok(VerifyingKey::Local(
                SymmetricKey::<V4>::from(&self.secret).map_err(|e| KeyError::Invalid(format!("{e:?}")))?,
            )),
        }
    }
}

fn paserk(k: &dyn FormatAsPaserk) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = k.fmt(&mut s);
    s
}

/// Generates a key of `purpose` from the operating system's CSPRNG.
pub fn generate(purpose: KeyPurpose) -> Result<GeneratedKey, KeyError> {
    let inv = |e: pasetors::errors::Error| KeyError::Invalid(format!("{e:?}"));
    match purpose {
        KeyPurpose::Public => {
            let pair = AsymmetricKeyPair::<V4>::generate().map_err(inv)?;
            Ok(GeneratedKey {
                kid: paserk(&Id::from(&pair.public)),
                purpose,
                public_key: Some(paserk(&pair.public)),
                secret: pair.secret.as_bytes().to_vec(),
            })
        }
        KeyPurpose::Local => {
            let k = SymmetricKey::<V4>::generate().map_err(inv)?;
            Ok(GeneratedKey {
                kid: paserk(&Id::from(&k)),
                purpose,
                public_key: None,
                secret: k.as_bytes().to_vec(),
            })
        }
    }
}

/// The signing key of `purpose` from its (unsealed) secret bytes.
pub fn signing_key(purpose: KeyPurpose, secret: &[u8]) -> Result<SigningKey, KeyError> {
    let inv = |e: pasetors::errors::Error| KeyError::Invalid(format!("{e:?}"));
    // ed25519-compact panics on an all-zero seed; refuse it here instead.
    if purpose == KeyPurpose::Public && secret.len() >= 32 && secret[..32].iter().all(|b| *b == 0) {
        return Err(KeyError::Invalid("all-zero Ed25519 seed".into()));
    }
    Ok(match purpose {
        KeyPurpose::Public => SigningKey::Public(AsymmetricSecretKey::<V4>::from(secret).map_err(inv)?),
        KeyPurpose::Local => SigningKey::Local(SymmetricKey::<V4>::from(secret).map_err(inv)?),
    })
}

/// The verifying key of a local key from its (unsealed) secret bytes.
pub fn local_key(secret: &[u8]) -> Result<VerifyingKey, KeyError> {
    SymmetricKey::<V4>::from(secret)
        .map(VerifyingKey::Local)
        .map_err(|e| KeyError::Invalid(format!("{e:?}")))
}

/// A public key from its PASERK `k4.public.…` form.
pub fn public_key(paserk_public: &str) -> Result<VerifyingKey, KeyError> {
    AsymmetricPublicKey::<V4>::try_from(paserk_public)
        .map(VerifyingKey::Public)
        .map_err(|e| KeyError::Invalid(format!("{e:?}")))
}

/// The PASERK id (`k4.pid.…`) of a `k4.public.…` key, `None` if it is not one.
pub fn kid_of_public(paserk_public: &str) -> Option<String> {
    AsymmetricPublicKey::<V4>::try_from(paserk_public)
        .ok()
        .map(|k| paserk(&Id::from(&k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_paserk_ids_of_the_right_kind() {
        let p = generate(KeyPurpose::Public).unwrap();
        assert!(p.kid.starts_with("k4.pid."));
        assert!(p.public_key.as_deref().unwrap().starts_with("k4.public."));
        assert_eq!(
            kid_of_public(p.public_key.as_deref().unwrap()).as_deref(),
            Some(p.kid.as_str())
        );
        let l = generate(KeyPurpose::Local).unwrap();
        assert!(l.kid.starts_with("k4.lid."));
        assert!(l.public_key.is_none());
        assert!(kid_of_public("k4.public.nope").is_none());
        assert!(signing_key(KeyPurpose::Public, &[0u8; 64]).is_err());
    }
}
