//! The views as SQL tables: `active_tokens`, `block_list`, `keys`,
//! `cutoffs`, `anomalies`, `risk_signals` (DESIGN.md "Projections"). Built
//! from one tenant's [`TenantViews`] when a query takes its snapshot, or
//! when a cutoff rule runs over the live views (one table at a time with
//! [`view`]).

use crate::events::utc_micros;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, BooleanBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::{Arc, LazyLock};
use tokenledger_domain::anomalies::severity_name;
use tokenledger_domain::views::{BlockKind, TenantViews};

fn ts() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
            .collect::<Vec<_>>(),
    ))
}

/// `active_tokens`: issued, not expired at the time of the question, not
/// revoked (directly, through the token it was exchanged from, or by a
/// selector). Columns: `token_id`, `issuer`, `subject`, `client_id`,
/// `audience`, `scope`, `format`, `kid`, `parent_token_id` (text),
/// `issued_at`, `not_before`, `expires_at` (UTC), `position` (UInt64, of its
/// `TokenIssued`).
pub fn active_tokens_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema(&[
            ("token_id", DataType::Utf8, false),
            ("issuer", DataType::Utf8, false),
            ("subject", DataType::Utf8, false),
            ("client_id", DataType::Utf8, false),
            ("audience", DataType::Utf8, false),
            ("scope", DataType::Utf8, false),
            ("format", DataType::Utf8, false),
            ("kid", DataType::Utf8, true),
            ("parent_token_id", DataType::Utf8, true),
            ("issued_at", utc_micros(), false),
            ("not_before", utc_micros(), false),
            ("expires_at", utc_micros(), false),
            ("position", DataType::UInt64, false),
        ])
    });
    S.clone()
}

/// `block_list`: one row per entry of the block-list feed. Columns: `kind`
/// (`token`, `selector` or `kid`), `token_id`, `selector` (`scope:key`),
/// `kid` (one of the three set), `position` (UInt64, of the revocation),
/// `revoked_at` (UTC), `expires_at` (UTC; null for selectors and keys, which
/// matter as long as tokens they cover may live).
pub fn block_list_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema(&[
            ("kind", DataType::Utf8, false),
            ("token_id", DataType::Utf8, true),
            ("selector", DataType::Utf8, true),
            ("kid", DataType::Utf8, true),
            ("position", DataType::UInt64, false),
            ("revoked_at", utc_micros(), false),
            ("expires_at", utc_micros(), true),
        ])
    });
    S.clone()
}

/// `keys`: the tenant's signing keys. Columns: `kid`, `purpose` (`public`
/// or `local`), `state` (`pending`, `active`, `retired`, `revoked`),
/// `public_key` (PASERK, public keys only; sealed secrets are never a
/// column), `not_before`, `not_after`, `verify_until` (UTC), `position`.
pub fn keys_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema(&[
            ("kid", DataType::Utf8, false),
            ("purpose", DataType::Utf8, false),
            ("state", DataType::Utf8, false),
            ("public_key", DataType::Utf8, true),
            ("not_before", utc_micros(), false),
            ("not_after", utc_micros(), false),
            ("verify_until", utc_micros(), true),
            ("position", DataType::UInt64, false),
        ])
    });
    S.clone()
}

/// `cutoffs`: every minting cutoff engaged in the tenant, released or
/// not. Columns: `cutoff_id`, `scope` (`subject`, `client`, `issuer`,
/// `tenant`), `key`, `rule_id`, `mode` (`enforce`, `dry_run`), `reason`,
/// `engaged_at`, `until`, `released_at` (UTC), `released_by`,
/// `release_reason`, `position` (UInt64, of the engagement),
/// `released_position`, `evidence_positions` (text, comma-separated
/// positions of the events that caused it), `active` (Boolean: engaged,
/// not released, not past `until` at the time of the question).
pub fn cutoffs_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema(&[
            ("cutoff_id", DataType::Utf8, false),
            ("scope", DataType::Utf8, false),
            ("key", DataType::Utf8, false),
            ("rule_id", DataType::Utf8, false),
            ("mode", DataType::Utf8, false),
            ("reason", DataType::Utf8, false),
            ("engaged_at", utc_micros(), false),
            ("until", utc_micros(), false),
            ("released_at", utc_micros(), true),
            ("released_by", DataType::Utf8, true),
            ("release_reason", DataType::Utf8, true),
            ("position", DataType::UInt64, false),
            ("released_position", DataType::UInt64, true),
            ("evidence_positions", DataType::Utf8, false),
            ("active", DataType::Boolean, false),
        ])
    });
    S.clone()
}

fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn cutoffs(v: &TenantViews, now: DateTime<Utc>) -> RecordBatch {
    let mut text: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
    let (mut engaged, mut until, mut released) = (ts(), ts(), ts());
    let (mut by, mut why, mut evidence) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let (mut pos, mut rpos) = (UInt64Builder::new(), UInt64Builder::new());
    let mut active = BooleanBuilder::new();
    for c in v.cutoffs.values() {
        let vals = [
            c.cutoff_id.clone(),
            wire(&c.scope),
            c.key.clone(),
            c.rule_id.clone(),
            wire(&c.mode),
            c.reason.clone(),
        ];
        for (b, v) in text.iter_mut().zip(vals) {
            b.append_value(v);
        }
        engaged.append_value(c.engaged_at.timestamp_micros());
        until.append_value(c.until.timestamp_micros());
        released.append_option(c.released_at.map(|t| t.timestamp_micros()));
        by.append_option(c.released_by.as_deref());
        why.append_option(c.release_reason.as_deref());
        pos.append_value(c.engaged_position);
        rpos.append_option(c.released_position);
        let list: Vec<String> = c.evidence.positions.iter().map(u64::to_string).collect();
        evidence.append_value(list.join(","));
        active.append_value(c.is_active(now));
    }
    let mut cols: Vec<ArrayRef> = text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    cols.push(Arc::new(engaged.finish()));
    cols.push(Arc::new(until.finish()));
    cols.push(Arc::new(released.finish()));
    cols.push(Arc::new(by.finish()));
    cols.push(Arc::new(why.finish()));
    cols.push(Arc::new(pos.finish()));
    cols.push(Arc::new(rpos.finish()));
    cols.push(Arc::new(evidence.finish()));
    cols.push(Arc::new(active.finish()));
    batch(cutoffs_schema(), cols)
}

/// The names of the view tables, in the order [`views`] builds them.
pub const VIEW_TABLES: [&str; 6] = [
    "active_tokens",
    "block_list",
    "keys",
    "cutoffs",
    "anomalies",
    "risk_signals",
];

/// Every view table of one tenant at the time of the question `now`.
pub fn views(v: &TenantViews, now: DateTime<Utc>) -> Vec<(&'static str, SchemaRef, Vec<RecordBatch>)> {
    VIEW_TABLES.iter().filter_map(|name| view(v, name, now)).collect()
}

/// One view table of one tenant at the time of the question `now`, by
/// name (one of [`VIEW_TABLES`]); `None` for another name.
pub fn view(v: &TenantViews, name: &str, now: DateTime<Utc>) -> Option<(&'static str, SchemaRef, Vec<RecordBatch>)> {
    Some(match name {
        "active_tokens" => ("active_tokens", active_tokens_schema(), vec![active_tokens(v, now)]),
        "block_list" => ("block_list", block_list_schema(), vec![block_list(v)]),
        "keys" => ("keys", keys_schema(), vec![keys(v)]),
        "cutoffs" => ("cutoffs", cutoffs_schema(), vec![cutoffs(v, now)]),
        "anomalies" => ("anomalies", anomalies_schema(), vec![anomalies(v)]),
        "risk_signals" => ("risk_signals", risk_signals_schema(), vec![risk_signals(v, now)]),
        _ => return None,
    })
}

/// `anomalies`: the detectors' hits kept in the view (DESIGN.md
/// "Projections"; kept `anomaly_retention_seconds`). Columns: `anomaly_id`
/// (`a-<position>-<kind>-<by>`), `kind` (`use_after_revocation`,
/// `never_issued`, `concurrent_use`, `new_device`, `mint_burst`,
/// `verify_failure_spike`, `exchange_escalation`, `exchange_depth`,
/// `revoked_key_use`), `severity` (`low`, `medium`, `high`, `critical`),
/// `position` (UInt64, of the triggering event), `detected_at` (UTC, its
/// event time), `subject`, `client_id`, `token_id` (verified; null when the
/// hit is not about one), `ip`, `validator`, `evidence` (text,
/// comma-separated positions of the events it rests on, ascending, the
/// triggering one last), `detail` (for a person).
pub fn anomalies_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema(&[
            ("anomaly_id", DataType::Utf8, false),
            ("kind", DataType::Utf8, false),
            ("severity", DataType::Utf8, false),
            ("position", DataType::UInt64, false),
            ("detected_at", utc_micros(), false),
            ("subject", DataType::Utf8, true),
            ("client_id", DataType::Utf8, true),
            ("token_id", DataType::Utf8, true),
            ("ip", DataType::Utf8, true),
            ("validator", DataType::Utf8, true),
            ("evidence", DataType::Utf8, false),
            ("detail", DataType::Utf8, false),
        ])
    });
    S.clone()
}

/// `risk_signals`: the external risk feed's signals in force — recorded
/// (`RiskSignalReceived`) and not expired at the time of the question.
/// Columns: `position` (UInt64, of the `RiskSignalReceived`), `received_at`
/// (UTC), `source`, `subject`, `client_id`, `ip` (at least one of the three
/// set), `level` (`low`, `medium`, `high`, `critical`), `kind` (the feed's
/// own), `expires_at` (UTC).
pub fn risk_signals_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema(&[
            ("position", DataType::UInt64, false),
            ("received_at", utc_micros(), false),
            ("source", DataType::Utf8, false),
            ("subject", DataType::Utf8, true),
            ("client_id", DataType::Utf8, true),
            ("ip", DataType::Utf8, true),
            ("level", DataType::Utf8, false),
            ("kind", DataType::Utf8, false),
            ("expires_at", utc_micros(), false),
        ])
    });
    S.clone()
}

fn anomalies(v: &TenantViews) -> RecordBatch {
    let mut text: Vec<StringBuilder> = (0..3).map(|_| StringBuilder::new()).collect();
    let mut pos = UInt64Builder::new();
    let mut at = ts();
    let mut about: Vec<StringBuilder> = (0..5).map(|_| StringBuilder::new()).collect();
    let (mut evidence, mut detail) = (StringBuilder::new(), StringBuilder::new());
    for a in &v.detect.anomalies {
        text[0].append_value(&a.anomaly_id);
        text[1].append_value(a.kind.as_str());
        text[2].append_value(severity_name(a.severity));
        pos.append_value(a.position);
        at.append_value(a.detected_at.timestamp_micros());
        let vals = [&a.subject, &a.client_id, &a.token_id, &a.ip, &a.validator];
        for (b, v) in about.iter_mut().zip(vals) {
            b.append_option(v.as_deref());
        }
        let list: Vec<String> = a.evidence.iter().map(u64::to_string).collect();
        evidence.append_value(list.join(","));
        detail.append_value(&a.detail);
    }
    let mut cols: Vec<ArrayRef> = text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    cols.push(Arc::new(pos.finish()));
    cols.push(Arc::new(at.finish()));
    cols.extend(about.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.push(Arc::new(evidence.finish()));
    cols.push(Arc::new(detail.finish()));
    batch(anomalies_schema(), cols)
}

fn risk_signals(v: &TenantViews, now: DateTime<Utc>) -> RecordBatch {
    let mut pos = UInt64Builder::new();
    let (mut received, mut expires) = (ts(), ts());
    let mut text: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
    for r in v.detect.risk_signals.iter().filter(|r| r.expires_at > now) {
        pos.append_value(r.position);
        received.append_value(r.received_at.timestamp_micros());
        let vals = [
            Some(r.source.as_str()),
            r.subject.as_deref(),
            r.client_id.as_deref(),
            r.ip.as_deref(),
            Some(severity_name(r.level)),
            Some(r.kind.as_str()),
        ];
        for (b, v) in text.iter_mut().zip(vals) {
            b.append_option(v);
        }
        expires.append_value(r.expires_at.timestamp_micros());
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(pos.finish()), Arc::new(received.finish())];
    cols.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.push(Arc::new(expires.finish()));
    batch(risk_signals_schema(), cols)
}

fn batch(schema: SchemaRef, cols: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema, cols).expect("columns follow the schema")
}

fn active_tokens(v: &TenantViews, now: DateTime<Utc>) -> RecordBatch {
    let mut text: Vec<StringBuilder> = (0..9).map(|_| StringBuilder::new()).collect();
    let (mut iat, mut nbf, mut exp) = (ts(), ts(), ts());
    let mut pos = UInt64Builder::new();
    let now = now.timestamp();
    let mut rows: Vec<_> = v
        .token_rows()
        .filter(|t| t.expires_at > now && !v.is_revoked(t.token_id))
        .collect();
    rows.sort_unstable_by_key(|t| t.position);
    for t in rows {
        let vals = [
            Some(t.token_id),
            Some(t.issuer),
            Some(t.subject),
            Some(t.client_id),
            Some(t.audience),
            Some(t.scope),
            Some(t.format.as_str()),
            t.kid,
            t.parent,
        ];
        for (b, v) in text.iter_mut().zip(vals) {
            b.append_option(v);
        }
        iat.append_value(t.issued_at * 1_000_000);
        nbf.append_value(t.not_before * 1_000_000);
        exp.append_value(t.expires_at * 1_000_000);
        pos.append_value(t.position);
    }
    let mut cols: Vec<ArrayRef> = text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    cols.push(Arc::new(iat.finish()));
    cols.push(Arc::new(nbf.finish()));
    cols.push(Arc::new(exp.finish()));
    cols.push(Arc::new(pos.finish()));
    batch(active_tokens_schema(), cols)
}

fn block_list(v: &TenantViews) -> RecordBatch {
    let (mut kind, mut token, mut selector, mut kid) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut pos = UInt64Builder::new();
    let (mut revoked_at, mut exp) = (ts(), ts());
    for e in &v.block_log {
        let (k, slot) = match e.kind {
            BlockKind::Token => ("token", 0),
            BlockKind::Selector => ("selector", 1),
            BlockKind::Kid => ("kid", 2),
        };
        kind.append_value(k);
        for (i, b) in [&mut token, &mut selector, &mut kid].into_iter().enumerate() {
            b.append_option((i == slot).then_some(e.key.as_str()));
        }
        pos.append_value(e.position);
        revoked_at.append_value(e.revoked_at.timestamp_micros());
        exp.append_option(e.expires_at.map(|t| t.timestamp_micros()));
    }
    batch(
        block_list_schema(),
        vec![
            Arc::new(kind.finish()),
            Arc::new(token.finish()),
            Arc::new(selector.finish()),
            Arc::new(kid.finish()),
            Arc::new(pos.finish()),
            Arc::new(revoked_at.finish()),
            Arc::new(exp.finish()),
        ],
    )
}

fn keys(v: &TenantViews) -> RecordBatch {
    let mut text: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
    let (mut nbf, mut naf, mut until) = (ts(), ts(), ts());
    let mut pos = UInt64Builder::new();
    for k in v.keys.values() {
        let purpose = match k.purpose {
            tokenledger_domain::events::KeyPurpose::Public => "public",
            tokenledger_domain::events::KeyPurpose::Local => "local",
        };
        let vals = [
            Some(k.kid.as_str()),
            Some(purpose),
            Some(k.state.as_str()),
            k.public_key.as_deref(),
        ];
        for (b, v) in text.iter_mut().zip(vals) {
            b.append_option(v);
        }
        nbf.append_value(k.not_before.timestamp_micros());
        naf.append_value(k.not_after.timestamp_micros());
        until.append_option(k.verify_until.map(|t| t.timestamp_micros()));
        pos.append_value(k.position);
    }
    let mut cols: Vec<ArrayRef> = text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    cols.push(Arc::new(nbf.finish()));
    cols.push(Arc::new(naf.finish()));
    cols.push(Arc::new(until.finish()));
    cols.push(Arc::new(pos.finish()));
    batch(keys_schema(), cols)
}
