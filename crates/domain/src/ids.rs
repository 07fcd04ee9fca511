//! Names and identifiers: what a stream name, a tenant name or an identifier
//! may look like.
//!
//! DESIGN.md "Identifiers": subjects, client ids, tenant names, audiences and
//! scopes must be valid UTF-8 in Unicode NFC (UAX #15), so that one name can
//! never become two identities. We also refuse control characters, bidi
//! overrides and other invisible format characters, which make two names look
//! alike to a person.

use unicode_normalization::{IsNormalized, is_nfc_quick};

/// Why a name was refused. Every variant becomes a 422 problem at the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field that was checked.
        field: &'static str,
    },
    /// The name is longer than allowed (in bytes).
    #[error("{field} is longer than {max} bytes")]
    TooLong {
        /// The field that was checked.
        field: &'static str,
        /// The maximum length in bytes.
        max: usize,
    },
    /// The name is not in Unicode Normalization Form C.
    #[error("{field} is not in Unicode NFC")]
    NotNfc {
        /// The field that was checked.
        field: &'static str,
    },
    /// A list repeats an item.
    #[error("{field} repeats {value:?}")]
    Repeated {
        /// The field that was checked.
        field: &'static str,
        /// The repeated item.
        value: String,
    },
    /// The name holds a character that is not allowed there.
    #[error("{field} contains a character that is not allowed: U+{code:04X}")]
    BadChar {
        /// The field that was checked.
        field: &'static str,
        /// The offending code point.
        code: u32,
    },
}

/// Longest identifier we accept, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// Checks an identifier (subject, client id, audience, issuer, scope token,
/// principal name): non-empty, at most [`MAX_IDENTIFIER_BYTES`], NFC, and free
/// of whitespace, control and invisible format characters (Unicode category
/// Cc / Cf / Zl / Zp / Zs).
pub fn check_identifier(field: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { field });
    }
    if s.len() > MAX_IDENTIFIER_BYTES {
        return Err(NameError::TooLong {
            field,
            max: MAX_IDENTIFIER_BYTES,
        });
    }
    check_text(field, s)?;
    if let Some(c) = s.chars().find(|c| c.is_whitespace()) {
        return Err(NameError::BadChar { field, code: c as u32 });
    }
    Ok(())
}

/// Checks free text that is stored but never used as an identity (a reason, a
/// user agent): NFC and free of control and invisible format characters;
/// ordinary spaces are allowed.
pub fn check_text(field: &'static str, s: &str) -> Result<(), NameError> {
    if is_nfc_quick(s.chars()) != IsNormalized::Yes && !unicode_normalization::is_nfc(s) {
        return Err(NameError::NotNfc { field });
    }
    if let Some(c) = s.chars().find(|&c| is_invisible_or_control(c) && c != ' ') {
        return Err(NameError::BadChar { field, code: c as u32 });
    }
    Ok(())
}

/// Checks a space-delimited scope (RFC 6749 §3.3, RFC 8693 §4.2): one or
/// more identifiers separated by single spaces, none repeated.
pub fn check_scope(field: &'static str, scope: &str) -> Result<(), NameError> {
    if scope.is_empty() {
        return Err(NameError::Empty { field });
    }
    let mut seen = std::collections::BTreeSet::new();
    for tok in scope.split(' ') {
        check_identifier(field, tok)?;
        if !seen.insert(tok) {
            return Err(NameError::Repeated {
                field,
                value: tok.to_owned(),
            });
        }
    }
    Ok(())
}

fn is_invisible_or_control(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2028}' | '\u{2029}' | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Longest stream name, in bytes.
pub const MAX_STREAM_BYTES: usize = 200;

/// Checks a stream name: 1 to [`MAX_STREAM_BYTES`] bytes of ASCII letters,
/// digits and `. _ ~ : @ -`, starting with a letter or digit. Names starting
/// with `$` are KurrentDB system streams and are never user streams.
pub fn check_stream_name(s: &str) -> Result<(), NameError> {
    const F: &str = "stream";
    if s.is_empty() {
        return Err(NameError::Empty { field: F });
    }
    if s.len() > MAX_STREAM_BYTES {
        return Err(NameError::TooLong {
            field: F,
            max: MAX_STREAM_BYTES,
        });
    }
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || (i > 0 && matches!(c, '.' | '_' | '~' | ':' | '@' | '-'));
        if !ok {
            return Err(NameError::BadChar {
                field: F,
                code: c as u32,
            });
        }
    }
    Ok(())
}

/// Checks a tenant name: 1 to 63 bytes of lower-case ASCII letters, digits and
/// `-`, starting with a letter or digit (so it is also a valid DNS label and
/// KurrentDB stream prefix).
pub fn check_tenant(s: &str) -> Result<(), NameError> {
    const F: &str = "tenant";
    if s.is_empty() {
        return Err(NameError::Empty { field: F });
    }
    if s.len() > 63 {
        return Err(NameError::TooLong { field: F, max: 63 });
    }
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && c == '-');
        if !ok {
            return Err(NameError::BadChar {
                field: F,
                code: c as u32,
            });
        }
    }
    Ok(())
}

/// The prefix of every token stream: `token-<jti>`.
pub const TOKEN_STREAM_PREFIX: &str = "token-";

/// The stream of one token, `token-<jti>`.
pub fn token_stream(token_id: &str) -> String {
    format!("{TOKEN_STREAM_PREFIX}{token_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_is_required() {
        assert!(check_identifier("subject", "caf\u{e9}").is_ok());
        assert_eq!(
            check_identifier("subject", "cafe\u{301}"),
            Err(NameError::NotNfc { field: "subject" })
        );
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for bad in ["al\u{200B}ice", "alice\u{202E}", "a\u{0}b", "a b", "a\tb", "\u{FEFF}x"] {
            assert!(check_identifier("subject", bad).is_err(), "{bad:?}");
        }
        assert!(check_text("reason", "a plain reason").is_ok());
        assert!(check_text("reason", "bidi \u{202E}trick").is_err());
    }

    #[test]
    fn scopes_are_single_space_delimited_without_repeats() {
        assert!(check_scope("scope", "orders:read orders:write").is_ok());
        assert!(check_scope("scope", "orders:read  orders:write").is_err());
        assert!(check_scope("scope", "a a").is_err());
        assert!(check_scope("scope", "").is_err());
    }

    #[test]
    fn stream_and_tenant_names() {
        assert!(check_stream_name("token-6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f").is_ok());
        assert!(check_stream_name("$all").is_err());
        assert!(check_stream_name("-x").is_err());
        assert!(check_stream_name("a/b").is_err());
        assert!(check_stream_name(&"a".repeat(201)).is_err());
        assert!(check_tenant("acme-eu").is_ok());
        assert!(check_tenant("Acme").is_err());
        assert!(check_tenant("-acme").is_err());
    }
}
