//! Golden tests of the event catalogue against its JSON Schemas.
//!
//! For every event type there is a fixed sample with every optional field set.
//! Its `data` (as [`DomainEvent::to_parts`] writes it) is compared with
//! `tests/golden/<EventType>.v1.json`, validated against
//! `schemas/<EventType>.v1.json`, and decoded back. Then the schemas are
//! checked to refuse what the contract refuses.
//!
//! After an intended change to an event, regenerate the golden files with
//! `UPDATE_GOLDEN=1 cargo test -p tokenledger-domain --test golden` and review
//! the diff.

use chrono::{DateTime, Utc};
use jsonschema::Validator;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tokenledger_domain::events::*;
use tokenledger_domain::role::Role;
use tokenledger_domain::{DomainEvent, EventType, schemas};

// ---------------------------------------------------------------------------
// Samples: one constructor per type. `full` sets every optional field, the
// minimal sample leaves every `Option` at `None` and every defaulted
// collection empty.
// ---------------------------------------------------------------------------

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("fixed timestamp")
}

fn some<T>(full: bool, v: T) -> Option<T> {
    full.then_some(v)
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn context(full: bool) -> Option<RequestContext> {
    some(
        full,
        RequestContext {
            ip: Some(s("203.0.113.7")),
            user_agent: Some(s("Mozilla/5.0 (X11; Linux x86_64) orders-web/4.2")),
            device_id: Some(s("dev-7f3a9c")),
        },
    )
}

fn token_issued(full: bool) -> TokenIssued {
    let mut cnf = Map::new();
    cnf.insert(s("jkt"), json!("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"));
    TokenIssued {
        token_id: s("6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f"),
        tenant: s("acme-eu"),
        issuer: s("tokenledger"),
        subject: s("user-42"),
        client_id: s("orders-web"),
        audience: s("orders-api"),
        scope: s("orders:read orders:write"),
        issued_at: at("2026-01-02T03:04:05Z"),
        expires_at: at("2026-01-02T03:19:05Z"),
        not_before: at("2026-01-02T03:04:05Z"),
        format: TokenFormat::V4Public,
        kid: some(full, s("k4.pid.eAPfKw2DqBVIX2G1ZCZDpFdKVCZmMxfTYhTPCC2gL8ws")),
        cnf: some(full, cnf),
        parent_token_id: some(full, s("0b6e1c9d-3f4a-4b5c-9d8e-7f6a5b4c3d2e")),
        context: context(full),
    }
}

fn token_used(full: bool) -> TokenUsed {
    TokenUsed {
        validator: s("orders-api-gateway"),
        audience: s("orders-api"),
        outcome: if full {
            UseOutcome::Rejected
        } else {
            UseOutcome::Accepted
        },
        reason: some(full, s("audience_mismatch")),
        at: at("2026-01-02T03:05:06.250Z"),
        context: context(full),
        token_id: some(full, s("6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f")),
        subject: some(full, s("user-42")),
        client_id: some(full, s("orders-web")),
        claimed_token_id: some(full, s("6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f")),
        claimed_subject: some(full, s("user-42")),
        claimed_client_id: some(full, s("orders-web")),
    }
}

fn token_exchanged(full: bool) -> TokenExchanged {
    TokenExchanged {
        subject_token_id: s("6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f"),
        actor_token_id: some(full, s("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")),
        new_token_id: s("1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"),
        client_id: s("orders-api"),
        requested_audience: s("billing-api"),
        requested_scope: some(full, s("invoices:read")),
        granted_audience: s("billing-api"),
        granted_scope: s("invoices:read"),
    }
}

/// The full sample revokes by token id: `token_id` and `selector` are
/// mutually exclusive, so the selector form is in [`extra_samples`].
fn token_revoked(full: bool) -> TokenRevoked {
    TokenRevoked {
        token_id: Some(s("6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f")),
        selector: None,
        reason: s("user logged out"),
        by: some(full, s("orders-web")),
    }
}

fn grant_refused(full: bool) -> GrantRefused {
    GrantRefused {
        path: GrantPath::Mint,
        client_id: s("orders-web"),
        subject: some(full, s("user-42")),
        requested: if full {
            GrantRequest {
                audience: Some(s("orders-api")),
                scope: Some(s("orders:read orders:admin")),
                ttl_seconds: Some(900),
                format: Some(TokenFormat::V4Local),
            }
        } else {
            GrantRequest::default()
        },
        reason: if full {
            RefusalReason::Cutoff
        } else {
            RefusalReason::NoPolicy
        },
        detail: s("a minting cutoff on subject user-42 is engaged"),
        cutoff_id: some(full, s("cut-2026-0001")),
    }
}

fn signing_key_added(full: bool) -> SigningKeyAdded {
    SigningKeyAdded {
        kid: s("k4.pid.eAPfKw2DqBVIX2G1ZCZDpFdKVCZmMxfTYhTPCC2gL8ws"),
        purpose: KeyPurpose::Public,
        algorithm: s("Ed25519"),
        not_before: at("2026-01-02T03:04:05Z"),
        not_after: at("2026-04-02T03:04:05Z"),
        public_key: some(full, s("k4.public.Hv7EdPOwuPwE4LSo7WcJSeWqPPdqAtHwBpJ2KjrQhX0")),
        sealed_secret: s("c2VhbGVkLWVkMjU1MTktc2VjcmV0LWtleS1zYW1wbGU"),
    }
}

fn signing_key_activated(_full: bool) -> SigningKeyActivated {
    SigningKeyActivated {
        kid: s("k4.pid.eAPfKw2DqBVIX2G1ZCZDpFdKVCZmMxfTYhTPCC2gL8ws"),
        purpose: KeyPurpose::Public,
    }
}

fn signing_key_retired(_full: bool) -> SigningKeyRetired {
    SigningKeyRetired {
        kid: s("k4.lid.ZDQ0ZTdiOWYtbG9jYWwta2V5LWlkLXNhbXBsZS0x"),
        purpose: KeyPurpose::Local,
        verify_until: at("2026-01-03T03:04:05Z"),
    }
}

fn signing_key_revoked(_full: bool) -> SigningKeyRevoked {
    SigningKeyRevoked {
        kid: s("k4.pid.eAPfKw2DqBVIX2G1ZCZDpFdKVCZmMxfTYhTPCC2gL8ws"),
        purpose: KeyPurpose::Public,
        reason: s("key material exposed in a CI log"),
    }
}

fn tenant_created(_full: bool) -> TenantCreated {
    TenantCreated {
        tenant: s("acme-eu"),
        by: s("bootstrap"),
    }
}

fn principal_created(_full: bool) -> PrincipalCreated {
    PrincipalCreated {
        name: s("orders-web"),
        role: Role::Issuer,
        tenant: s("acme-eu"),
        secret_id: s("3k9f2m7q"),
        secret_hash: s("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        by: s("alice-admin"),
    }
}

fn principal_disabled(_full: bool) -> PrincipalDisabled {
    PrincipalDisabled {
        name: s("orders-web"),
        tenant: s("acme-eu"),
        by: s("alice-admin"),
    }
}

fn principal_secret_rotated(_full: bool) -> PrincipalSecretRotated {
    PrincipalSecretRotated {
        name: s("orders-web"),
        tenant: s("acme-eu"),
        secret_id: s("8p4w1x6z"),
        secret_hash: s("60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"),
        by: s("alice-admin"),
    }
}

fn issuer_trusted(_full: bool) -> IssuerTrusted {
    IssuerTrusted {
        name: s("partner-idp"),
        keys: vec![s("k4.public.Hv7EdPOwuPwE4LSo7WcJSeWqPPdqAtHwBpJ2KjrQhX0")],
        max_ttl_seconds: 3600,
    }
}

fn webhook_set(_full: bool) -> WebhookSet {
    WebhookSet {
        tenant: s("acme-eu"),
        url: s("https://soc.acme.example/hooks/tokenledger"),
        signing_key_id: s("whk-2026-01"),
        sealed_signing_key: s("c2VhbGVkLWhtYWMta2V5LXNhbXBsZQ"),
    }
}

fn client_policy_set(full: bool) -> ClientPolicySet {
    let mut audiences = BTreeMap::new();
    audiences.insert(
        s("orders-api"),
        AudiencePolicy {
            scopes: vec![s("orders:read"), s("orders:write")],
            max_ttl_seconds: 900,
        },
    );
    ClientPolicySet {
        client_id: s("orders-web"),
        audiences,
        formats: vec![TokenFormat::V4Public, TokenFormat::V4Local],
        serves: if full { vec![s("orders-api")] } else { vec![] },
    }
}

fn risk_signal_received(full: bool) -> RiskSignalReceived {
    RiskSignalReceived {
        source: s("threat-intel-feed"),
        // The contract needs one of subject / client_id / ip: the minimal
        // sample keeps the subject.
        subject: Some(s("user-42")),
        client_id: some(full, s("orders-web")),
        ip: some(full, s("198.51.100.23")),
        level: RiskLevel::High,
        kind: s("leaked_credential"),
        expires_at: at("2026-01-09T03:04:05Z"),
    }
}

fn detector_config_changed(full: bool) -> DetectorConfigChanged {
    let mut thresholds = BTreeMap::new();
    thresholds.insert(s("impossible_travel_kmh"), 900.0);
    thresholds.insert(s("reuse_after_revoke_ratio"), 0.25);
    DetectorConfigChanged {
        tenant: s("acme-eu"),
        thresholds,
        rules: if full {
            Some(vec![s("impossible-travel"), s("reuse-after-revoke")])
        } else {
            None
        },
    }
}

fn minting_cutoff_engaged(full: bool) -> MintingCutoffEngaged {
    MintingCutoffEngaged {
        cutoff_id: s("cut-2026-0001"),
        scope: CutoffScope::Subject,
        key: s("user-42"),
        rule_id: s("impossible-travel"),
        reason: s("sign-ins from two continents within ten minutes"),
        evidence: if full {
            Evidence {
                anomaly_ids: vec![s("anom-1f2e3d")],
                positions: vec![1041, 1057],
            }
        } else {
            Evidence::default()
        },
        until: at("2026-01-02T04:04:05Z"),
        mode: if full { CutoffMode::DryRun } else { CutoffMode::Enforce },
    }
}

fn minting_cutoff_released(_full: bool) -> MintingCutoffReleased {
    MintingCutoffReleased {
        cutoff_id: s("cut-2026-0001"),
        reason: s("expired"),
        by: s("server"),
    }
}

fn sample(t: EventType, full: bool) -> DomainEvent {
    use DomainEvent as E;
    match t {
        EventType::TokenIssued => E::TokenIssued(token_issued(full)),
        EventType::TokenUsed => E::TokenUsed(token_used(full)),
        EventType::TokenExchanged => E::TokenExchanged(token_exchanged(full)),
        EventType::TokenRevoked => E::TokenRevoked(token_revoked(full)),
        EventType::GrantRefused => E::GrantRefused(grant_refused(full)),
        EventType::SigningKeyAdded => E::SigningKeyAdded(signing_key_added(full)),
        EventType::SigningKeyActivated => E::SigningKeyActivated(signing_key_activated(full)),
        EventType::SigningKeyRetired => E::SigningKeyRetired(signing_key_retired(full)),
        EventType::SigningKeyRevoked => E::SigningKeyRevoked(signing_key_revoked(full)),
        EventType::TenantCreated => E::TenantCreated(tenant_created(full)),
        EventType::PrincipalCreated => E::PrincipalCreated(principal_created(full)),
        EventType::PrincipalDisabled => E::PrincipalDisabled(principal_disabled(full)),
        EventType::PrincipalSecretRotated => E::PrincipalSecretRotated(principal_secret_rotated(full)),
        EventType::IssuerTrusted => E::IssuerTrusted(issuer_trusted(full)),
        EventType::WebhookSet => E::WebhookSet(webhook_set(full)),
        EventType::ClientPolicySet => E::ClientPolicySet(client_policy_set(full)),
        EventType::RiskSignalReceived => E::RiskSignalReceived(risk_signal_received(full)),
        EventType::DetectorConfigChanged => E::DetectorConfigChanged(detector_config_changed(full)),
        EventType::MintingCutoffEngaged => E::MintingCutoffEngaged(minting_cutoff_engaged(full)),
        EventType::MintingCutoffReleased => E::MintingCutoffReleased(minting_cutoff_released(full)),
    }
}

/// Further valid shapes that neither the full nor the minimal sample shows.
fn extra_samples() -> Vec<DomainEvent> {
    vec![
        DomainEvent::TokenRevoked(TokenRevoked {
            token_id: None,
            selector: Some(Selector {
                scope: SelectorScope::Subject,
                key: s("user-42"),
            }),
            reason: s("account compromised"),
            by: Some(s("soc-oncall")),
        }),
        DomainEvent::RiskSignalReceived(RiskSignalReceived {
            subject: None,
            client_id: None,
            ..risk_signal_received(true)
        }),
        DomainEvent::RiskSignalReceived(RiskSignalReceived {
            subject: None,
            ip: None,
            ..risk_signal_received(true)
        }),
    ]
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn golden_path(t: EventType) -> PathBuf {
    golden_dir().join(format!("{t}.v1.json"))
}

const REGENERATE: &str = "if the change is intended, regenerate with \
    `UPDATE_GOLDEN=1 cargo test -p tokenledger-domain --test golden` and review the diff";

fn data_of(ev: &DomainEvent) -> Value {
    let (name, data) = ev.to_parts().expect("sample serialises");
    assert_eq!(name, ev.event_type().as_str());
    data
}

fn read_golden(t: EventType) -> Value {
    let path = golden_path(t);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden file {}: {e}; {REGENERATE}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("golden file {} is not JSON: {e}", path.display()))
}

fn schema_value(t: EventType) -> Value {
    let text = schemas::schema(t, 1).unwrap_or_else(|| panic!("no v1 schema for {t}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("schema of {t} is not JSON: {e}"))
}

/// The validator as the server builds it: default options, so `format` is an
/// annotation only and the patterns must do the work.
fn validator(t: EventType) -> Validator {
    jsonschema::validator_for(&schema_value(t)).unwrap_or_else(|e| panic!("schema of {t} does not compile: {e}"))
}

/// A validator that also asserts `format` (`date-time`, `uri`).
fn strict_validator(t: EventType) -> Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema_value(t))
        .unwrap_or_else(|e| panic!("schema of {t} does not compile: {e}"))
}

fn errors(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("at {:?}: {e}", e.instance_path.as_str()))
        .collect()
}

fn assert_valid(t: EventType, instance: &Value, what: &str) {
    for v in [validator(t), strict_validator(t)] {
        let errs = errors(&v, instance);
        assert!(
            errs.is_empty(),
            "{t} {what} should be valid but is not:\n  {}\ninstance: {instance:#}",
            errs.join("\n  ")
        );
    }
}

fn assert_invalid(t: EventType, instance: &Value, what: &str) {
    assert!(
        !validator(t).is_valid(instance),
        "{t} schema should reject {what}, but accepts: {instance:#}"
    );
}

fn object(v: &Value) -> &Map<String, Value> {
    v.as_object().expect("an object")
}

/// Follows a local `$ref` (`#/$defs/...`) of `sub`, if it has one.
fn resolve<'a>(schema: &'a Value, sub: &'a Value) -> &'a Value {
    match sub.get("$ref").and_then(Value::as_str) {
        Some(r) => schema
            .pointer(r.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => sub,
    }
}

/// `value` with `pointer` (a JSON pointer into it) set to `new`: replaced if
/// it exists, else added as a member of the object it points into.
fn with(value: &Value, pointer: &str, new: Value) -> Value {
    let mut v = value.clone();
    if let Some(slot) = v.pointer_mut(pointer) {
        *slot = new;
        return v;
    }
    let (parent, key) = pointer
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("bad pointer {pointer:?}"));
    v.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {parent:?} in {value}"))
        .insert(key.replace("~1", "/").replace("~0", "~"), new);
    v
}

/// `value` with the member `key` of the object at `pointer` removed.
fn without(value: &Value, pointer: &str, key: &str) -> Value {
    let mut v = value.clone();
    let obj = v
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer:?} in {value}"));
    assert!(obj.remove(key).is_some(), "no {key} at {pointer:?} in {value}");
    v
}

fn decodes(t: EventType, data: &Value) -> bool {
    DomainEvent::from_parts(t.as_str(), 1, data).is_ok()
}

// ---------------------------------------------------------------------------
// 1. Golden files
// ---------------------------------------------------------------------------

#[test]
fn golden_files_match_the_samples() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut mismatches = Vec::new();
    for &t in EventType::ALL {
        let ev = sample(t, true);
        assert_eq!(ev.event_type(), t);
        let data = data_of(&ev);
        let expected = serde_json::to_string_pretty(&data).expect("pretty JSON") + "\n";
        let path = golden_path(t);
        if update {
            std::fs::create_dir_all(golden_dir()).expect("create tests/golden");
            std::fs::write(&path, &expected).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Err(e) => mismatches.push(format!("{}: cannot read: {e}", path.display())),
            Ok(text) => {
                let on_disk: Result<Value, _> = serde_json::from_str(&text);
                match on_disk {
                    Ok(v) if v == data && text.ends_with('\n') => {}
                    Ok(v) if v == data => mismatches.push(format!("{}: no trailing newline", path.display())),
                    _ => mismatches.push(format!(
                        "{}: differs from the sample.\n--- expected\n{expected}--- on disk\n{text}",
                        path.display()
                    )),
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden file(s) out of date; {REGENERATE}:\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}

#[test]
fn golden_directory_holds_exactly_the_catalogue() {
    let expected: BTreeSet<String> = EventType::ALL.iter().map(|t| format!("{t}.v1.json")).collect();
    let found: BTreeSet<String> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        found, expected,
        "tests/golden must hold one file per event type, and nothing else"
    );
}

#[test]
fn golden_files_sample_every_field() {
    // The full samples (plus the extra shapes) set every property the schema
    // declares, and the schema declares every field the Rust type writes.
    for &t in EventType::ALL {
        let schema = schema_value(t);
        let declared: BTreeSet<&String> = object(&schema["properties"]).keys().collect();
        let mut written = BTreeSet::new();
        let golden = read_golden(t);
        let extras: Vec<Value> = extra_samples()
            .iter()
            .filter(|e| e.event_type() == t)
            .map(data_of)
            .collect();
        for d in std::iter::once(&golden).chain(&extras) {
            written.extend(object(d).keys().cloned());
        }
        let written: BTreeSet<&String> = written.iter().collect();
        assert_eq!(declared, written, "{t}: schema properties vs fields of the samples");
    }
}

// ---------------------------------------------------------------------------
// 2. Positive validation
// ---------------------------------------------------------------------------

#[test]
fn golden_minimal_and_extra_samples_are_valid() {
    for &t in EventType::ALL {
        assert_valid(t, &read_golden(t), "golden file");
        assert_valid(t, &data_of(&sample(t, false)), "minimal sample");
    }
    for ev in extra_samples() {
        assert_valid(ev.event_type(), &data_of(&ev), "extra sample");
    }
}

#[test]
fn optional_and_defaulted_fields_may_be_omitted() {
    // `required` lists exactly the fields serde requires: dropping any other
    // property keeps the payload valid and decodable.
    for &t in EventType::ALL {
        let schema = schema_value(t);
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let golden = read_golden(t);
        for key in object(&golden).keys().filter(|k| !required.contains(k.as_str())) {
            let v = without(&golden, "", key);
            assert!(decodes(t, &v), "{t} without optional {key} should decode");
            if (t, key.as_str()) == (EventType::TokenRevoked, "token_id") {
                // The golden revokes by token id; with neither token_id nor
                // selector the contract refuses it (checked below).
                assert_invalid(t, &v, "a revocation with neither token_id nor selector");
            } else {
                assert_valid(t, &v, &format!("without optional {key}"));
            }
        }
    }
}

#[test]
fn valid_edge_values_are_accepted() {
    let t = EventType::TokenIssued;
    let g = read_golden(t);
    assert_valid(
        t,
        &with(&g, "/subject", json!("a".repeat(256))),
        "a 256-character subject",
    );
    assert_valid(t, &with(&g, "/scope", json!("a")), "a one-token scope");
    assert_valid(
        t,
        &with(&g, "/issued_at", json!("2026-01-02T04:04:05+01:00")),
        "an offset timestamp",
    );
    assert_valid(
        t,
        &with(&g, "/issued_at", json!("2026-01-02T03:04:05.123456789Z")),
        "nanoseconds",
    );
    assert_valid(t, &with(&g, "/cnf", json!({})), "an empty cnf");
    let t = EventType::DetectorConfigChanged;
    let mut g = read_golden(t);
    g["thresholds"]["max_uses_per_minute"] = json!(-3);
    assert_valid(t, &g, "an integer threshold");
}

// ---------------------------------------------------------------------------
// 3. Round trip
// ---------------------------------------------------------------------------

#[test]
fn golden_files_decode_to_the_samples() {
    for &t in EventType::ALL {
        for (what, data, ev) in [
            ("golden", read_golden(t), sample(t, true)),
            ("minimal", data_of(&sample(t, false)), sample(t, false)),
        ] {
            let decoded = DomainEvent::from_parts(t.as_str(), 1, &data)
                .unwrap_or_else(|e| panic!("{t} {what} does not decode: {e}"));
            assert_eq!(decoded, ev, "{t} {what} decodes to something else");
        }
    }
    for ev in extra_samples() {
        let t = ev.event_type();
        assert_eq!(DomainEvent::from_parts(t.as_str(), 1, &data_of(&ev)).as_ref(), Ok(&ev));
    }
}

#[test]
fn samples_pass_the_name_checks() {
    for &t in EventType::ALL {
        for full in [true, false] {
            let ev = sample(t, full);
            ev.check_names().unwrap_or_else(|e| panic!("{t} (full: {full}): {e}"));
        }
    }
    for ev in extra_samples() {
        ev.check_names().unwrap_or_else(|e| panic!("{}: {e}", ev.event_type()));
    }
}

// ---------------------------------------------------------------------------
// 4. Negative checks
// ---------------------------------------------------------------------------

#[test]
fn unknown_fields_are_rejected() {
    for &t in EventType::ALL {
        let g = read_golden(t);
        let v = with(&g, "/unexpected_field", json!("x"));
        assert_invalid(t, &v, "an unknown field");
        assert!(!decodes(t, &v), "{t}: serde should refuse the unknown field too");
    }
    // Nested objects are closed as well.
    for (t, obj) in [
        (EventType::TokenIssued, "/context"),
        (EventType::TokenUsed, "/context"),
        (EventType::GrantRefused, "/requested"),
        (EventType::ClientPolicySet, "/audiences/orders-api"),
        (EventType::MintingCutoffEngaged, "/evidence"),
    ] {
        let v = with(&read_golden(t), &format!("{obj}/unexpected_field"), json!(1));
        assert_invalid(t, &v, &format!("an unknown field in {obj}"));
        assert!(!decodes(t, &v), "{t}: serde should refuse the unknown field in {obj}");
    }
    let t = EventType::TokenRevoked;
    let v = with(&data_of(&extra_samples()[0]), "/selector/unexpected_field", json!(1));
    assert_invalid(t, &v, "an unknown field in the selector");
}

#[test]
fn each_required_field_is_required() {
    for &t in EventType::ALL {
        let schema = schema_value(t);
        let golden = read_golden(t);
        let required = schema["required"].as_array().expect("a required array");
        assert!(!required.is_empty(), "{t} has no required field");
        for key in required {
            let key = key.as_str().expect("a field name");
            let v = without(&golden, "", key);
            assert_invalid(t, &v, &format!("a payload without {key}"));
            assert!(!decodes(t, &v), "{t}: serde accepts a payload without required {key}");
        }
    }
    // Selector's own required fields (only in the selector sample).
    let t = EventType::TokenRevoked;
    let sel = data_of(&extra_samples()[0]);
    for key in ["scope", "key"] {
        assert_invalid(
            t,
            &without(&sel, "/selector", key),
            &format!("a selector without {key}"),
        );
    }
    let t = EventType::ClientPolicySet;
    for key in ["scopes", "max_ttl_seconds"] {
        let v = without(&read_golden(t), "/audiences/orders-api", key);
        assert_invalid(t, &v, &format!("an audience policy without {key}"));
    }
}

#[test]
fn wrong_types_are_rejected() {
    // The external contract check sends exactly this.
    let bad = json!({"token_id": 12345, "reason": "r"});
    assert_invalid(EventType::TokenRevoked, &bad, "token_id as a number");
    assert!(!decodes(EventType::TokenRevoked, &bad));

    for &t in EventType::ALL {
        let golden = read_golden(t);
        for (key, value) in object(&golden) {
            let wrong = match value {
                Value::String(_) => json!(12345),
                Value::Number(_) => json!("12345"),
                Value::Bool(_) => json!("true"),
                Value::Array(_) => json!({}),
                Value::Object(_) => json!("not an object"),
                Value::Null => json!(0),
            };
            let v = with(&golden, &format!("/{key}"), wrong);
            assert_invalid(t, &v, &format!("{key} of the wrong type"));
            assert!(!decodes(t, &v), "{t}: serde accepts {key} of the wrong type");
            let v = with(&golden, &format!("/{key}"), Value::Null);
            assert_invalid(t, &v, &format!("{key}: null"));
        }
    }

    let cases: &[(EventType, &str, Value, &str)] = &[
        (
            EventType::IssuerTrusted,
            "/max_ttl_seconds",
            json!(-1),
            "a negative u64",
        ),
        (
            EventType::IssuerTrusted,
            "/max_ttl_seconds",
            json!(1.5),
            "a fractional u64",
        ),
        (EventType::IssuerTrusted, "/keys/0", json!(7), "a number in keys"),
        (
            EventType::ClientPolicySet,
            "/audiences/orders-api/max_ttl_seconds",
            json!(-1),
            "a negative max_ttl",
        ),
        (
            EventType::ClientPolicySet,
            "/audiences/orders-api/scopes/0",
            json!(""),
            "an empty scope token",
        ),
        (
            EventType::ClientPolicySet,
            "/serves/0",
            json!(""),
            "an empty served audience",
        ),
        (
            EventType::MintingCutoffEngaged,
            "/evidence/positions/0",
            json!(-5),
            "a negative position",
        ),
        (
            EventType::MintingCutoffEngaged,
            "/evidence/anomaly_ids/0",
            json!(5),
            "a numeric anomaly id",
        ),
        (
            EventType::DetectorConfigChanged,
            "/thresholds/impossible_travel_kmh",
            json!("900"),
            "a string threshold",
        ),
        (
            EventType::DetectorConfigChanged,
            "/thresholds/impossible_travel_kmh",
            json!(null),
            "a null threshold",
        ),
        (
            EventType::GrantRefused,
            "/requested/ttl_seconds",
            json!("900"),
            "a string ttl",
        ),
        (
            EventType::GrantRefused,
            "/requested/ttl_seconds",
            json!(9.5),
            "a fractional ttl",
        ),
        (
            EventType::TokenIssued,
            "/context/ip",
            json!(["203.0.113.7"]),
            "an array ip",
        ),
        (
            EventType::TokenIssued,
            "/context/user_agent",
            json!(5),
            "a numeric user agent",
        ),
        // Identifiers: non-empty, at most 256 characters.
        (EventType::TokenIssued, "/subject", json!(""), "an empty subject"),
        (
            EventType::TokenIssued,
            "/token_id",
            json!("x".repeat(257)),
            "a 257-character token id",
        ),
        (EventType::TokenIssued, "/audience", json!(""), "an empty audience"),
        (EventType::TokenIssued, "/kid", json!(""), "an empty kid"),
        (EventType::TokenUsed, "/client_id", json!(""), "an empty client id"),
        (
            EventType::PrincipalCreated,
            "/name",
            json!("n".repeat(257)),
            "a 257-character name",
        ),
        (EventType::RiskSignalReceived, "/subject", json!(""), "an empty subject"),
        // Tenants.
        (
            EventType::TenantCreated,
            "/tenant",
            json!("Acme"),
            "an upper-case tenant",
        ),
        (
            EventType::TenantCreated,
            "/tenant",
            json!("-acme"),
            "a tenant starting with '-'",
        ),
        (EventType::TenantCreated, "/tenant", json!(""), "an empty tenant"),
        (
            EventType::TenantCreated,
            "/tenant",
            json!("a".repeat(64)),
            "a 64-character tenant",
        ),
        // Timestamps (the default validator ignores `format`; the pattern holds).
        (
            EventType::TokenIssued,
            "/issued_at",
            json!("2026-01-02"),
            "a date without time",
        ),
        (
            EventType::TokenIssued,
            "/expires_at",
            json!("2026-01-02 03:04:05Z"),
            "a space separator",
        ),
        (
            EventType::TokenIssued,
            "/not_before",
            json!("2026-01-02T03:04:05"),
            "a timestamp without offset",
        ),
        (EventType::TokenUsed, "/at", json!("yesterday"), "free text"),
        (EventType::TokenUsed, "/at", json!(1767323045), "a Unix timestamp"),
        (
            EventType::SigningKeyRetired,
            "/verify_until",
            json!("2026-01-03T03:04:05Z "),
            "a trailing space",
        ),
        // Open objects have to be objects.
        (EventType::TokenIssued, "/cnf", json!("jkt"), "a string cnf"),
    ];
    for (t, pointer, wrong, what) in cases {
        assert_invalid(*t, &with(&read_golden(*t), pointer, wrong.clone()), what);
    }
}

#[test]
fn token_revoked_names_exactly_one_target() {
    let t = EventType::TokenRevoked;
    let by_id = read_golden(t);
    let by_selector = data_of(&extra_samples()[0]);
    let mut both = by_id.clone();
    both["selector"] = by_selector["selector"].clone();
    assert_invalid(t, &both, "both token_id and selector");
    assert_invalid(t, &json!({"reason": "r"}), "neither token_id nor selector");
    assert_invalid(
        t,
        &json!({"reason": "r", "by": "alice"}),
        "neither token_id nor selector",
    );
    assert_valid(
        t,
        &json!({"token_id": "t-1", "reason": ""}),
        "by token id, empty reason",
    );
    assert_valid(
        t,
        &json!({"selector": {"scope": "client", "key": "orders-web"}, "reason": "r"}),
        "by selector",
    );
}

#[test]
fn risk_signals_name_a_subject_client_or_address() {
    let t = EventType::RiskSignalReceived;
    let mut none = read_golden(t);
    for key in ["subject", "client_id", "ip"] {
        none.as_object_mut().unwrap().remove(key);
    }
    assert_invalid(t, &none, "a signal about nobody");
    for key in ["subject", "client_id", "ip"] {
        let mut one = none.clone();
        one[key] = json!("x-1");
        assert_valid(t, &one, &format!("a signal with only {key}"));
    }
}

#[test]
fn scopes_are_single_space_delimited() {
    let cases: &[(EventType, &str)] = &[
        (EventType::TokenIssued, "/scope"),
        (EventType::TokenExchanged, "/granted_scope"),
        (EventType::TokenExchanged, "/requested_scope"),
        (EventType::GrantRefused, "/requested/scope"),
    ];
    for (t, pointer) in cases {
        let g = read_golden(*t);
        for bad in ["a  b", " a", "a ", "", " ", "a b  c"] {
            assert_invalid(
                *t,
                &with(&g, pointer, json!(bad)),
                &format!("scope {bad:?} at {pointer}"),
            );
        }
        assert_valid(
            *t,
            &with(&g, pointer, json!("a b c")),
            &format!("scope \"a b c\" at {pointer}"),
        );
    }
}

#[test]
fn enum_values_outside_the_list_are_rejected() {
    // Every top-level enum property, found through the schema.
    let mut seen = 0;
    for &t in EventType::ALL {
        let schema = schema_value(t);
        let golden = read_golden(t);
        for (prop, sub) in object(&schema["properties"]) {
            if resolve(&schema, sub).get("enum").is_none() {
                continue;
            }
            seen += 1;
            for bad in ["not-a-wire-name", "V4Public", "Accepted", ""] {
                let v = with(&golden, &format!("/{prop}"), json!(bad));
                assert_invalid(t, &v, &format!("{prop}: {bad:?}"));
                assert!(!decodes(t, &v), "{t}: serde accepts {prop}: {bad:?}");
            }
        }
    }
    assert_eq!(seen, 12, "number of top-level enum properties in the catalogue");
    // Nested enums.
    let nested: &[(EventType, &str)] = &[
        (EventType::GrantRefused, "/requested/format"),
        (EventType::ClientPolicySet, "/formats/0"),
    ];
    for (t, pointer) in nested {
        assert_invalid(*t, &with(&read_golden(*t), pointer, json!("v3.public")), pointer);
    }
    let sel = data_of(&extra_samples()[0]);
    assert_invalid(
        EventType::TokenRevoked,
        &with(&sel, "/selector/scope", json!("tenant")),
        "selector scope tenant",
    );
}

/// The serde wire names of every variant of a Rust enum. The closure's
/// `match` stops compiling when a variant is added, so the list stays whole.
macro_rules! wire_names {
    ($ty:ty: $($v:path),+ $(,)?) => {{
        let _exhaustive = |x: $ty| match x { $($v)|+ => () };
        vec![$(serde_json::to_value($v).unwrap()),+]
    }};
}

#[test]
fn schema_enums_list_exactly_the_rust_wire_names() {
    use EventType as T;
    let formats = wire_names!(TokenFormat: TokenFormat::V4Public, TokenFormat::V4Local, TokenFormat::External);
    let purposes = wire_names!(KeyPurpose: KeyPurpose::Public, KeyPurpose::Local);
    let cases: Vec<(EventType, &str, Vec<Value>)> = vec![
        (T::TokenIssued, "/$defs/tokenFormat/enum", formats.clone()),
        (T::GrantRefused, "/$defs/tokenFormat/enum", formats.clone()),
        (T::ClientPolicySet, "/$defs/tokenFormat/enum", formats),
        (
            T::TokenUsed,
            "/properties/outcome/enum",
            wire_names!(UseOutcome: UseOutcome::Accepted, UseOutcome::Rejected),
        ),
        (
            T::TokenRevoked,
            "/$defs/selector/properties/scope/enum",
            wire_names!(SelectorScope: SelectorScope::Subject, SelectorScope::Client, SelectorScope::Issuer),
        ),
        (
            T::GrantRefused,
            "/properties/path/enum",
            wire_names!(GrantPath: GrantPath::Mint, GrantPath::Exchange, GrantPath::ClientCredentials, GrantPath::Append),
        ),
        (
            T::GrantRefused,
            "/properties/reason/enum",
            wire_names!(RefusalReason: RefusalReason::NoPolicy, RefusalReason::Audience, RefusalReason::Scope,
                RefusalReason::Ttl, RefusalReason::Format, RefusalReason::Cutoff, RefusalReason::Depth,
                RefusalReason::NotServed),
        ),
        (T::SigningKeyAdded, "/$defs/keyPurpose/enum", purposes.clone()),
        (T::SigningKeyActivated, "/$defs/keyPurpose/enum", purposes.clone()),
        (T::SigningKeyRetired, "/$defs/keyPurpose/enum", purposes.clone()),
        (T::SigningKeyRevoked, "/$defs/keyPurpose/enum", purposes),
        (
            T::PrincipalCreated,
            "/properties/role/enum",
            wire_names!(Role: Role::Issuer, Role::Validator, Role::Analyst, Role::Soc, Role::Admin, Role::Bootstrap),
        ),
        (
            T::RiskSignalReceived,
            "/properties/level/enum",
            wire_names!(RiskLevel: RiskLevel::Low, RiskLevel::Medium, RiskLevel::High, RiskLevel::Critical),
        ),
        (
            T::MintingCutoffEngaged,
            "/properties/scope/enum",
            wire_names!(CutoffScope: CutoffScope::Subject, CutoffScope::Client, CutoffScope::Issuer, CutoffScope::Tenant),
        ),
        (
            T::MintingCutoffEngaged,
            "/properties/mode/enum",
            wire_names!(CutoffMode: CutoffMode::Enforce, CutoffMode::DryRun),
        ),
    ];
    for (t, pointer, rust) in cases {
        let schema = schema_value(t);
        let listed = schema.pointer(pointer).unwrap_or_else(|| panic!("{t}: no {pointer}"));
        assert_eq!(listed, &Value::Array(rust), "{t} {pointer}");
    }
}

// ---------------------------------------------------------------------------
// 5. The schema files themselves
// ---------------------------------------------------------------------------

#[test]
fn schema_directory_holds_exactly_the_catalogue() {
    let expected: BTreeSet<String> = EventType::ALL.iter().map(|t| format!("{t}.v1.json")).collect();
    let found: BTreeSet<String> = std::fs::read_dir(schema_dir())
        .expect("schemas/ exists")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    let stray: Vec<_> = found.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&found).collect();
    assert!(
        stray.is_empty() && missing.is_empty(),
        "schemas/ must hold one file per event type: stray {stray:?}, missing {missing:?}"
    );
    assert_eq!(found.len(), 20);
    // What is embedded is what is on disk.
    for &t in EventType::ALL {
        let on_disk = std::fs::read_to_string(schema_dir().join(format!("{t}.v1.json"))).expect("read schema");
        assert_eq!(
            Some(on_disk.as_str()),
            schemas::schema(t, 1),
            "{t}: embedded schema differs from the file"
        );
        assert_eq!(schemas::schema(t, 2), None, "{t}: no v2 yet");
    }
}

#[test]
fn every_schema_compiles_and_is_well_formed() {
    for &t in EventType::ALL {
        let schema = schema_value(t);
        if let Err(e) = jsonschema::meta::validate(&schema) {
            panic!("{t}: not a valid draft 2020-12 schema: {e}");
        }
        let v = validator(t);
        assert_eq!(v.draft(), jsonschema::Draft::Draft202012, "{t}");
        let _ = strict_validator(t);
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "{t}");
        assert_eq!(
            schema["$id"],
            format!("https://tokenledger.dev/schemas/{t}.v1.json"),
            "{t}"
        );
        for key in ["title", "description"] {
            let text = schema[key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{t}: missing {key}");
        }
        assert_eq!(schema["type"], "object", "{t}");
        assert_eq!(schema["additionalProperties"], false, "{t}");
        // Every nested object schema is closed too.
        if let Some(defs) = schema.get("$defs").and_then(Value::as_object) {
            for (name, def) in defs {
                if def.get("type") == Some(&json!("object")) {
                    assert_eq!(def["additionalProperties"], false, "{t}: $defs/{name} is not closed");
                }
            }
        }
        // Every local $ref resolves.
        let mut refs = Vec::new();
        collect_refs(&schema, &mut refs);
        for r in refs {
            assert!(
                schema.pointer(r.trim_start_matches('#')).is_some(),
                "{t}: dangling $ref {r}"
            );
        }
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
