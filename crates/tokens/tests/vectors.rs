//! The public PASETO v4 and PASERK k4 test vectors, checked against what this
//! crate stands on: pasetors' v4 tokens, PASERK keys and key ids, and our own
//! `paseto::inspect` and `keys::kid_of_public`.
//!
//! The vectors are paseto-standard/test-vectors at commit `32d7406`, copied
//! unedited into `shared/data/vectors/paseto/` (see PROVENANCE.md there). They
//! are read at test time from the `shared/` folder beside the checkout; when
//! that folder is missing these tests fail, they never pass vacuously. Every
//! file's count of vectors is pinned to the count PROVENANCE.md records, so a
//! truncated or emptied file fails too.
//!
//! Time: every vector payload expires on 2022-01-01. The token checks here run
//! at the library layer, `PublicToken::verify` and `LocalToken::decrypt` on raw
//! payload bytes, which parse no claims and never read the system clock: a
//! pinned clock in effect, so no time check is applied at this layer.

use pasetors::errors::Error;
use pasetors::keys::{AsymmetricPublicKey, AsymmetricSecretKey, SymmetricKey};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::{TrustedToken, UntrustedToken};
use pasetors::version4::{LocalToken, PublicToken, V4};
use pasetors::{Local, Public};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use tokenledger_tokens::keys::kid_of_public;
use tokenledger_tokens::paseto::{OpenError, inspect};

// ---------------------------------------------------------------------------
// Reading the vectors
// ---------------------------------------------------------------------------

/// `shared/data/vectors`, beside the repository checkout.
fn vectors_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/vectors");
    assert!(
        dir.join("paseto").is_dir(),
        "the PASETO test vectors are missing: expected the folder {} (the `shared/` folder beside the \
         repository checkout); these tests refuse to pass without them",
        dir.join("paseto").display()
    );
    dir
}

fn read_vectors<T: DeserializeOwned>(relative: &str) -> Vec<T> {
    #[derive(Deserialize)]
    struct VectorFile<T> {
        tests: Vec<T>,
    }
    let path = vectors_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the test vectors {}: {e}", path.display()));
    serde_json::from_str::<VectorFile<T>>(&text)
        .unwrap_or_else(|e| panic!("{} is not a test-vector file: {e}", path.display()))
        .tests
}

fn unhex(name: &str, field: &str, hex: &str) -> Vec<u8> {
    hex::decode(hex).unwrap_or_else(|e| panic!("{name}: `{field}` is not hex: {e}"))
}

/// One test of `paseto/v4.json`.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct TokenVector {
    name: String,
    expect_fail: bool,
    token: String,
    /// `null` for the vectors expected to fail.
    payload: Option<String>,
    footer: String,
    implicit_assertion: String,
    /// The symmetric key: the vector is opened as `v4.local`.
    key: Option<String>,
    nonce: Option<String>,
    /// The Ed25519 key pair: the vector is opened as `v4.public`.
    public_key: Option<String>,
    secret_key: Option<String>,
    secret_key_seed: Option<String>,
}

impl TokenVector {
    /// pasetors reads `Some(footer)` as "this footer must be present and
    /// equal", so the vectors' empty footer is passed as `None`.
    fn footer(&self) -> Option<&[u8]> {
        (!self.footer.is_empty()).then_some(self.footer.as_bytes())
    }

    fn implicit_assertion(&self) -> Option<&[u8]> {
        Some(self.implicit_assertion.as_bytes())
    }

    /// The key material decides how a vector is opened, whatever its token
    /// says: 4-F-1 is a `v4.local` token offered to a public key, 4-F-2 a
    /// `v4.public` token offered to a symmetric key.
    fn is_local(&self) -> bool {
        match (&self.key, &self.public_key) {
            (Some(_), None) => true,
            (None, Some(_)) => false,
            _ => panic!(
                "{}: a v4 vector carries exactly one of `key` and `public-key`",
                self.name
            ),
        }
    }

    fn assert_opened_as_expected(&self, trusted: &TrustedToken) {
        let name = &self.name;
        let payload = self
            .payload
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: no payload to compare"));
        assert_eq!(trusted.payload().as_bytes(), payload.as_bytes(), "{name}: payload");
        assert_eq!(trusted.footer(), self.footer.as_bytes(), "{name}: footer");
        assert_eq!(
            trusted.implicit_assert(),
            self.implicit_assertion.as_bytes(),
            "{name}: implicit assertion"
        );
    }
}

/// `paseto/v4.json`: 17 tests according to PROVENANCE.md.
const V4_VECTORS: usize = 17;

fn v4_vectors() -> Vec<TokenVector> {
    let vectors: Vec<TokenVector> = read_vectors("paseto/v4.json");
    assert_eq!(vectors.len(), V4_VECTORS, "paseto/v4.json: number of vectors");
    vectors
}

// ---------------------------------------------------------------------------
// PASETO v4 tokens, at the library layer
// ---------------------------------------------------------------------------

/// Opens a `v4.local` vector: parse, then decrypt with the vector's footer and
/// implicit assertion. The error says which step refused.
fn decrypt(key: &SymmetricKey<V4>, v: &TokenVector) -> Result<TrustedToken, String> {
    let untrusted =
        UntrustedToken::<Local, V4>::try_from(v.token.as_str()).map_err(|e| format!("not a v4.local token ({e:?})"))?;
    LocalToken::decrypt(key, &untrusted, v.footer(), v.implicit_assertion())
        .map_err(|e| format!("does not decrypt ({e:?})"))
}

/// Opens a `v4.public` vector: parse, then verify with the vector's footer and
/// implicit assertion. The error says which step refused.
fn verify(key: &AsymmetricPublicKey<V4>, v: &TokenVector) -> Result<TrustedToken, String> {
    let untrusted = UntrustedToken::<Public, V4>::try_from(v.token.as_str())
        .map_err(|e| format!("not a v4.public token ({e:?})"))?;
    PublicToken::verify(key, &untrusted, v.footer(), v.implicit_assertion())
        .map_err(|e| format!("does not verify ({e:?})"))
}

#[test]
fn every_v4_vector_is_opened_either_as_local_or_as_public() {
    let vectors = v4_vectors();
    let local = vectors.iter().filter(|v| v.is_local()).count();
    let public = vectors.iter().filter(|v| !v.is_local()).count();
    assert!(
        local > 0 && public > 0,
        "v4.json: {local} local and {public} public vectors"
    );
    assert_eq!(local + public, vectors.len());
    println!(
        "paseto/v4.json: {} vectors, {local} with a symmetric key, {public} with a key pair",
        vectors.len()
    );
}

#[test]
fn every_v4_local_vector_decrypts_or_fails_as_expected() {
    // 4-F-4 and 4-F-5 test the encoding, not the cryptography: 4-F-4 is 4-E-1
    // with a last base64 character whose unused low bits are set, 4-F-5 is
    // 4-E-5 with `==` padding. Decoded leniently, both are those valid tokens
    // byte for byte; pasetors' strict unpadded base64 refuses them on parsing.
    let vectors = v4_vectors();
    let (mut checked, mut refused) = (0, 0);
    for v in vectors.iter().filter(|v| v.is_local()) {
        let name = &v.name;
        let key_bytes = unhex(name, "key", v.key.as_deref().unwrap_or_default());
        let key = SymmetricKey::<V4>::from(&key_bytes).unwrap_or_else(|e| panic!("{name}: key: {e:?}"));
        match (v.expect_fail, decrypt(&key, v)) {
            (true, Err(why)) => {
                println!("{name}: refused as expected: {why}");
                refused += 1;
            }
            (true, Ok(t)) => panic!("{name}: must not open, but decrypted to {:?}", t.payload()),
            (false, Err(why)) => panic!("{name}: must decrypt, but {why}"),
            (false, Ok(trusted)) => {
                v.assert_opened_as_expected(&trusted);
                // pasetors keeps `encrypt_with_nonce` pub(crate), so the token
                // cannot be re-made from the vector's nonce here; encryption
                // is covered by pasetors' own run of these vectors. What can
                // be checked is that the token carries that nonce.
                let nonce = unhex(name, "nonce", v.nonce.as_deref().unwrap_or_default());
                let untrusted = UntrustedToken::<Local, V4>::try_from(v.token.as_str()).unwrap();
                assert_eq!(&untrusted.untrusted_message()[..32], nonce.as_slice(), "{name}: nonce");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, vectors.iter().filter(|v| v.is_local()).count());
    println!("paseto/v4.json: {checked} v4.local vectors checked ({refused} refused as expected)");
}

#[test]
fn every_v4_public_vector_verifies_or_fails_as_expected() {
    let vectors = v4_vectors();
    let (mut checked, mut refused) = (0, 0);
    for v in vectors.iter().filter(|v| !v.is_local()) {
        let name = &v.name;
        let pk_bytes = unhex(name, "public-key", v.public_key.as_deref().unwrap_or_default());
        let sk_bytes = unhex(name, "secret-key", v.secret_key.as_deref().unwrap_or_default());
        let seed = unhex(
            name,
            "secret-key-seed",
            v.secret_key_seed.as_deref().unwrap_or_default(),
        );
        let pk = AsymmetricPublicKey::<V4>::from(&pk_bytes).unwrap_or_else(|e| panic!("{name}: public key: {e:?}"));
        // pasetors checks that the secret key is seed || public key of that seed.
        let sk = AsymmetricSecretKey::<V4>::from(&sk_bytes).unwrap_or_else(|e| panic!("{name}: secret key: {e:?}"));
        assert_eq!(
            &sk.as_bytes()[..32],
            seed.as_slice(),
            "{name}: the secret key starts with its seed"
        );
        assert_eq!(
            AsymmetricPublicKey::<V4>::try_from(&sk).unwrap().as_bytes(),
            pk.as_bytes(),
            "{name}: the public key is the secret key's"
        );
        match (v.expect_fail, verify(&pk, v)) {
            (true, Err(why)) => {
                println!("{name}: refused as expected: {why}");
                refused += 1;
            }
            (true, Ok(t)) => panic!("{name}: must not open, but verified with payload {:?}", t.payload()),
            (false, Err(why)) => panic!("{name}: must verify, but {why}"),
            (false, Ok(trusted)) => {
                v.assert_opened_as_expected(&trusted);
                // Ed25519 is deterministic: signing the payload again gives
                // the very same token.
                let payload = v.payload.as_deref().unwrap_or_default().as_bytes();
                let signed = PublicToken::sign(&sk, payload, v.footer(), v.implicit_assertion())
                    .unwrap_or_else(|e| panic!("{name}: sign: {e:?}"));
                assert_eq!(signed, v.token, "{name}: signing the payload reproduces the token");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, vectors.iter().filter(|v| !v.is_local()).count());
    println!("paseto/v4.json: {checked} v4.public vectors checked ({refused} refused as expected)");
}

// ---------------------------------------------------------------------------
// Our layer: a token without a PASERK kid in its footer is malformed
// ---------------------------------------------------------------------------

#[test]
fn no_v4_vector_carries_a_paserk_kid_so_inspect_calls_every_one_malformed() {
    let vectors = v4_vectors();
    let mut checked = 0;
    for v in &vectors {
        // The vectors' footers are empty, a non-JSON string, or JSON whose
        // `kid` is a bare string with no `k4.pid.`/`k4.lid.` header.
        if let Ok(serde_json::Value::Object(footer)) = serde_json::from_str(&v.footer) {
            let kid = footer.get("kid").and_then(|k| k.as_str()).unwrap_or_default();
            assert!(
                Id::try_from(kid).is_err(),
                "{}: footer kid {kid:?} parses as a PASERK id",
                v.name
            );
        }
        assert_eq!(inspect(&v.token), Err(OpenError::Malformed), "{}: inspect", v.name);
        checked += 1;
    }
    assert_eq!(checked, vectors.len());
    println!("paseto/v4.json: inspect called all {checked} vector tokens malformed");
}

// ---------------------------------------------------------------------------
// PASERK k4
// ---------------------------------------------------------------------------

/// One test of a `PASERK/k4.*.json` file.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct PaserkVector {
    name: String,
    expect_fail: bool,
    key: Option<String>,
    paserk: Option<String>,
}

/// The PASERK k4 files this suite checks, each with its number of vectors
/// according to PASERK/PROVENANCE.md.
const CHECKED_PASERK: [(&str, usize); 6] = [
    ("k4.local.json", 5),
    ("k4.public.json", 4),
    ("k4.secret.json", 5),
    ("k4.lid.json", 4),
    ("k4.pid.json", 5),
    ("k4.sid.json", 4),
];

/// The PASERK k4 files for operations pasetors 0.8.1 does not implement, so
/// there is nothing of ours to check them against.
const SKIPPED_PASERK: [(&str, &str); 5] = [
    ("k4.seal.json", "PASERK seal (X25519 key sealing) is not in pasetors"),
    ("k4.local-wrap.pie.json", "PIE key wrapping is not in pasetors"),
    ("k4.secret-wrap.pie.json", "PIE key wrapping is not in pasetors"),
    ("k4.local-pw.json", "password wrapping (Argon2id) is not in pasetors"),
    ("k4.secret-pw.json", "password wrapping (Argon2id) is not in pasetors"),
];

/// Vectors pasetors is known not to accept: k4.secret-1 and k4.sid-1 use the
/// all-zero Ed25519 seed, and `AsymmetricSecretKey::<V4>::from` panics on it
/// (documented in pasetors; ed25519-compact's `KeyPair::from_seed` refuses an
/// all-zero seed). pasetors skips them in its own run of the vectors. They
/// are checked to be refused, so that a pasetors that accepts them shows here.
const KNOWN_REFUSED: [&str; 2] = ["k4.secret-1", "k4.sid-1"];

fn paserk_vectors(file: &str) -> Vec<PaserkVector> {
    let (_, count) = CHECKED_PASERK
        .iter()
        .find(|(f, _)| *f == file)
        .unwrap_or_else(|| panic!("{file} is not listed in CHECKED_PASERK"));
    let vectors: Vec<PaserkVector> = read_vectors(&format!("paseto/PASERK/{file}"));
    assert_eq!(vectors.len(), *count, "PASERK/{file}: number of vectors");
    vectors
}

fn paserk_of(k: &dyn FormatAsPaserk) -> String {
    let mut s = String::new();
    k.fmt(&mut s).expect("formatting into a String");
    s
}

/// A pasetors call that may panic rather than return an error (see
/// [`KNOWN_REFUSED`]); a panic counts as a refusal.
fn refusing_panics<K>(f: impl FnOnce() -> Result<K, Error>) -> Result<K, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| format!("{e:?}")),
        Err(_) => Err("panicked".into()),
    }
}

/// How one k4 key type is built from raw bytes, parsed from PASERK, and read.
struct KeyType<K> {
    from_bytes: fn(&[u8]) -> Result<K, Error>,
    parse: fn(&str) -> Result<K, Error>,
    bytes: fn(&K) -> &[u8],
}

const LOCAL: KeyType<SymmetricKey<V4>> = KeyType {
    from_bytes: SymmetricKey::<V4>::from,
    parse: |s| SymmetricKey::<V4>::try_from(s),
    bytes: SymmetricKey::<V4>::as_bytes,
};
const PUBLIC: KeyType<AsymmetricPublicKey<V4>> = KeyType {
    from_bytes: AsymmetricPublicKey::<V4>::from,
    parse: |s| AsymmetricPublicKey::<V4>::try_from(s),
    bytes: AsymmetricPublicKey::<V4>::as_bytes,
};
const SECRET: KeyType<AsymmetricSecretKey<V4>> = KeyType {
    from_bytes: AsymmetricSecretKey::<V4>::from,
    parse: |s| AsymmetricSecretKey::<V4>::try_from(s),
    bytes: AsymmetricSecretKey::<V4>::as_bytes,
};

/// Checks one file against an operation on a key built from the vector's
/// bytes: `expect` gives the operation's PASERK string and checks the way
/// back. A vector expected to fail must be refused: its key bytes must not
/// make a key, and its PASERK string must not parse.
fn check_paserk_file<K>(file: &str, kt: &KeyType<K>, expect: impl Fn(&str, &K, &str)) -> usize {
    let vectors = paserk_vectors(file);
    let mut checked = 0;
    for v in &vectors {
        let name = v.name.as_str();
        let key_bytes = v.key.as_deref().map(|k| unhex(name, "key", k));
        let built = key_bytes.as_deref().map(|b| refusing_panics(|| (kt.from_bytes)(b)));
        if KNOWN_REFUSED.contains(&name) {
            assert!(
                !v.expect_fail,
                "{name}: listed as known-refused but expected to fail anyway"
            );
            let Some(Err(why)) = built else {
                panic!("{name}: pasetors now accepts this key; remove it from KNOWN_REFUSED");
            };
            println!("PASERK/{file}: {name}: pasetors refuses this valid vector ({why}), as known");
        } else if v.expect_fail {
            if let Some(built) = built {
                assert!(built.is_err(), "{name}: the key bytes must not make a k4 key");
            }
            if let Some(paserk) = &v.paserk {
                let parsed = refusing_panics(|| (kt.parse)(paserk));
                assert!(parsed.is_err(), "{name}: {paserk:?} must not parse");
            }
            assert!(v.key.is_some() || v.paserk.is_some(), "{name}: nothing to refuse");
        } else {
            let (Some(Ok(key)), Some(paserk)) = (built, v.paserk.as_deref()) else {
                panic!("{name}: a valid vector's key bytes must make a key and it must have a PASERK");
            };
            expect(name, &key, paserk);
        }
        checked += 1;
    }
    assert_eq!(checked, vectors.len());
    println!("PASERK/{file}: {checked} vectors checked");
    checked
}

/// Serialization: key bytes → PASERK equals the vector's; PASERK → the
/// same key bytes.
fn round_trip<K: FormatAsPaserk>(file: &str, kt: &KeyType<K>) -> usize {
    check_paserk_file(file, kt, |name, key, paserk| {
        assert_eq!(paserk_of(key), paserk, "{name}: key → PASERK");
        let parsed = refusing_panics(|| (kt.parse)(paserk)).unwrap_or_else(|e| panic!("{name}: parse: {e}"));
        assert_eq!((kt.bytes)(&parsed), (kt.bytes)(key), "{name}: PASERK → key");
    })
}

/// Key ids: the id of the key equals the vector's, and the vector's id parses
/// as that same id.
fn key_ids<K>(file: &str, kt: &KeyType<K>) -> usize
where
    for<'k> Id: From<&'k K>,
{
    check_paserk_file(file, kt, |name, key, paserk| {
        let id = Id::from(key);
        assert_eq!(paserk_of(&id), paserk, "{name}: id of the key");
        assert_eq!(Id::try_from(paserk).ok(), Some(id), "{name}: the id parses as itself");
    })
}

#[test]
fn every_k4_local_and_public_paserk_round_trips_or_is_refused_as_expected() {
    assert_eq!(round_trip("k4.local.json", &LOCAL), 5);
    assert_eq!(round_trip("k4.public.json", &PUBLIC), 4);
}

#[test]
fn every_k4_secret_paserk_round_trips_or_is_refused_as_expected() {
    assert_eq!(round_trip("k4.secret.json", &SECRET), 5);
}

#[test]
fn every_k4_key_id_matches_its_vector() {
    assert_eq!(key_ids("k4.lid.json", &LOCAL), 4);
    assert_eq!(key_ids("k4.pid.json", &PUBLIC), 5);
    assert_eq!(key_ids("k4.sid.json", &SECRET), 4);
}

#[test]
fn every_k4_paserk_file_is_either_checked_or_skipped_for_a_stated_reason() {
    let dir = vectors_dir().join("paseto/PASERK");
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".json"))
        .collect();
    let checked: BTreeSet<String> = CHECKED_PASERK.iter().map(|(f, _)| f.to_string()).collect();
    let skipped: BTreeSet<String> = SKIPPED_PASERK.iter().map(|(f, _)| f.to_string()).collect();
    assert!(checked.is_disjoint(&skipped));
    assert_eq!(
        present,
        &checked | &skipped,
        "PASERK files present vs. checked or skipped"
    );
    for (file, why) in SKIPPED_PASERK {
        println!("PASERK/{file}: skipped: {why}");
    }
    println!("PASERK: {} files checked, {} skipped", checked.len(), skipped.len());
}

// ---------------------------------------------------------------------------
// Our layer: the kid of a public key
// ---------------------------------------------------------------------------

#[test]
fn kid_of_public_is_the_k4_pid_of_the_same_key() {
    let public = paserk_vectors("k4.public.json");
    let pid = paserk_vectors("k4.pid.json");
    let mut shared = 0;
    for p in public.iter().filter(|p| !p.expect_fail) {
        let Some(id) = pid.iter().find(|i| !i.expect_fail && i.key == p.key) else {
            continue;
        };
        let paserk = p.paserk.as_deref().unwrap();
        assert_eq!(
            kid_of_public(paserk).as_deref(),
            id.paserk.as_deref(),
            "kid_of_public({paserk}): {} has the key of {}",
            p.name,
            id.name
        );
        shared += 1;
    }
    // All three valid k4.public keys are also k4.pid keys (checked against
    // the files at commit 32d7406).
    assert_eq!(shared, 3, "k4.public and k4.pid vectors sharing a key");
    println!("kid_of_public agrees with k4.pid for all {shared} shared keys");
}
