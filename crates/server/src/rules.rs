//! Cutoff rules in SQL (DESIGN.md "What it is": "SQL rules over the anomaly
//! view drive automatic minting cutoffs").
//!
//! # The rules file
//!
//! `--rules-file` / `rules_file` / `TOKENLEDGER_RULES_FILE` names a TOML file
//! of rules (optional: without it no rule runs):
//!
//! ```toml
//! [[rule]]
//! id = "subject-concurrent-use"       # an identifier, unique in the file
//! description = "…"                   # optional, for people
//! duration_seconds = 900              # 1 s to 30 days
//! mode = "enforce"                    # or "dry_run"
//! sql = """
//! SELECT 'subject' AS scope, subject AS key,
//!        'concurrent use of a token' AS reason,
//!        max(position) AS position,
//!        string_agg(anomaly_id, ',') AS anomaly_ids
//! FROM anomalies WHERE kind = 'concurrent_use' AND subject IS NOT NULL
//! GROUP BY subject
//! """
//! ```
//!
//! A rule's SQL is one read-only query over one tenant's views —
//! `anomalies`, `risk_signals`, `cutoffs`, `active_tokens`, `block_list`,
//! `keys` (see `tokenledger_analytics::tables`), built from the live views
//! at one position; the `events` table is not offered (it lives in the
//! analytics projection, which may lag the log). It must answer the
//! columns `scope` (text: `subject`, `client`, `issuer` or `tenant`), `key`
//! (text; ignored for `tenant`, whose key is the tenant's name), `reason`
//! (text) and `position` (an integer: the newest evidence position), and
//! may answer `anomaly_ids` (a list of text, or comma-separated text).
//! Rows of one scope and key are merged: the newest position, its reason,
//! the union of the anomaly ids.
//!
//! A rule that does not parse as TOML fields, fails to plan, or lacks those
//! columns is reported at load (logged with the SQL error, and shown by
//! `GET /v1/rules`) and does not stop the others. A file that cannot be read
//! or is not TOML stops the server at start ([`Rules::file_error`]).
//!
//! # Evaluation
//!
//! [`spawn`] runs a tenant's rules when the views report a new anomaly,
//! risk signal or detector configuration of that tenant
//! (`LiveViews::watch_detections`), and every tenant's every
//! `rules_interval_seconds`; [`evaluate_tenant`] runs one
//! tenant's once (tests drive it directly). A tenant runs the rules its
//! `DetectorConfigChanged` lists, every loaded rule before it has one. For
//! each merged row:
//!
//! * a cutoff of the same rule, scope and key that is not released yet
//!   stops it (the server releases it at its `until`);
//! * so does one released at a position at or after the row's `position`:
//!   after a release a rule engages again only on evidence newer than it;
//! * else `MintingCutoffEngaged` is appended to `cutoff-<id>` with
//!   expected revision `no_stream`, where the id is derived from the rule,
//!   scope, key and evidence position: a repeated or concurrent evaluation
//!   cannot engage twice on the same evidence (its conflict is taken as
//!   "already engaged").
//!
//! `cutoff_mode`: `enforce` appends each rule's own mode, `dry_run` appends
//! every rule cutoff as `dry_run` (recorded, never refusing), `off` runs no
//! rule. The rules run on their own task, over an `Arc` of the views taken
//! at one position: the writer never waits for them.

use crate::api::cutoffs::{MAX_DURATION_SECONDS, cutoff_stream};
use crate::config::CutoffMode as Setting;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokenledger_analytics::TenantSnapshot;
use tokenledger_analytics::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use tokenledger_analytics::arrow::compute::cast;
use tokenledger_analytics::arrow::datatypes::{DataType, Schema, UInt64Type};
use tokenledger_analytics::engine::{check_operators, context, read_only};
use tokenledger_analytics::tables::{VIEW_TABLES, view};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::anomalies::MAX_EVIDENCE;
use tokenledger_domain::events::{CutoffMode, CutoffScope, Evidence, MintingCutoffEngaged};
use tokenledger_domain::ids::{check_identifier, check_text};
use tokenledger_domain::views::TenantViews;
use tokenledger_store::{AppendError, ExpectedRevision};

/// Longest reason a rule may give, bytes; longer ones are cut.
pub const MAX_REASON_BYTES: usize = 1024;

/// Rows one rule may answer per tenant; more is a rule error.
pub const MAX_ROWS: usize = 10_000;

/// One rule of the rules file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id (an identifier); the `rule_id` of the cutoffs it engages.
    pub id: String,
    /// One read-only SQL query over the tenant's views (see the module docs).
    pub sql: String,
    /// How long a cutoff it engages lasts, seconds (1 to 30 days).
    pub duration_seconds: i64,
    /// `enforce` or `dry_run` (under `cutoff_mode = enforce`).
    pub mode: CutoffMode,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A rule as loaded: the rule (when its fields parsed), the view tables
/// its SQL names, and why it does not run, if it does not.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    /// The rule's id (`rule[<n>]` when it has none).
    pub id: String,
    /// The rule, when its fields parsed.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    /// The view tables its SQL names (only these are built to run it).
    pub tables: Vec<&'static str>,
    /// Why it does not run (TOML fields, SQL plan, columns); `None`: it runs.
    pub error: Option<String>,
}

impl RuleStatus {
    /// The rule, when it loaded without error.
    pub fn runnable(&self) -> Option<&Rule> {
        self.rule.as_ref().filter(|_| self.error.is_none())
    }
}

/// The loaded rules file. Its SQL is planned once, on first use
/// ([`Rules::statuses`]).
pub struct Rules {
    path: Option<PathBuf>,
    file_error: Option<String>,
    parsed: Vec<RuleStatus>,
    checked: tokio::sync::OnceCell<Vec<RuleStatus>>,
    memory_bytes: usize,
    timeout: Duration,
    /// (tenant, rule id) → the last error running it there.
    last_errors: Mutex<HashMap<(String, String), String>>,
}

/// A cutoff a rule engaged ([`evaluate_tenant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Engaged {
    /// The cutoff's id: `rule-<32 hex>`, derived from the rule, scope, key
    /// and evidence position.
    pub cutoff_id: String,
    /// The rule.
    pub rule_id: String,
    /// What it applies to.
    pub scope: CutoffScope,
    /// The subject, client, issuer or tenant name.
    pub key: String,
    /// Enforce or dry run, as appended.
    pub mode: CutoffMode,
    /// The newest evidence position the rule answered.
    pub evidence_position: u64,
    /// Position of the `MintingCutoffEngaged`.
    pub position: u64,
}

/// Why a tenant's evaluation stopped: appending a cutoff failed (other
/// than "already engaged"). Rule errors do not stop it; they are logged and
/// shown by `GET /v1/rules`.
#[derive(Debug, thiserror::Error)]
#[error("appending a rule cutoff failed: {0}")]
pub struct EvaluateError(pub AppendError);

impl Rules {
    /// No rules.
    pub fn none() -> Rules {
        Rules::parse(None, None, 512 << 20, Duration::from_secs(30))
    }

    /// Loads the rules file `path` (none: no rules); SQL is checked later
    /// ([`Rules::statuses`]). A file that cannot be read or is not TOML
    /// leaves no rules and [`Rules::file_error`] set (logged). SQL runs
    /// within `memory_bytes` and `timeout`.
    pub fn load(path: Option<&Path>, memory_bytes: usize, timeout: Duration) -> Rules {
        let Some(path) = path else {
            return Rules::parse(None, None, memory_bytes, timeout);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Rules::parse(Some(path.to_owned()), Some(&text), memory_bytes, timeout),
            Err(e) => {
                let mut r = Rules::parse(Some(path.to_owned()), None, memory_bytes, timeout);
                r.file_error = Some(format!("rules file {}: {e}", path.display()));
                tracing::error!(error = r.file_error.as_deref(), "no cutoff rule loaded");
                r
            }
        }
    }

    /// Parses the text of a rules file (`origin` names it in messages).
    pub fn parse(origin: Option<PathBuf>, text: Option<&str>, memory_bytes: usize, timeout: Duration) -> Rules {
        let mut rules = Rules {
            path: origin,
            file_error: None,
            parsed: Vec::new(),
            checked: tokio::sync::OnceCell::new(),
            memory_bytes,
            timeout,
            last_errors: Mutex::default(),
        };
        let Some(text) = text else { return rules };
        let name = rules
            .path
            .as_ref()
            .map_or_else(|| "rules".to_owned(), |p| p.display().to_string());
        let mut table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                rules.file_error = Some(format!("rules file {name}: {}", e.message().trim()));
                tracing::error!(error = rules.file_error.as_deref(), "no cutoff rule loaded");
                return rules;
            }
        };
        let list = match table.remove("rule") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                rules.file_error = Some(format!(
                    "rules file {name}: `rule` must be an array of tables ([[rule]])"
                ));
                return rules;
            }
        };
        if let Some(k) = table.keys().next() {
            rules.file_error = Some(format!("rules file {name}: unknown key {k:?} (only [[rule]] tables)"));
            return rules;
        }
        let mut seen = BTreeSet::new();
        for (i, v) in list.into_iter().enumerate() {
            let id = v
                .get("id")
                .and_then(|x| x.as_str())
                .map_or_else(|| format!("rule[{i}]"), str::to_owned);
            let mut status = RuleStatus {
                id: id.clone(),
                rule: None,
                tables: Vec::new(),
                error: None,
            };
            match v.try_into::<Rule>() {
                Err(e) => status.error = Some(format!("invalid rule: {}", e.message().trim())),
                Ok(rule) => {
                    status.error = check_fields(&rule).err();
                    if status.error.is_none() && !seen.insert(rule.id.clone()) {
                        status.error = Some(format!("duplicate rule id {:?}", rule.id));
                    }
                    status.tables = tables_named(&rule.sql);
                    status.rule = Some(rule);
                }
            }
            rules.parsed.push(status);
        }
        rules
    }

    /// The rules file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Why the rules file could not be used at all (unreadable, not TOML):
    /// the server refuses to start with it.
    pub fn file_error(&self) -> Option<&str> {
        self.file_error.as_deref()
    }

    /// Every rule of the file with its load status, the SQL planned over
    /// empty views on the first call (each error logged once then).
    pub async fn statuses(&self) -> &[RuleStatus] {
        self.checked
            .get_or_init(|| async {
                let mut out = self.parsed.clone();
                for s in &mut out {
                    if s.error.is_none()
                        && let Some(rule) = &s.rule
                    {
                        s.error = plan_check(rule, self.memory_bytes).await.err();
                    }
                    match (&s.error, &s.rule) {
                        (Some(e), _) => tracing::error!(rule = %s.id, error = %e, "cutoff rule not loaded"),
                        (None, Some(r)) => {
                            tracing::info!(rule = %s.id, mode = ?r.mode, tables = ?s.tables, "cutoff rule loaded")
                        }
                        (None, None) => {}
                    }
                }
                out
            })
            .await
    }

    /// The ids of every rule in the file (loaded or not).
    pub fn ids(&self) -> Vec<String> {
        self.parsed
            .iter()
            .filter_map(|s| s.rule.as_ref().map(|r| r.id.clone()))
            .collect()
    }

    /// The last error running `rule` in `tenant`, if its last run failed.
    pub fn last_error(&self, tenant: &str, rule: &str) -> Option<String> {
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_owned(), rule.to_owned()))
            .cloned()
    }

    fn record(&self, tenant: &str, rule: &str, error: Option<String>) {
        let mut m = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), rule.to_owned());
        match error {
            Some(e) => {
                if m.get(&key) != Some(&e) {
                    tracing::warn!(tenant, rule, error = %e, "cutoff rule failed");
                }
                m.insert(key, e);
            }
            None => {
                m.remove(&key);
            }
        }
    }
}

/// Checks the fields a rule's SQL does not decide.
fn check_fields(rule: &Rule) -> Result<(), String> {
    check_identifier("id", &rule.id).map_err(|e| e.to_string())?;
    if rule.id == "manual" {
        return Err("rule id \"manual\" is reserved for cutoffs engaged by hand".into());
    }
    if !(1..=MAX_DURATION_SECONDS).contains(&rule.duration_seconds) {
        return Err(format!("duration_seconds must be 1 to {MAX_DURATION_SECONDS}"));
    }
    if rule.sql.trim().is_empty() {
        return Err("sql is empty".into());
    }
    Ok(())
}

/// The view tables a query's text names (words of the query that are
/// table names; naming one too many only builds a table for nothing).
fn tables_named(sql: &str) -> Vec<&'static str> {
    let words: BTreeSet<String> = sql
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    VIEW_TABLES.into_iter().filter(|t| words.contains(*t)).collect()
}

/// Plans `rule` over empty views and checks the columns it answers.
async fn plan_check(rule: &Rule, memory_bytes: usize) -> Result<(), String> {
    check_operators(&rule.sql).map_err(|e| e.to_string())?;
    let empty = TenantViews::default();
    let tables = VIEW_TABLES
        .iter()
        .filter_map(|t| view(&empty, t, DateTime::<Utc>::UNIX_EPOCH))
        .collect();
    let ctx = context(TenantSnapshot { position: 0, tables }, memory_bytes).map_err(|e| e.to_string())?;
    let df = ctx
        .sql_with_options(&rule.sql, read_only())
        .await
        .map_err(|e| tokenledger_analytics::SqlError::from(e).to_string())?;
    check_columns(df.schema().as_arrow())
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The columns a rule must answer: `scope`, `key`, `reason` (text),
/// `position` (an integer), optionally `anomaly_ids` (text or a list of text).
fn check_columns(schema: &Schema) -> Result<(), String> {
    let mut wrong = Vec::new();
    for name in ["scope", "key", "reason"] {
        match schema.field_with_name(name) {
            Ok(f) if is_text(f.data_type()) || f.data_type() == &DataType::Null => {}
            Ok(f) => wrong.push(format!("column {name} must be text, not {}", f.data_type())),
            Err(_) => wrong.push(format!("column {name} is missing")),
        }
    }
    match schema.field_with_name("position") {
        Ok(f) if f.data_type().is_integer() => {}
        Ok(f) => wrong.push(format!("column position must be an integer, not {}", f.data_type())),
        Err(_) => wrong.push("column position is missing".to_owned()),
    }
    if let Ok(f) = schema.field_with_name("anomaly_ids") {
        let ok = match f.data_type() {
            t if is_text(t) || t == &DataType::Null => true,
            DataType::List(i) | DataType::LargeList(i) | DataType::ListView(i) | DataType::LargeListView(i) => {
                is_text(i.data_type()) || i.data_type() == &DataType::Null
            }
            _ => false,
        };
        if !ok {
            wrong.push(format!(
                "column anomaly_ids must be text or a list of text, not {}",
                f.data_type()
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the rule must answer scope, key, reason (text) and position (an integer): {}",
            wrong.join("; ")
        ))
    }
}

/// One merged match of a rule: a scope and key with its newest evidence.
#[derive(Debug, Clone)]
struct Match {
    position: u64,
    reason: String,
    anomaly_ids: BTreeSet<String>,
}

/// Runs `rule` over `views` at `now`; the matches by (scope, key).
async fn run_rule(
    rules: &Rules,
    rule: &Rule,
    tables: &[&'static str],
    tenant: &str,
    views: &TenantViews,
    now: DateTime<Utc>,
) -> Result<BTreeMap<(CutoffScope, String), Match>, String> {
    let built = tables.iter().filter_map(|t| view(views, t, now)).collect();
    let ctx = context(
        TenantSnapshot {
            position: 0,
            tables: built,
        },
        rules.memory_bytes,
    )
    .map_err(|e| e.to_string())?;
    let run = async {
        let df = ctx.sql_with_options(&rule.sql, read_only()).await?;
        df.limit(0, Some(MAX_ROWS + 1))?.collect().await
    };
    let batches = match tokio::time::timeout(rules.timeout, run).await {
        Err(_) => return Err(format!("the rule did not finish within {:?}", rules.timeout)),
        Ok(r) => r.map_err(|e| tokenledger_analytics::SqlError::from(e).to_string())?,
    };
    if batches.iter().map(RecordBatch::num_rows).sum::<usize>() > MAX_ROWS {
        return Err(format!("the rule answered more than {MAX_ROWS} rows"));
    }
    let mut out: BTreeMap<(CutoffScope, String), Match> = BTreeMap::new();
    let mut skipped: Option<String> = None;
    for b in &batches {
        let text = |name: &str| -> Result<Vec<Option<String>>, String> { text_column(b, name) };
        let (scopes, keys, reasons) = (text("scope")?, text("key")?, text("reason")?);
        let positions = u64_column(b, "position")?;
        let ids = anomaly_ids(b)?;
        for i in 0..b.num_rows() {
            let scope = match scopes[i].as_deref().map(str::trim) {
                Some("subject") => CutoffScope::Subject,
                Some("client") => CutoffScope::Client,
                Some("issuer") => CutoffScope::Issuer,
                Some("tenant") => CutoffScope::Tenant,
                other => {
                    skipped.get_or_insert(format!(
                        "a row with scope {other:?} was skipped (subject, client, issuer or tenant)"
                    ));
                    continue;
                }
            };
            let key = if scope == CutoffScope::Tenant {
                tenant.to_owned()
            } else {
                match keys[i].as_deref() {
                    Some(k) if check_identifier("key", k).is_ok() => k.to_owned(),
                    _ => {
                        // A null key (no subject on the anomaly) matches nothing.
                        if keys[i].is_some() {
                            skipped.get_or_insert("a row whose key is not a valid identifier was skipped".into());
                        }
                        continue;
                    }
                }
            };
            let Some(position) = positions[i] else {
                skipped.get_or_insert("a row without a position was skipped".into());
                continue;
            };
            let reason = clean_reason(reasons[i].as_deref(), rule);
            let m = out.entry((scope, key)).or_insert_with(|| Match {
                position,
                reason: reason.clone(),
                anomaly_ids: BTreeSet::new(),
            });
            if position > m.position {
                m.position = position;
                m.reason = reason;
            }
            for id in &ids[i] {
                if check_identifier("anomaly_id", id).is_ok() {
                    m.anomaly_ids.insert(id.clone());
                }
            }
        }
    }
    if let Some(s) = skipped {
        tracing::warn!(tenant, rule = %rule.id, "{s}");
    }
    Ok(out)
}

/// The reason to record: the row's, trimmed, cut to [`MAX_REASON_BYTES`];
/// the rule's description or id when it is empty or not clean text.
fn clean_reason(reason: Option<&str>, rule: &Rule) -> String {
    let fallback = || {
        rule.description
            .clone()
            .filter(|d| check_text("reason", d).is_ok() && !d.trim().is_empty())
            .unwrap_or_else(|| format!("rule {}", rule.id))
    };
    let Some(r) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        return fallback();
    };
    let mut end = r.len().min(MAX_REASON_BYTES);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    let r = &r[..end];
    if check_text("reason", r).is_ok() {
        r.to_owned()
    } else {
        fallback()
    }
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    let i = b
        .schema()
        .index_of(name)
        .map_err(|_| format!("column {name} is missing"))?;
    Ok(b.column(i))
}

fn text_column(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, String> {
    let a = cast(column(b, name)?, &DataType::Utf8).map_err(|e| format!("column {name}: {e}"))?;
    let s = a.as_string::<i32>();
    Ok((0..s.len())
        .map(|i| s.is_valid(i).then(|| s.value(i).to_owned()))
        .collect())
}

fn u64_column(b: &RecordBatch, name: &str) -> Result<Vec<Option<u64>>, String> {
    // A negative position casts to null (and the row is skipped).
    let a = cast(column(b, name)?, &DataType::UInt64).map_err(|e| format!("column {name}: {e}"))?;
    let p = a.as_primitive::<UInt64Type>();
    Ok((0..p.len()).map(|i| p.is_valid(i).then(|| p.value(i))).collect())
}

/// The `anomaly_ids` of every row (empty when the column is absent).
fn anomaly_ids(b: &RecordBatch) -> Result<Vec<Vec<String>>, String> {
    let Ok(i) = b.schema().index_of("anomaly_ids") else {
        return Ok(vec![Vec::new(); b.num_rows()]);
    };
    let a = b.column(i);
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let list = match a.data_type() {
        DataType::List(_) | DataType::LargeList(_) | DataType::ListView(_) | DataType::LargeListView(_) => {
            let l =
                cast(a, &DataType::new_list(DataType::Utf8, true)).map_err(|e| format!("column anomaly_ids: {e}"))?;
            let l = l.as_list::<i32>();
            (0..l.len())
                .map(|r| {
                    if !l.is_valid(r) {
                        return Vec::new();
                    }
                    let v = l.value(r);
                    let s = v.as_string::<i32>();
                    (0..s.len())
                        .filter(|&j| s.is_valid(j))
                        .flat_map(|j| split(s.value(j)))
                        .collect()
                })
                .collect()
        }
        _ => text_column(b, "anomaly_ids")?
            .into_iter()
            .map(|s| s.as_deref().map(split).unwrap_or_default())
            .collect(),
    };
    Ok(list)
}

/// The cutoff id of a rule's match: `rule-` and 32 hex digits of a SHA-256
/// over the rule, scope, key and evidence position, so the same evidence
/// always names the same cutoff (and its stream).
pub fn cutoff_id(rule_id: &str, scope: CutoffScope, key: &str, position: u64) -> String {
    let mut h = Sha256::new();
    for part in [rule_id, scope_name(scope), key, &position.to_string()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("rule-{}", hex::encode(&h.finalize()[..16]))
}

fn scope_name(s: CutoffScope) -> &'static str {
    match s {
        CutoffScope::Subject => "subject",
        CutoffScope::Client => "client",
        CutoffScope::Issuer => "issuer",
        CutoffScope::Tenant => "tenant",
    }
}

/// The rules `tenant` runs: those its detector configuration lists (every
/// loaded one before it has one), that loaded without error.
fn in_force<'a>(statuses: &'a [RuleStatus], views: &TenantViews) -> Vec<&'a RuleStatus> {
    statuses
        .iter()
        .filter(|s| s.runnable().is_some())
        .filter(|s| views.detect.rules.as_ref().is_none_or(|l| l.contains(&s.id)))
        .collect()
}

/// Runs the rules in force for `tenant` once over its live views (see the
/// module docs) and appends a `MintingCutoffEngaged` for every new match.
/// Returns the cutoffs it engaged, in rule order. Nothing runs under
/// `cutoff_mode = off`, for a tenant without views, or without rules.
///
/// Errors: [`EvaluateError`] when an append fails for another reason than
/// "already engaged" (the cutoffs before it stay engaged). A rule that
/// fails is logged, remembered for `GET /v1/rules` and skipped.
pub async fn evaluate_tenant(st: &AppState, tenant: &str) -> Result<Vec<Engaged>, EvaluateError> {
    let setting = st.settings.cutoff_mode;
    if setting == Setting::Off {
        return Ok(Vec::new());
    }
    let Some(views) = st.views.tenant(tenant) else {
        return Ok(Vec::new());
    };
    let statuses = st.rules.statuses().await;
    let mut engaged = Vec::new();
    for status in in_force(statuses, &views) {
        let Some(rule) = status.runnable() else { continue };
        let now = st.clock.now();
        let matches = match run_rule(&st.rules, rule, &status.tables, tenant, &views, now).await {
            Ok(m) => {
                st.rules.record(tenant, &rule.id, None);
                m
            }
            Err(e) => {
                st.rules.record(tenant, &rule.id, Some(e));
                continue;
            }
        };
        for ((scope, key), m) in matches {
            let prior = views
                .cutoffs
                .values()
                .filter(|c| c.rule_id == rule.id && c.scope == scope && c.key == key);
            let mut pending = false;
            let mut released = None::<u64>;
            for c in prior {
                match c.released_position {
                    None => pending = true,
                    Some(r) => released = released.max(Some(r)),
                }
            }
            if pending || released.is_some_and(|r| r >= m.position) {
                continue;
            }
            let mode = match setting {
                Setting::DryRun => CutoffMode::DryRun,
                _ => rule.mode,
            };
            let id = cutoff_id(&rule.id, scope, &key, m.position);
            let event = MintingCutoffEngaged {
                cutoff_id: id.clone(),
                scope,
                key: key.clone(),
                rule_id: rule.id.clone(),
                reason: m.reason.clone(),
                evidence: Evidence {
                    anomaly_ids: m.anomaly_ids.iter().rev().take(MAX_EVIDENCE).rev().cloned().collect(),
                    positions: vec![m.position],
                },
                until: now + chrono::Duration::seconds(rule.duration_seconds),
                mode,
            };
            match crate::api::append_server_event(
                st,
                tenant,
                "server",
                &cutoff_stream(&id),
                ExpectedRevision::NoStream,
                DomainEvent::MintingCutoffEngaged(event),
            )
            .await
            {
                Ok(r) => {
                    let position = r.events.last().map_or(0, |e| e.position.0);
                    tracing::warn!(tenant, rule = %rule.id, cutoff_id = %id, scope = scope_name(scope), key = %key, mode = ?mode, evidence = m.position, "minting cutoff engaged by a rule");
                    engaged.push(Engaged {
                        cutoff_id: id,
                        rule_id: rule.id.clone(),
                        scope,
                        key,
                        mode,
                        evidence_position: m.position,
                        position,
                    });
                }
                Err(AppendError::WrongExpectedRevision { .. }) => {}
                Err(e) => return Err(EvaluateError(e)),
            }
        }
    }
    Ok(engaged)
}

/// Starts the rule evaluator: it plans the rules (logging load errors),
/// then runs [`evaluate_tenant`] for every tenant every
/// `rules_interval_seconds`, and, when the views report a new anomaly, risk
/// signal or detector configuration, for the tenants that have one.
/// Ends at once when there is no rule file or `cutoff_mode` is `off`.
pub fn spawn(st: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let statuses = st.rules.statuses().await;
        if st.rules.path().is_none() || st.settings.cutoff_mode == Setting::Off {
            if st.rules.path().is_some() {
                tracing::info!("cutoff_mode is off: cutoff rules are not evaluated");
            }
            return;
        }
        let runnable = statuses.iter().filter(|s| s.runnable().is_some()).count();
        tracing::info!(
            rules = runnable,
            broken = statuses.len() - runnable,
            "cutoff rule evaluator started"
        );
        let mut detections = st.views.watch_detections();
        let mut every = tokio::time::interval(Duration::from_secs(st.settings.rules_interval_seconds.max(1)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What each tenant's detections looked like at its last evaluation:
        // a detection wakes the rules of the tenants whose marks moved only.
        let mut seen: HashMap<String, DetectionMark> = HashMap::new();
        loop {
            let every_tenant = tokio::select! {
                _ = every.tick() => true,
                changed = detections.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
            };
            let mut tenants = st.views.tenants();
            tenants.sort();
            for t in tenants {
                let mark = st.views.read(&t, detection_mark);
                if !every_tenant && seen.get(&t) == Some(&mark) {
                    continue;
                }
                seen.insert(t.clone(), mark);
                if let Err(e) = evaluate_tenant(&st, &t).await {
                    tracing::error!(tenant = %t, error = %e, "cutoff rules stopped for this round");
                }
            }
        }
    })
}

/// Positions of a tenant's newest anomaly, newest risk signal and detector
/// configuration: when none moved, a detection elsewhere gives its rules
/// nothing new to read.
type DetectionMark = (Option<u64>, Option<u64>, Option<u64>);

fn detection_mark(v: &TenantViews) -> DetectionMark {
    (
        v.detect.anomalies.back().map(|a| a.position),
        v.detect.risk_signals.last().map(|r| r.position),
        v.detect.config_position,
    )
}

/// The rules of `GET /v1/rules` for `tenant`: each with its load status,
/// whether the tenant runs it, and its last error there.
pub async fn describe(st: &AppState, tenant: &str) -> serde_json::Value {
    let statuses = st.rules.statuses().await;
    let views = st.views.tenant(tenant);
    let listed = views.as_ref().and_then(|v| v.detect.rules.clone());
    let rules: Vec<serde_json::Value> = statuses
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["loaded"] = serde_json::Value::Bool(s.error.is_none());
            v["in_force"] =
                serde_json::Value::Bool(s.error.is_none() && listed.as_ref().is_none_or(|l| l.contains(&s.id)));
            v["last_error"] = st.rules.last_error(tenant, &s.id).into();
            v
        })
        .collect();
    serde_json::json!({
        "cutoff_mode": match st.settings.cutoff_mode {
            Setting::Enforce => "enforce",
            Setting::DryRun => "dry_run",
            Setting::Off => "off",
        },
        "rules": rules,
    })
}
