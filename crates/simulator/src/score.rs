//! Scores a run: matches the anomalies and cutoffs the server produced for
//! the simulated tenants against the run's ground truth (`labels.json`).
//!
//! * A scenario is **detected** when an anomaly of one of its
//!   `expected_anomalies` kinds, concerning one of its keys (the anomaly's
//!   `token_id`, `subject`, `client_id` or `ip` equals the label's), was
//!   detected at or after the scenario's start (anomaly times are whole
//!   seconds, so the start is taken down to its second).
//! * An anomaly is **matched** (a true positive) when it is about a
//!   scenario in this way with a kind in `expected_anomalies` or
//!   `also_explains`. **Precision** = matched / all anomalies of the
//!   simulated tenants; **recall** = detected / injected scenarios.
//! * **Time to cutoff**: for a scenario expecting a cutoff, the first
//!   cutoff of that scope and key engaged at or after its start:
//!   `engaged_at − start`, seconds.
//! * **False positives**: anomalies matched to no scenario, per 1,000
//!   benign requests and per benign token (the whole anomaly count in a
//!   `--benign-only` run).

use crate::exec::{CredentialsFile, Label, LabelsFile};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One anomaly as `GET /v1/anomalies` answers it (the fields scoring uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenAnomaly {
    /// `a-<position>-<kind>-<by>`.
    pub anomaly_id: String,
    /// The tenant.
    pub tenant: String,
    /// Its kind.
    pub kind: String,
    /// When, UTC.
    pub detected_at: DateTime<Utc>,
    /// Subject concerned.
    pub subject: Option<String>,
    /// Client concerned.
    pub client_id: Option<String>,
    /// Token concerned.
    pub token_id: Option<String>,
    /// Address concerned.
    pub ip: Option<String>,
    /// What was seen.
    pub detail: String,
}

/// One cutoff as `GET /v1/cutoffs` answers it (the fields scoring uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenCutoff {
    /// Its id.
    pub cutoff_id: String,
    /// The tenant.
    pub tenant: String,
    /// `subject`, `client`, `issuer` or `tenant`.
    pub scope: String,
    /// What it applies to.
    pub key: String,
    /// The rule, or `manual`.
    pub rule_id: String,
    /// `enforce` or `dry_run`.
    pub mode: String,
    /// When it was engaged, UTC.
    pub engaged_at: DateTime<Utc>,
}

/// How one scenario fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioScore {
    /// The label's id.
    pub scenario_id: String,
    /// Its kind.
    pub kind: String,
    /// The tenant.
    pub tenant: String,
    /// Whether it was injected.
    pub injected: bool,
    /// Whether it was detected.
    pub detected: bool,
    /// Seconds from start to the first detecting anomaly.
    pub seconds_to_detect: Option<f64>,
    /// Ids of the anomalies matched to it.
    pub anomalies: Vec<String>,
    /// Whether a cutoff was expected.
    pub cutoff_expected: bool,
    /// The cutoff found (id), if any.
    pub cutoff_id: Option<String>,
    /// Seconds from start to that cutoff's `engaged_at`.
    pub seconds_to_cutoff: Option<f64>,
}

/// Detection of one scenario kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindScore {
    /// Scenarios detected.
    pub detected: usize,
    /// Scenarios injected.
    pub total: usize,
}

/// The scorecard of one run (`tokenledger score`; `--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scorecard {
    /// The run's seed.
    pub seed: u64,
    /// Whether the run had no attacks.
    pub benign_only: bool,
    /// The simulated tenants.
    pub tenants: Vec<String>,
    /// Detection per scenario kind.
    pub by_kind: BTreeMap<String, KindScore>,
    /// Every scenario.
    pub scenarios: Vec<ScenarioScore>,
    /// Anomalies in the simulated tenants.
    pub anomalies: usize,
    /// Anomalies by kind.
    pub anomalies_by_kind: BTreeMap<String, usize>,
    /// Anomalies matched to a scenario.
    pub matched_anomalies: usize,
    /// Unmatched anomalies (false positives), at most 20, for a person.
    pub unmatched_examples: Vec<SeenAnomaly>,
    /// matched / all; `None` when there are no anomalies.
    pub precision: Option<f64>,
    /// detected / injected scenarios; `None` when none were injected.
    pub recall: Option<f64>,
    /// Scenarios expecting a cutoff.
    pub cutoffs_expected: usize,
    /// ... of which a matching cutoff was engaged.
    pub cutoffs_engaged: usize,
    /// Median seconds to cutoff.
    pub cutoff_p50_seconds: Option<f64>,
    /// Longest seconds to cutoff.
    pub cutoff_max_seconds: Option<f64>,
    /// Cutoffs in the simulated tenants.
    pub cutoffs_total: usize,
    /// Benign requests of the run.
    pub benign_requests: u64,
    /// Benign tokens of the run.
    pub benign_tokens: u64,
    /// Unmatched anomalies per 1,000 benign requests.
    pub false_positives_per_1000_requests: Option<f64>,
    /// Unmatched anomalies per benign token.
    pub false_positives_per_token: Option<f64>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

impl std::fmt::Display for Scorecard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scorecard: seed {} — tenants {} — {}",
            self.seed,
            self.tenants.join(", "),
            if self.benign_only {
                "benign only"
            } else {
                "with attacks"
            }
        )?;
        if !self.benign_only {
            writeln!(f)?;
            writeln!(f, "{:<28} {:>9} {:>7}", "scenario kind", "detected", "total")?;
            for (k, s) in &self.by_kind {
                writeln!(f, "{k:<28} {:>9} {:>7}", s.detected, s.total)?;
            }
            writeln!(f)?;
            writeln!(
                f,
                "{:<44} {:<8} {:>10} {:>10}  cutoff",
                "scenario", "detected", "detect s", "cutoff s"
            )?;
            for s in &self.scenarios {
                writeln!(
                    f,
                    "{:<44} {:<8} {:>10} {:>10}  {}",
                    s.scenario_id,
                    if !s.injected {
                        "not run"
                    } else if s.detected {
                        "yes"
                    } else {
                        "NO"
                    },
                    opt(s.seconds_to_detect, 2),
                    opt(s.seconds_to_cutoff, 2),
                    match (s.cutoff_expected, &s.cutoff_id) {
                        (false, _) => "not expected".to_owned(),
                        (true, Some(id)) => id.clone(),
                        (true, None) => "MISSING".to_owned(),
                    }
                )?;
            }
            writeln!(f)?;
        }
        writeln!(f, "{:<40} {}", "recall (detected / injected)", opt(self.recall, 3))?;
        writeln!(
            f,
            "{:<40} {}",
            "precision (matched / all anomalies)",
            opt(self.precision, 3)
        )?;
        writeln!(
            f,
            "{:<40} {} matched of {} ({})",
            "anomalies",
            self.matched_anomalies,
            self.anomalies,
            self.anomalies_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            f,
            "{:<40} {} of {} expected engaged; p50 {} s, max {} s ({} cutoffs in all)",
            "time to cutoff",
            self.cutoffs_engaged,
            self.cutoffs_expected,
            opt(self.cutoff_p50_seconds, 2),
            opt(self.cutoff_max_seconds, 2),
            self.cutoffs_total
        )?;
        writeln!(
            f,
            "{:<40} {} per 1,000 benign requests ({} requests), {} per benign token ({} tokens)",
            "false positives",
            opt(self.false_positives_per_1000_requests, 3),
            self.benign_requests,
            opt(self.false_positives_per_token, 4),
            self.benign_tokens
        )?;
        for a in &self.unmatched_examples {
            writeln!(
                f,
                "  unmatched: {} {} {} subject={} client={} ip={} — {}",
                a.tenant,
                a.anomaly_id,
                a.detected_at.format("%H:%M:%S"),
                a.subject.as_deref().unwrap_or("-"),
                a.client_id.as_deref().unwrap_or("-"),
                a.ip.as_deref().unwrap_or("-"),
                a.detail
            )?;
        }
        Ok(())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn get(http: &reqwest::Client, url: &str, secret: &str) -> Result<Value, String> {
    let r = http
        .get(url)
        .bearer_auth(secret)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status} {body}"));
    }
    Ok(body)
}

/// Every anomaly of the tenant of `secret` (paged with `since`/`limit`).
///
/// Errors: no answer, a non-2xx answer or an unexpected shape.
pub async fn fetch_anomalies(
    http: &reqwest::Client,
    server: &str,
    tenant: &str,
    secret: &str,
) -> Result<Vec<SeenAnomaly>, String> {
    let mut out = Vec::new();
    let mut since: Option<u64> = None;
    loop {
        let url = match since {
            Some(p) => format!("{server}/v1/anomalies?since={p}&limit=500"),
            None => format!("{server}/v1/anomalies?limit=500"),
        };
        let body = get(http, &url, secret).await?;
        let list = body["anomalies"]
            .as_array()
            .ok_or_else(|| format!("GET {url}: no anomalies list"))?;
        for a in list {
            let mut a = a.clone();
            a["tenant"] = Value::from(tenant);
            out.push(serde_json::from_value::<SeenAnomaly>(a).map_err(|e| format!("an anomaly: {e}"))?);
        }
        let position = body["position"].as_u64();
        if list.is_empty() || position.is_none() || position == since {
            break;
        }
        since = position;
    }
    Ok(out)
}

/// Every cutoff of the tenant of `secret`.
///
/// Errors: no answer, a non-2xx answer or an unexpected shape.
pub async fn fetch_cutoffs(
    http: &reqwest::Client,
    server: &str,
    tenant: &str,
    secret: &str,
) -> Result<Vec<SeenCutoff>, String> {
    let url = format!("{server}/v1/cutoffs");
    let body = get(http, &url, secret).await?;
    let list = body["cutoffs"]
        .as_array()
        .ok_or_else(|| format!("GET {url}: no cutoffs list"))?;
    list.iter()
        .map(|c| {
            let mut c = c.clone();
            c["tenant"] = Value::from(tenant);
            serde_json::from_value::<SeenCutoff>(c).map_err(|e| format!("a cutoff: {e}"))
        })
        .collect()
}

fn concerns(l: &Label, a: &SeenAnomaly) -> bool {
    let eq = |x: &Option<String>, y: &Option<String>| x.is_some() && x == y;
    a.tenant == l.tenant
        && (eq(&l.keys.token_id, &a.token_id)
            || eq(&l.keys.subject, &a.subject)
            || eq(&l.keys.client_id, &a.client_id)
            || eq(&l.keys.ip, &a.ip))
}

fn start_second(l: &Label) -> Option<DateTime<Utc>> {
    l.start.and_then(|s| DateTime::from_timestamp(s.timestamp(), 0))
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// Scores `labels` against the anomalies and cutoffs the server produced.
pub fn score_labels(labels: &LabelsFile, anomalies: &[SeenAnomaly], cutoffs: &[SeenCutoff]) -> Scorecard {
    let mut matched = vec![false; anomalies.len()];
    let mut scenarios = Vec::new();
    let mut by_kind: BTreeMap<String, KindScore> = BTreeMap::new();
    let mut ttc = Vec::new();
    let (mut cut_expected, mut cut_engaged) = (0, 0);
    for l in &labels.scenarios {
        let kind = l.kind.as_str().to_owned();
        let mut s = ScenarioScore {
            scenario_id: l.scenario_id.clone(),
            kind: kind.clone(),
            tenant: l.tenant.clone(),
            injected: l.injected,
            detected: false,
            seconds_to_detect: None,
            anomalies: Vec::new(),
            cutoff_expected: l.expected_cutoff.is_some(),
            cutoff_id: None,
            seconds_to_cutoff: None,
        };
        let entry = by_kind.entry(kind).or_default();
        let (Some(start), Some(start_s)) = (l.start, start_second(l)) else {
            scenarios.push(s);
            continue;
        };
        if l.injected {
            entry.total += 1;
        }
        for (i, a) in anomalies.iter().enumerate() {
            if a.detected_at < start_s || !concerns(l, a) {
                continue;
            }
            let expected = l.expected_anomalies.contains(&a.kind);
            if expected || l.also_explains.contains(&a.kind) {
                matched[i] = true;
                s.anomalies.push(a.anomaly_id.clone());
            }
            if expected {
                let d = secs(start, a.detected_at).max(0.0);
                s.detected = true;
                s.seconds_to_detect = Some(s.seconds_to_detect.map_or(d, |x: f64| x.min(d)));
            }
        }
        if s.detected && l.injected {
            entry.detected += 1;
        }
        if let Some(want) = &l.expected_cutoff {
            cut_expected += 1;
            let found = cutoffs
                .iter()
                .filter(|c| {
                    c.tenant == l.tenant && c.scope == want.scope && c.key == want.key && c.engaged_at >= start_s
                })
                .min_by_key(|c| c.engaged_at);
            if let Some(c) = found {
                cut_engaged += 1;
                let d = secs(start, c.engaged_at).max(0.0);
                ttc.push(d);
                s.cutoff_id = Some(c.cutoff_id.clone());
                s.seconds_to_cutoff = Some(d);
            }
        }
        scenarios.push(s);
    }
    ttc.sort_by(f64::total_cmp);
    let injected: usize = by_kind.values().map(|k| k.total).sum();
    let detected: usize = by_kind.values().map(|k| k.detected).sum();
    let n_matched = matched.iter().filter(|m| **m).count();
    let unmatched: Vec<SeenAnomaly> = anomalies
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|(a, _)| a.clone())
        .collect();
    let fp = unmatched.len() as f64;
    let mut anomalies_by_kind = BTreeMap::new();
    for a in anomalies {
        *anomalies_by_kind.entry(a.kind.clone()).or_insert(0) += 1;
    }
    let ratio = |n: f64, d: f64| (d > 0.0).then(|| n / d);
    Scorecard {
        seed: labels.seed,
        benign_only: labels.benign_only,
        tenants: labels.tenants.clone(),
        by_kind,
        scenarios,
        anomalies: anomalies.len(),
        anomalies_by_kind,
        matched_anomalies: n_matched,
        unmatched_examples: unmatched.into_iter().take(20).collect(),
        precision: ratio(n_matched as f64, anomalies.len() as f64),
        recall: ratio(detected as f64, injected as f64),
        cutoffs_expected: cut_expected,
        cutoffs_engaged: cut_engaged,
        cutoff_p50_seconds: (!ttc.is_empty()).then(|| ttc[(ttc.len() - 1) / 2]),
        cutoff_max_seconds: ttc.last().copied(),
        cutoffs_total: cutoffs.len(),
        benign_requests: labels.benign_requests,
        benign_tokens: labels.benign_tokens,
        false_positives_per_1000_requests: ratio(fp * 1000.0, labels.benign_requests as f64),
        false_positives_per_token: ratio(fp, labels.benign_tokens as f64),
    }
}

/// Reads `labels.json` and `credentials.json` from `run_dir`, fetches each
/// tenant's anomalies and cutoffs from `server` with the tenant's SOC
/// credential and scores them.
///
/// Errors: missing or unreadable files, an unreachable server, a refused
/// credential or an unexpected answer (a bad score is not an error).
pub async fn score_run(run_dir: &Path, server: &str) -> Result<Scorecard, String> {
    let labels: LabelsFile = read_json(&run_dir.join("labels.json"))?;
    let creds: CredentialsFile = read_json(&run_dir.join("credentials.json"))?;
    let server = server.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut anomalies = Vec::new();
    let mut cutoffs = Vec::new();
    for t in &labels.tenants {
        let c = creds
            .tenants
            .iter()
            .find(|c| &c.tenant == t)
            .ok_or_else(|| format!("credentials.json has no entry for tenant {t}"))?;
        anomalies.extend(fetch_anomalies(&http, server, t, &c.soc).await?);
        cutoffs.extend(fetch_cutoffs(&http, server, t, &c.soc).await?);
    }
    Ok(score_labels(&labels, &anomalies, &cutoffs))
}
