//! Runs a [`Plan`] against a server: sets up the tenants, plays the benign
//! actions at their offsets and injects the attack scenarios, writing down
//! ground truth ([`Label`]) as it goes.

use crate::plan::{
    Ctx, EDGE_SERVICES, Holder, IDPS, ORDERS_SERVICE, Plan, PlanConfig, PlannedScenario, RevokeBy, ScenarioKind, Step,
    VALIDATORS, WORKLOADS, make_plan, validator_for,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokenledger_validator::{LocalVerdict, RequestContext, Validator, ValidatorOptions};
use tokio::sync::{Semaphore, watch};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `lead_seconds` of a benign key rotation: the new key is published this
/// long before it signs, longer than the local validators' key refresh.
pub const ROTATION_LEAD_SECONDS: u64 = 15;
const KEY_REFRESH: Duration = Duration::from_secs(5);
const SLOT_WAIT: Duration = Duration::from_secs(20);

/// What to run. The bootstrap credential is the server's bootstrap secret
/// (never taken from a command-line flag).
#[derive(Clone)]
pub struct SimConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The server's bootstrap secret (`TOKENLEDGER_CREDENTIAL`).
    pub bootstrap: String,
    /// Seed of the plan.
    pub seed: u64,
    /// Run length, seconds (wall clock; in-flight requests and running
    /// scenarios are then awaited, at most [`SimConfig::grace_seconds`]).
    pub seconds: f64,
    /// Number of tenants.
    pub tenants: usize,
    /// Mean benign requests per second over all tenants.
    pub rate: f64,
    /// Length of the diurnal "day", seconds; `None`: the run length.
    pub day_seconds: Option<f64>,
    /// No attacks.
    pub benign_only: bool,
    /// Probability that a user's request comes from their second network
    /// ([`PlanConfig::roaming`]); 0 by default.
    pub roaming: f64,
    /// Where to write `labels.json`, `run.json`, `credentials.json`; `None`:
    /// nowhere.
    pub out: Option<PathBuf>,
    /// Most benign requests in flight at once.
    pub max_in_flight: usize,
    /// How long to wait after the run for in-flight work, seconds.
    pub grace_seconds: f64,
    /// How often progress is reported, seconds.
    pub progress_every_seconds: f64,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("server", &self.server)
            .field("bootstrap", &"<redacted>")
            .field("seed", &self.seed)
            .field("seconds", &self.seconds)
            .field("tenants", &self.tenants)
            .field("rate", &self.rate)
            .field("day_seconds", &self.day_seconds)
            .field("benign_only", &self.benign_only)
            .field("roaming", &self.roaming)
            .field("out", &self.out)
            .finish()
    }
}

impl SimConfig {
    /// A config with the defaults: 60 s, 2 tenants, 40 requests/s, day =
    /// run length, attacks on, 32 in flight, 60 s grace, progress every 3 s.
    pub fn new(server: &str, bootstrap: &str, seed: u64) -> SimConfig {
        SimConfig {
            server: server.trim_end_matches('/').to_owned(),
            bootstrap: bootstrap.to_owned(),
            seed,
            seconds: 60.0,
            tenants: 2,
            rate: 40.0,
            day_seconds: None,
            benign_only: false,
            roaming: 0.0,
            out: None,
            max_in_flight: 32,
            grace_seconds: 60.0,
            progress_every_seconds: 3.0,
        }
    }

    /// The plan config this run follows.
    pub fn plan_config(&self) -> PlanConfig {
        PlanConfig {
            seed: self.seed,
            tenants: self.tenants,
            seconds: self.seconds,
            rate: self.rate,
            day_seconds: self.day_seconds.unwrap_or(self.seconds),
            benign_only: self.benign_only,
            roaming: self.roaming,
        }
    }
}

/// Counters of a run so far (a snapshot). "Requests" are HTTP requests to
/// the ledger plus local verifications (each of which becomes a reported
/// use).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Seconds since the run started.
    pub elapsed_seconds: u64,
    /// Every request, benign and attack.
    pub requests: u64,
    /// Benign requests.
    pub benign_requests: u64,
    /// Benign tokens minted (`POST /v1/tokens`).
    pub minted: u64,
    /// Benign tokens from `client_credentials`.
    pub client_credentials: u64,
    /// Benign tokens from exchanges.
    pub exchanged: u64,
    /// Benign verifications that accepted the token.
    pub verified: u64,
    /// ... of which done locally by a `tokenledger_validator::Validator`.
    pub verified_locally: u64,
    /// Benign verifications that refused the token.
    pub rejected: u64,
    /// Benign revocations.
    pub revoked: u64,
    /// Key rotations.
    pub rotations: u64,
    /// Benign grants refused (policy, cutoff).
    pub refused: u64,
    /// Transport errors and 5xx answers.
    pub errors: u64,
    /// Benign actions done (started).
    pub actions_done: u64,
    /// Benign actions in the plan.
    pub actions_planned: u64,
    /// Benign actions skipped (their token was never granted, or the run
    /// ended before they were due).
    pub actions_skipped: u64,
    /// Attack requests sent.
    pub attack_requests: u64,
    /// Attack scenarios injected.
    pub attacks_injected: u64,
    /// Attack scenarios in the plan.
    pub attacks_planned: u64,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "t={}s requests={} minted={} cc={} exchanged={} verified={} ({} local) rejected={} revoked={} rotations={} refused={} errors={} attacks={}/{} actions={}/{}",
            self.elapsed_seconds,
            self.requests,
            self.minted,
            self.client_credentials,
            self.exchanged,
            self.verified,
            self.verified_locally,
            self.rejected,
            self.revoked,
            self.rotations,
            self.refused,
            self.errors,
            self.attacks_injected,
            self.attacks_planned,
            self.actions_done,
            self.actions_planned
        )
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    benign_requests: AtomicU64,
    minted: AtomicU64,
    client_credentials: AtomicU64,
    exchanged: AtomicU64,
    verified: AtomicU64,
    verified_locally: AtomicU64,
    rejected: AtomicU64,
    revoked: AtomicU64,
    rotations: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    actions_done: AtomicU64,
    actions_skipped: AtomicU64,
    attack_requests: AtomicU64,
    attacks_injected: AtomicU64,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self, elapsed: Duration, planned: u64, attacks: u64) -> Progress {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Progress {
            elapsed_seconds: elapsed.as_secs(),
            requests: g(&self.requests),
            benign_requests: g(&self.benign_requests),
            minted: g(&self.minted),
            client_credentials: g(&self.client_credentials),
            exchanged: g(&self.exchanged),
            verified: g(&self.verified),
            verified_locally: g(&self.verified_locally),
            rejected: g(&self.rejected),
            revoked: g(&self.revoked),
            rotations: g(&self.rotations),
            refused: g(&self.refused),
            errors: g(&self.errors),
            actions_done: g(&self.actions_done),
            actions_planned: planned,
            actions_skipped: g(&self.actions_skipped),
            attack_requests: g(&self.attack_requests),
            attacks_injected: g(&self.attacks_injected),
            attacks_planned: attacks,
        }
    }
}

/// The keys a scenario concerns; an anomaly concerning any of them (its
/// `token_id`, `subject`, `client_id` or `ip`) may be the scenario's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// The token attacked (server-assigned id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The subject attacked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The client compromised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The attacker's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A cutoff a scenario should cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedCutoff {
    /// `subject` or `client`.
    pub scope: String,
    /// The subject or client.
    pub key: String,
    /// The rule of `rules/default.toml` expected to engage it.
    pub rule: String,
}

/// Ground truth for one attack scenario (an entry of `labels.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Stable id: `<tenant>-<n>-<kind>`.
    pub scenario_id: String,
    /// What it is.
    pub kind: ScenarioKind,
    /// The tenant.
    pub tenant: String,
    /// What it concerns.
    pub keys: Keys,
    /// Taken just before the first attack request, UTC; `None` if the
    /// scenario could not be injected.
    pub start: Option<DateTime<Utc>>,
    /// Whether the attack requests were sent.
    pub injected: bool,
    /// Anomaly kinds of which one detected at or after `start` about one of
    /// the keys makes the scenario detected.
    pub expected_anomalies: Vec<String>,
    /// Anomaly kinds the scenario also explains (true positives, not
    /// needed for detection).
    pub also_explains: Vec<String>,
    /// The cutoff the shipped rules should engage, if any.
    pub expected_cutoff: Option<ExpectedCutoff>,
    /// Attack requests sent.
    pub attack_requests: u32,
    /// What the server answered, for a person.
    pub note: String,
}

/// `labels.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelsFile {
    /// The plan's seed.
    pub seed: u64,
    /// No attacks were planned.
    pub benign_only: bool,
    /// The plan's roaming probability ([`PlanConfig::roaming`]).
    #[serde(default)]
    pub roaming: f64,
    /// The simulated tenants.
    pub tenants: Vec<String>,
    /// [`Plan::fingerprint`].
    pub plan_fingerprint: String,
    /// When the run started, UTC.
    pub started_at: DateTime<Utc>,
    /// When it ended, UTC.
    pub ended_at: DateTime<Utc>,
    /// Benign requests made (see [`Progress`]).
    pub benign_requests: u64,
    /// Benign tokens granted (minted, `client_credentials`, exchanged).
    pub benign_tokens: u64,
    /// The scenarios.
    pub scenarios: Vec<Label>,
}

/// The secrets of one simulated tenant (only ever written to
/// `credentials.json`, mode 0600).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCredentials {
    /// The tenant.
    pub tenant: String,
    /// Its admin's secret.
    pub admin: String,
    /// Its SOC principal's secret (`soc`).
    pub soc: String,
    /// Its analyst's secret (`analyst`).
    pub analyst: String,
}

impl std::fmt::Debug for TenantCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCredentials")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// `credentials.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsFile {
    /// The server the tenants live on.
    pub server: String,
    /// One entry per tenant.
    pub tenants: Vec<TenantCredentials>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The labels (also `labels.json`).
    pub labels: LabelsFile,
    /// The final counters.
    pub counters: Progress,
    /// Attack scenarios injected, by kind.
    pub attacks_by_kind: BTreeMap<String, u64>,
    /// Per-tenant secrets (for the demo; never printed).
    pub credentials: Vec<TenantCredentials>,
    /// Where the files were written, if anywhere.
    pub out: Option<PathBuf>,
}

impl RunOutcome {
    /// The attacks injected, as `kind count` pairs joined by `, ` (kinds in
    /// name order), for the summaries of `simulate` and `demo`.
    pub fn attacks_line(&self) -> String {
        self.attacks_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone)]
struct Minted {
    token: String,
    token_id: String,
    audience: String,
    client: String,
}

#[derive(Debug, Clone)]
enum SlotVal {
    Pending,
    Ready(Arc<Minted>),
    Failed,
}

struct TenantRt {
    name: String,
    secrets: HashMap<String, String>,
    local: HashMap<&'static str, Validator>,
}

impl TenantRt {
    fn secret(&self, name: &str) -> &str {
        self.secrets.get(name).map_or("", String::as_str)
    }
}

struct Shared {
    http: reqwest::Client,
    base: String,
    plan: Plan,
    tenants: Vec<TenantRt>,
    slots: Vec<watch::Sender<SlotVal>>,
    c: Counters,
}

/// One HTTP answer: status and JSON body (`Null` if none).
type Answer = (u16, Value);

impl Shared {
    async fn send(&self, req: reqwest::RequestBuilder, benign: bool) -> Result<Answer, String> {
        inc(&self.c.requests);
        if benign {
            inc(&self.c.benign_requests);
        } else {
            inc(&self.c.attack_requests);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                if status >= 500 {
                    inc(&self.c.errors);
                }
                let body = r.bytes().await.map_err(|e| {
                    inc(&self.c.errors);
                    e.to_string()
                })?;
                Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
            }
            Err(e) => {
                inc(&self.c.errors);
                Err(e.to_string())
            }
        }
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        secret: &str,
        body: Option<&Value>,
        benign: bool,
    ) -> Result<Answer, String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(secret);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req, benign).await
    }

    async fn form(&self, path: &str, secret: &str, form: &[(&str, &str)], benign: bool) -> Result<Answer, String> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(secret)
            .form(form);
        self.send(req, benign).await
    }

    async fn slot(&self, slot: usize) -> Option<Arc<Minted>> {
        let mut rx = self.slots[slot].subscribe();
        let got = tokio::time::timeout(SLOT_WAIT, rx.wait_for(|v| !matches!(v, SlotVal::Pending))).await;
        match got {
            Ok(Ok(v)) => match &*v {
                SlotVal::Ready(m) => Some(m.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn fill(&self, slot: usize, v: SlotVal) {
        self.slots[slot].send_replace(v);
    }

    fn ctx(&self, tenant: usize, h: Holder) -> Ctx {
        let t = &self.plan.tenants[tenant];
        match h {
            Holder::User(u) => t.users[u].ctx.clone(),
            Holder::Roaming(u) => crate::plan::roaming_ctx(&t.users[u].ctx, tenant, u),
            Holder::Workload(w) => t.workload_ctx[w].clone(),
            Holder::Edge(e) => t.edge_ctx[e].clone(),
            Holder::Orders => t.orders_ctx.clone(),
        }
    }

    /// Verifies through the server as the audience's validator; `Some(active)`.
    async fn verify_remote(&self, tenant: usize, token: &str, audience: &str, ctx: &Ctx, benign: bool) -> Option<bool> {
        let v = validator_for(audience);
        let body = json!({"token": token, "audience": audience, "context": ctx_json(ctx)});
        let secret = self.tenants[tenant].secret(v.name);
        match self
            .json(Method::POST, "/v1/tokens/verify", secret, Some(&body), benign)
            .await
        {
            Ok((200, b)) => Some(b["active"] == true),
            _ => None,
        }
    }

    async fn benign(&self, tenant: usize, step: &Step) {
        let rt = &self.tenants[tenant];
        let tp = &self.plan.tenants[tenant];
        match step {
            Step::Mint { slot, user } => {
                let u = &tp.users[*user];
                let idp = IDPS[u.idp];
                let body = json!({"subject": u.subject, "audience": "api://gateway", "scope": u.scope,
                    "ttl_seconds": u.ttl_seconds, "format": "v4.public"});
                let r = self
                    .json(Method::POST, "/v1/tokens", rt.secret(idp), Some(&body), true)
                    .await;
                let v = match r {
                    Ok((201, b)) => {
                        inc(&self.c.minted);
                        minted(&b["token"], &b["token_id"], "api://gateway", idp)
                    }
                    Ok((403, _)) => {
                        inc(&self.c.refused);
                        SlotVal::Failed
                    }
                    _ => SlotVal::Failed,
                };
                self.fill(*slot, v);
            }
            Step::ClientCredentials { slot, workload } => {
                let w = WORKLOADS[*workload];
                let ttl = tp.workload_ttl[*workload].to_string();
                let form = [
                    ("grant_type", "client_credentials"),
                    ("audience", w.audience),
                    ("scope", w.scope),
                    ("ttl_seconds", ttl.as_str()),
                ];
                let r = self.form("/oauth2/token", rt.secret(w.name), &form, true).await;
                let v = match r {
                    Ok((200, b)) => {
                        inc(&self.c.client_credentials);
                        let id = token_id_of(b["access_token"].as_str().unwrap_or_default());
                        minted(&b["access_token"], &Value::from(id), w.audience, w.name)
                    }
                    Ok((400, _)) => {
                        inc(&self.c.refused);
                        SlotVal::Failed
                    }
                    _ => SlotVal::Failed,
                };
                self.fill(*slot, v);
            }
            Step::Exchange {
                slot,
                parent,
                caller,
                audience,
                scope,
            } => {
                let Some(p) = self.slot(*parent).await else {
                    inc(&self.c.actions_skipped);
                    self.fill(*slot, SlotVal::Failed);
                    return;
                };
                let form = [
                    ("grant_type", EXCHANGE),
                    ("subject_token", p.token.as_str()),
                    ("subject_token_type", ACCESS),
                    ("audience", audience.as_str()),
                    ("scope", scope.as_str()),
                ];
                let r = self.form("/oauth2/token", rt.secret(caller), &form, true).await;
                let v = match r {
                    Ok((200, b)) => {
                        inc(&self.c.exchanged);
                        let id = token_id_of(b["access_token"].as_str().unwrap_or_default());
                        minted(&b["access_token"], &Value::from(id), audience, caller)
                    }
                    Ok((400, _)) => {
                        inc(&self.c.refused);
                        SlotVal::Failed
                    }
                    _ => SlotVal::Failed,
                };
                self.fill(*slot, v);
            }
            Step::Use { slot, holder } => {
                let Some(m) = self.slot(*slot).await else {
                    inc(&self.c.actions_skipped);
                    return;
                };
                let ctx = self.ctx(tenant, *holder);
                let active = if let Some(v) = rt.local.get(m.audience.as_str()) {
                    inc(&self.c.requests);
                    inc(&self.c.benign_requests);
                    let active = matches!(
                        v.verify_for(&m.token, &m.audience, Some(&req_ctx(&ctx))),
                        LocalVerdict::Active(_)
                    );
                    if active {
                        inc(&self.c.verified_locally);
                    }
                    Some(active)
                } else {
                    self.verify_remote(tenant, &m.token, &m.audience, &ctx, true).await
                };
                match active {
                    Some(true) => inc(&self.c.verified),
                    Some(false) => inc(&self.c.rejected),
                    None => {}
                }
            }
            Step::Revoke { slot, by } => {
                let Some(m) = self.slot(*slot).await else {
                    inc(&self.c.actions_skipped);
                    return;
                };
                let r = match by {
                    RevokeBy::Issuer => {
                        self.form(
                            "/oauth2/revoke",
                            rt.secret(&m.client),
                            &[("token", m.token.as_str())],
                            true,
                        )
                        .await
                    }
                    RevokeBy::Soc => {
                        let body = json!({"token_id": m.token_id, "reason": "routine: session ended"});
                        self.json(Method::POST, "/v1/revocations", rt.secret("soc"), Some(&body), true)
                            .await
                    }
                };
                if matches!(r, Ok((200..=299, _))) {
                    inc(&self.c.revoked);
                }
            }
            Step::RotateKey => {
                let body = json!({"lead_seconds": ROTATION_LEAD_SECONDS});
                let r = self
                    .json(Method::POST, "/v1/keys/rotate", rt.secret("admin"), Some(&body), true)
                    .await;
                if matches!(r, Ok((200..=299, _))) {
                    inc(&self.c.rotations);
                }
            }
        }
    }
}

fn minted(token: &Value, token_id: &Value, audience: &str, client: &str) -> SlotVal {
    match (token.as_str(), token_id.as_str()) {
        (Some(t), Some(id)) if !id.is_empty() => SlotVal::Ready(Arc::new(Minted {
            token: t.to_owned(),
            token_id: id.to_owned(),
            audience: audience.to_owned(),
            client: client.to_owned(),
        })),
        _ => SlotVal::Failed,
    }
}

fn ctx_json(c: &Ctx) -> Value {
    json!({"ip": c.ip, "user_agent": c.user_agent, "device_id": c.device_id})
}

fn req_ctx(c: &Ctx) -> RequestContext {
    RequestContext {
        ip: Some(c.ip.clone()),
        user_agent: Some(c.user_agent.clone()),
        device_id: Some(c.device_id.clone()),
    }
}

/// A `v4.public` token taken apart: claims, signature, footer.
type Parts = (serde_json::Map<String, Value>, Vec<u8>, Option<String>);

/// The claims of a `v4.public` token (unverified: the payload is the
/// message followed by a 64-byte signature).
fn claims_of(token: &str) -> Option<Parts> {
    let rest = token.strip_prefix("v4.public.")?;
    let mut parts = rest.splitn(2, '.');
    let payload = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    if payload.len() < 64 {
        return None;
    }
    let (msg, sig) = payload.split_at(payload.len() - 64);
    let claims: Value = serde_json::from_slice(msg).ok()?;
    Some((
        claims.as_object()?.clone(),
        sig.to_vec(),
        parts.next().map(str::to_owned),
    ))
}

/// The `jti` of a `v4.public` token ("" if it cannot be read).
fn token_id_of(token: &str) -> String {
    claims_of(token)
        .and_then(|(c, _, _)| c.get("jti").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// A forgery of `template`: its claims edited (subject, scope, id), its
/// signature kept, so it fails as `bad_signature`.
fn forge(template: &str, n: u32) -> String {
    let Some((mut claims, sig, footer)) = claims_of(template) else {
        return format!("v4.public.{}", URL_SAFE_NO_PAD.encode(format!("forged-{n}").repeat(8)));
    };
    claims.insert("sub".into(), Value::from(format!("admin-{n}")));
    claims.insert("scope".into(), Value::from("admin:all"));
    claims.insert("jti".into(), Value::from(uuid::Uuid::new_v4().to_string()));
    let mut payload = serde_json::to_vec(&claims).unwrap_or_default();
    payload.extend_from_slice(&sig);
    match footer {
        Some(f) => format!("v4.public.{}.{f}", URL_SAFE_NO_PAD.encode(payload)),
        None => format!("v4.public.{}", URL_SAFE_NO_PAD.encode(payload)),
    }
}

/// Runs one attack scenario; its label.
async fn scenario(sh: &Shared, s: &PlannedScenario) -> Label {
    let t = s.tenant;
    let rt = &sh.tenants[t];
    let tp = &sh.plan.tenants[t];
    let mut label = Label {
        scenario_id: s.id.clone(),
        kind: s.kind,
        tenant: rt.name.clone(),
        keys: Keys::default(),
        start: None,
        injected: false,
        expected_anomalies: s.kind.expected_anomalies().iter().map(|k| (*k).to_owned()).collect(),
        also_explains: s.kind.also_explains().iter().map(|k| (*k).to_owned()).collect(),
        expected_cutoff: None,
        attack_requests: 0,
        note: String::new(),
    };
    let user = s.user.map(|u| &tp.users[u]);
    // A user logs in and uses the token once from their own device.
    let login = |u: &crate::plan::User| {
        let body = json!({"subject": u.subject, "audience": "api://gateway", "scope": u.scope,
            "ttl_seconds": 900, "format": "v4.public"});
        (IDPS[u.idp], body)
    };
    match s.kind {
        ScenarioKind::TokenTheft | ScenarioKind::UseAfterRevocation | ScenarioKind::ExchangeEscalation => {
            let Some(u) = user else {
                label.note = "no victim".into();
                return label;
            };
            let (idp, body) = login(u);
            let r = sh
                .json(Method::POST, "/v1/tokens", rt.secret(idp), Some(&body), false)
                .await;
            let Ok((201, b)) = r else {
                label.note = format!("victim's login refused: {r:?}");
                return label;
            };
            let token = b["token"].as_str().unwrap_or_default().to_owned();
            let token_id = b["token_id"].as_str().unwrap_or_default().to_owned();
            sh.verify_remote(t, &token, "api://gateway", &u.ctx, false).await;
            label.keys.subject = Some(u.subject.clone());
            match s.kind {
                ScenarioKind::TokenTheft => {
                    label.keys.token_id = Some(token_id);
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    label.start = Some(Utc::now());
                    label.injected = true;
                    let mut accepted = 0;
                    for _ in 0..s.count {
                        if sh.verify_remote(t, &token, "api://gateway", &s.attacker, false).await == Some(true) {
                            accepted += 1;
                        }
                        label.attack_requests += 1;
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    label.note = format!("replayed {} times from {}, {accepted} accepted", s.count, s.attacker.ip);
                    label.expected_cutoff = Some(ExpectedCutoff {
                        scope: "subject".into(),
                        key: u.subject.clone(),
                        rule: "subject-token-misuse".into(),
                    });
                }
                ScenarioKind::UseAfterRevocation => {
                    label.keys.token_id = Some(token_id);
                    let r = sh
                        .form("/oauth2/revoke", rt.secret(idp), &[("token", token.as_str())], false)
                        .await;
                    if !matches!(r, Ok((200, _))) {
                        label.note = format!("revocation failed: {r:?}");
                        return label;
                    }
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    label.start = Some(Utc::now());
                    label.injected = true;
                    let mut refused = 0;
                    for _ in 0..s.count {
                        if sh.verify_remote(t, &token, "api://gateway", &s.attacker, false).await == Some(false) {
                            refused += 1;
                        }
                        label.attack_requests += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    label.note = format!("revoked token presented {} times, {refused} refused", s.count);
                    label.expected_cutoff = Some(ExpectedCutoff {
                        scope: "subject".into(),
                        key: u.subject.clone(),
                        rule: "subject-token-misuse".into(),
                    });
                }
                _ => {
                    let caller = s.client.clone().unwrap_or_else(|| EDGE_SERVICES[0].to_owned());
                    label.keys.client_id = Some(caller.clone());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    label.start = Some(Utc::now());
                    label.injected = true;
                    let form = [
                        ("grant_type", EXCHANGE),
                        ("subject_token", token.as_str()),
                        ("subject_token_type", ACCESS),
                        ("audience", "api://orders"),
                        ("scope", "orders:read orders:write payments:read"),
                    ];
                    let r = sh.form("/oauth2/token", rt.secret(&caller), &form, false).await;
                    label.attack_requests += 1;
                    label.note = match r {
                        Ok((st, b)) => format!("exchange asking orders:write answered {st} {}", b["error"]),
                        Err(e) => format!("exchange failed: {e}"),
                    };
                    label.expected_cutoff = Some(ExpectedCutoff {
                        scope: "client".into(),
                        key: caller,
                        rule: "client-exchange-escalation".into(),
                    });
                }
            }
        }
        ScenarioKind::StolenWorkloadCredential => {
            let name = s.client.clone().unwrap_or_default();
            let Some(w) = WORKLOADS.iter().find(|w| w.name == name) else {
                label.note = "no workload".into();
                return label;
            };
            label.keys.client_id = Some(name.clone());
            label.start = Some(Utc::now());
            label.injected = true;
            let form = [
                ("grant_type", "client_credentials"),
                ("audience", w.audience),
                ("scope", w.scope),
                ("ttl_seconds", "900"),
            ];
            let r = sh.form("/oauth2/token", rt.secret(&name), &form, false).await;
            label.attack_requests += 1;
            let Ok((200, b)) = r else {
                label.note = format!("client_credentials with the stolen secret refused: {r:?}");
                return label;
            };
            let token = b["access_token"].as_str().unwrap_or_default().to_owned();
            let mut accepted = 0;
            for _ in 0..s.count {
                if sh.verify_remote(t, &token, w.audience, &s.attacker, false).await == Some(true) {
                    accepted += 1;
                }
                label.attack_requests += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            label.note = format!(
                "stolen {name} secret: token used {} times from {} ({}), {accepted} accepted",
                s.count, s.attacker.ip, s.attacker.user_agent
            );
        }
        ScenarioKind::VerifyFailureStorm => {
            label.keys.ip = Some(s.attacker.ip.clone());
            let template = sh.template(t).await;
            label.start = Some(Utc::now());
            label.injected = true;
            let mut refused = 0;
            for n in 0..s.count {
                let forged = forge(&template, n);
                if sh.verify_remote(t, &forged, "api://gateway", &s.attacker, false).await == Some(false) {
                    refused += 1;
                }
                label.attack_requests += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            label.note = format!("{} forged tokens from {}, {refused} refused", s.count, s.attacker.ip);
        }
        ScenarioKind::MintBurst => {
            let name = s.client.clone().unwrap_or_default();
            let Some(w) = WORKLOADS.iter().find(|w| w.name == name) else {
                label.note = "no client".into();
                return label;
            };
            label.keys.client_id = Some(name.clone());
            label.expected_cutoff = Some(ExpectedCutoff {
                scope: "client".into(),
                key: name.clone(),
                rule: "client-mint-burst".into(),
            });
            label.start = Some(Utc::now());
            label.injected = true;
            let next = AtomicU32::new(0);
            let ok = AtomicU32::new(0);
            let stopped = AtomicBool::new(false);
            let scope = w.scope.split(' ').next().unwrap_or(w.scope);
            let secret = rt.secret(&name);
            let salt = s.at_ms % 100_000;
            let mut workers = Vec::new();
            for _ in 0..6 {
                workers.push(async {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= s.count || stopped.load(Ordering::Relaxed) {
                            break;
                        }
                        let subject = format!("acct-{:05}", (u64::from(i) * 7919 + salt) % 100_000);
                        let body = json!({"subject": subject, "audience": w.audience, "scope": scope,
                        "ttl_seconds": 300, "format": "v4.public"});
                        match sh.json(Method::POST, "/v1/tokens", secret, Some(&body), false).await {
                            Ok((201, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((403, b)) if b["type"].as_str().is_some_and(|t| t.ends_with("minting-cutoff")) => {
                                stopped.store(true, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                });
            }
            join_all(workers).await;
            let sent = next.load(Ordering::Relaxed).min(s.count);
            label.attack_requests = sent;
            label.note = format!(
                "{name} minted {} of {sent} tokens for distinct subjects{}",
                ok.load(Ordering::Relaxed),
                if stopped.load(Ordering::Relaxed) {
                    ", stopped by a minting cutoff"
                } else {
                    ""
                }
            );
        }
    }
    label
}

/// Polls `futs` to completion, concurrently, on this task.
async fn join_all<F: std::future::Future<Output = ()>>(futs: Vec<F>) {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

impl Shared {
    /// A token of the tenant to forge from (the first granted slot), else "".
    async fn template(&self, tenant: usize) -> String {
        for (i, t) in self.plan.slot_tenant.iter().enumerate() {
            if *t == tenant
                && let SlotVal::Ready(m) = &*self.slots[i].borrow()
            {
                return m.token.clone();
            }
        }
        String::new()
    }
}

async fn bootstrap_tenant(
    http: &reqwest::Client,
    base: &str,
    bootstrap: &str,
    tenant: &str,
) -> Result<HashMap<String, String>, String> {
    let post = |secret: &str, body: Value| {
        http.post(format!("{base}/v1/principals"))
            .bearer_auth(secret)
            .json(&body)
            .send()
    };
    let r = post(bootstrap, json!({"name": "admin", "role": "admin", "tenant": tenant}))
        .await
        .map_err(|e| format!("{base}: no answer: {e}"))?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    match status {
        200 | 201 => {}
        401 => return Err("the server refused TOKENLEDGER_CREDENTIAL (401): give its bootstrap secret".into()),
        403 | 409 => {
            return Err(format!(
                "tenant {tenant} already has an admin ({status}): use a fresh data dir or another --seed"
            ));
        }
        _ => return Err(format!("creating the admin of {tenant}: {status} {body}")),
    }
    let admin = body["secret"].as_str().ok_or("no secret in the answer")?.to_owned();
    let mut secrets = HashMap::new();
    let mut principals: Vec<(&str, &str)> = vec![("soc", "soc"), ("analyst", "analyst")];
    for n in IDPS.iter().chain(EDGE_SERVICES.iter()).chain([ORDERS_SERVICE].iter()) {
        principals.push((n, "issuer"));
    }
    for w in WORKLOADS {
        principals.push((w.name, "issuer"));
    }
    for v in VALIDATORS {
        principals.push((v.name, "validator"));
    }
    for (name, role) in principals {
        let r = post(&admin, json!({"name": name, "role": role}))
            .await
            .map_err(|e| format!("creating {name}: {e}"))?;
        let status = r.status().as_u16();
        let b: Value = r.json().await.unwrap_or(Value::Null);
        let s = b["secret"]
            .as_str()
            .ok_or_else(|| format!("creating principal {name} in {tenant}: {status}"))?;
        secrets.insert(name.to_owned(), s.to_owned());
    }
    let user_policy = json!({"audiences": {"api://gateway": {"scopes": ["profile:read", "orders:read", "orders:write", "payments:read"], "max_ttl_seconds": 3600}},
        "formats": ["v4.public", "v4.local"]});
    let edge_policy = json!({"audiences": {"api://orders": {"scopes": ["orders:read", "orders:write", "payments:read"], "max_ttl_seconds": 900}},
        "formats": ["v4.public"], "serves": ["api://gateway"]});
    let orders_policy = json!({"audiences": {"api://payments": {"scopes": ["payments:read"], "max_ttl_seconds": 600}},
        "formats": ["v4.public"], "serves": ["api://orders"]});
    let mut policies: Vec<(String, Value)> = Vec::new();
    for n in IDPS {
        policies.push((n.to_owned(), user_policy.clone()));
    }
    for n in EDGE_SERVICES {
        policies.push((n.to_owned(), edge_policy.clone()));
    }
    policies.push((ORDERS_SERVICE.to_owned(), orders_policy));
    for w in WORKLOADS {
        let scopes: Vec<&str> = w.scope.split(' ').collect();
        policies.push((
            w.name.to_owned(),
            json!({"audiences": {w.audience: {"scopes": scopes, "max_ttl_seconds": 3600}}, "formats": ["v4.public"]}),
        ));
    }
    for (client, policy) in policies {
        let r = http
            .put(format!("{base}/v1/clients/{client}/policy"))
            .bearer_auth(&admin)
            .json(&policy)
            .send()
            .await
            .map_err(|e| format!("policy of {client}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("policy of {client} in {tenant}: {}", r.status()));
        }
    }
    // Provision the tenant's signing keys before any validator fetches the
    // key set (keys are otherwise created by the first mint, which local
    // validators would meet as `unknown_kid`).
    let r = http
        .post(format!("{base}/v1/keys/rotate"))
        .bearer_auth(&admin)
        .json(&json!({"lead_seconds": 0}))
        .send()
        .await
        .map_err(|e| format!("provisioning the keys of {tenant}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("provisioning the keys of {tenant}: {}", r.status()));
    }
    secrets.insert("admin".into(), admin);
    Ok(secrets)
}

/// Runs a simulation: makes the plan, sets up every tenant (failing if a
/// tenant already has an admin), plays it for `cfg.seconds` and returns
/// what happened; writes `labels.json`, `run.json` and `credentials.json`
/// (0600) into `cfg.out` if set. `progress` is called every
/// `cfg.progress_every_seconds` and once at the end.
///
/// Errors: a bad config, an unreachable server, a refused setup, or files
/// that cannot be written. Refusals and errors during the run are counted,
/// not fatal.
pub async fn run(cfg: &SimConfig, progress: &(dyn Fn(&Progress) + Send + Sync)) -> Result<RunOutcome, String> {
    if cfg.bootstrap.is_empty() {
        return Err("TOKENLEDGER_CREDENTIAL (the server's bootstrap secret) is not set".into());
    }
    let plan = make_plan(&cfg.plan_config())?;
    if let Some(dir) = &cfg.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;
    let base = cfg.server.trim_end_matches('/').to_owned();
    let mut tenants = Vec::new();
    let mut credentials = Vec::new();
    for tp in &plan.tenants {
        let secrets = bootstrap_tenant(&http, &base, &cfg.bootstrap, &tp.name).await?;
        credentials.push(TenantCredentials {
            tenant: tp.name.clone(),
            admin: secrets["admin"].clone(),
            soc: secrets["soc"].clone(),
            analyst: secrets["analyst"].clone(),
        });
        let mut local = HashMap::new();
        for v in VALIDATORS.iter().filter(|v| v.local) {
            let opts = ValidatorOptions {
                key_refresh_interval: KEY_REFRESH,
                ..Default::default()
            };
            let val = Validator::connect(&base, &secrets[v.name], v.audience, opts)
                .await
                .map_err(|e| format!("local validator {} of {}: {e}", v.name, tp.name))?;
            local.insert(v.audience, val);
        }
        tenants.push(TenantRt {
            name: tp.name.clone(),
            secrets,
            local,
        });
    }
    if let Some(dir) = &cfg.out {
        write_credentials(dir, &base, &credentials)?;
    }
    let slots = (0..plan.slots).map(|_| watch::channel(SlotVal::Pending).0).collect();
    let planned = plan.actions.len() as u64;
    let attacks = plan.scenarios.len() as u64;
    let sh = Arc::new(Shared {
        http,
        base: base.clone(),
        plan,
        tenants,
        slots,
        c: Counters::default(),
    });
    let start = Instant::now();
    let started_at = Utc::now();
    let run_for = Duration::from_secs_f64(cfg.seconds);
    let deadline = start + run_for;
    let every = Duration::from_secs_f64(cfg.progress_every_seconds.max(0.2));
    let mut last_emit = Instant::now();
    let emit = |last: &mut Instant, force: bool| {
        if force || last.elapsed() >= every {
            *last = Instant::now();
            progress(&sh.c.snapshot(start.elapsed(), planned, attacks));
        }
    };

    let mut scen = tokio::task::JoinSet::new();
    for (i, s) in sh.plan.scenarios.iter().enumerate() {
        let sh = sh.clone();
        let at = start + Duration::from_millis(s.at_ms);
        scen.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let s = &sh.plan.scenarios[i];
            let label = scenario(&sh, s).await;
            if label.injected {
                inc(&sh.c.attacks_injected);
            }
            (i, label)
        });
    }
    let sem = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let n_actions = sh.plan.actions.len();
    let mut i = 0;
    while i < n_actions {
        let at_ms = sh.plan.actions[i].at_ms;
        let due = start + Duration::from_millis(at_ms);
        while Instant::now() < due {
            emit(&mut last_emit, false);
            let wake = due.min(Instant::now() + Duration::from_millis(250));
            tokio::time::sleep_until(wake.into()).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let permit = loop {
            emit(&mut last_emit, false);
            match tokio::time::timeout(Duration::from_millis(250), sem.clone().acquire_owned()).await {
                Ok(p) => break p.map_err(|e| e.to_string())?,
                Err(_) => continue,
            }
        };
        inc(&sh.c.actions_done);
        let sh2 = sh.clone();
        tokio::spawn(async move {
            let a = &sh2.plan.actions[i];
            sh2.benign(a.tenant, &a.step).await;
            drop(permit);
        });
        i += 1;
    }
    sh.c.actions_skipped
        .fetch_add((n_actions - i) as u64, Ordering::Relaxed);
    while Instant::now() < deadline {
        emit(&mut last_emit, false);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the work in flight and the scenarios finish, within the grace.
    let grace_end = Instant::now() + Duration::from_secs_f64(cfg.grace_seconds.max(0.0));
    let mut labels: Vec<Option<Label>> = vec![None; sh.plan.scenarios.len()];
    while !scen.is_empty() {
        emit(&mut last_emit, false);
        match tokio::time::timeout(Duration::from_millis(250), scen.join_next()).await {
            Ok(Some(Ok((i, l)))) => labels[i] = Some(l),
            Ok(_) => {}
            Err(_) if Instant::now() > grace_end => {
                scen.abort_all();
                break;
            }
            Err(_) => {}
        }
    }
    let all = u32::try_from(cfg.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        grace_end.saturating_duration_since(Instant::now()),
        sem.acquire_many(all),
    )
    .await;
    for t in &sh.tenants {
        for v in t.local.values() {
            v.shutdown().await;
        }
    }
    let ended_at = Utc::now();
    let counters = sh.c.snapshot(start.elapsed(), planned, attacks);
    emit(&mut last_emit, true);
    let labels: Vec<Label> = labels
        .into_iter()
        .zip(&sh.plan.scenarios)
        .map(|(l, s)| {
            l.unwrap_or_else(|| Label {
                scenario_id: s.id.clone(),
                kind: s.kind,
                tenant: sh.plan.tenants[s.tenant].name.clone(),
                keys: Keys::default(),
                start: None,
                injected: false,
                expected_anomalies: s.kind.expected_anomalies().iter().map(|k| (*k).to_owned()).collect(),
                also_explains: s.kind.also_explains().iter().map(|k| (*k).to_owned()).collect(),
                expected_cutoff: None,
                attack_requests: 0,
                note: "did not finish within the grace time".into(),
            })
        })
        .collect();
    let mut attacks_by_kind: BTreeMap<String, u64> =
        ScenarioKind::ALL.iter().map(|k| (k.as_str().to_owned(), 0)).collect();
    for l in labels.iter().filter(|l| l.injected) {
        *attacks_by_kind.entry(l.kind.as_str().to_owned()).or_default() += 1;
    }
    let file = LabelsFile {
        seed: cfg.seed,
        benign_only: cfg.benign_only,
        roaming: cfg.roaming,
        tenants: sh.plan.tenants.iter().map(|t| t.name.clone()).collect(),
        plan_fingerprint: sh.plan.fingerprint(),
        started_at,
        ended_at,
        benign_requests: counters.benign_requests,
        benign_tokens: counters.minted + counters.client_credentials + counters.exchanged,
        scenarios: labels,
    };
    if let Some(dir) = &cfg.out {
        write_json(
            &dir.join("labels.json"),
            &serde_json::to_value(&file).map_err(|e| e.to_string())?,
        )?;
        let run = json!({
            "server": base,
            "config": sh.plan.config,
            "plan_fingerprint": file.plan_fingerprint,
            "started_at": started_at,
            "ended_at": ended_at,
            "counters": counters,
            "attacks_by_kind": attacks_by_kind,
            "rotation_lead_seconds": ROTATION_LEAD_SECONDS,
            "detector_config": "server defaults (not changed by the simulator)",
        });
        write_json(&dir.join("run.json"), &run)?;
    }
    Ok(RunOutcome {
        labels: file,
        counters,
        attacks_by_kind,
        credentials,
        out: cfg.out.clone(),
    })
}

fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `credentials.json` in `dir` with mode 0600 (created so; an
/// existing file is truncated and set to 0600).
fn write_credentials(dir: &Path, server: &str, creds: &[TenantCredentials]) -> Result<(), String> {
    use std::io::Write;
    let path = dir.join("credentials.json");
    let file = CredentialsFile {
        server: server.to_owned(),
        tenants: creds.to_vec(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .map_err(|e| format!("{}: {e}", path.display()))
}
