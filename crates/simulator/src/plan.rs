//! The seeded plan: the organisation of each simulated tenant, every benign
//! action at its offset from the start of the run, and the attack scenarios.
//!
//! A plan is a pure function of [`PlanConfig`]: the same seed, tenant count,
//! duration, rate, day length and `benign_only` give the same plan, action
//! for action (see [`Plan::fingerprint`]). Server-assigned values (token
//! ids, times) are not part of it; the executor maps the plan's logical
//! token *slots* to the tokens the server hands out.
//!
//! # Keeping benign traffic benign
//!
//! The planner models what the server's detectors see and stays under their
//! default thresholds by construction:
//!
//! * every token is used from one context only (its holder's stable ip,
//!   device and agent), and workloads always present the same device, so
//!   neither `concurrent_use` nor `new_device` fires;
//! * tokens are cached and reused until 30 s before they expire, and a mint
//!   is skipped when its client already minted [`MINT_BUDGET_PER_CLIENT`]
//!   tokens in the last 60 s, or its subject [`MINT_BUDGET_PER_SUBJECT`]
//!   (the thresholds are 300 and 30), so `mint_burst` does not fire;
//! * a token is revoked only when neither it nor any token exchanged from
//!   it was used in the last [`REVOKE_QUIET_MS`] ms, and never used again,
//!   so `use_after_revocation` does not fire (the executor runs actions
//!   concurrently, so the quiet time absorbs its jitter);
//! * exchanges stay within policy and at most 2 deep; only valid tokens are
//!   presented, so `verify_failure_spike`, `exchange_*` do not fire.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// A client may mint at most this many benign tokens per 60 s of plan time
/// (the server's `mint_burst_per_client` default is 300).
pub const MINT_BUDGET_PER_CLIENT: usize = 150;
/// A subject gets at most this many benign tokens per 60 s of plan time
/// (the server's `mint_burst_per_subject` default is 30).
pub const MINT_BUDGET_PER_SUBJECT: usize = 8;
/// A benign token (and every token exchanged from it) is revoked only when
/// none of them was used in the last this many milliseconds.
pub const REVOKE_QUIET_MS: u64 = 5_000;
/// A token is not used within this many milliseconds of its planned expiry.
pub const EXPIRY_MARGIN_MS: u64 = 30_000;

/// The identity provider clients: issuers minting user tokens for
/// `api://gateway`.
pub const IDPS: [&str; 2] = ["idp-web", "idp-mobile"];
/// The scopes an identity provider may put in a user token.
pub const USER_SCOPES_READ: &str = "profile:read orders:read payments:read";
/// The scopes of a user who may also write orders.
pub const USER_SCOPES_WRITE: &str = "profile:read orders:read orders:write payments:read";
/// Edge services: receive user tokens (`serves: api://gateway`) and exchange
/// them for `api://orders`.
pub const EDGE_SERVICES: [&str; 2] = ["svc-gateway", "svc-search"];
/// The orders service: receives `api://orders` tokens and exchanges them
/// for `api://payments` (the second hop).
pub const ORDERS_SERVICE: &str = "svc-orders";

/// A workload: a client that mints for itself (`client_credentials`).
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Its client id (principal name).
    pub name: &'static str,
    /// The audience it calls.
    pub audience: &'static str,
    /// The scope it asks for.
    pub scope: &'static str,
}

/// The workloads of every tenant.
pub const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "svc-inventory",
        audience: "api://inventory",
        scope: "inventory:read inventory:write",
    },
    Workload {
        name: "svc-billing",
        audience: "api://payments",
        scope: "payments:read payments:write",
    },
    Workload {
        name: "svc-reports",
        audience: "api://reports",
        scope: "reports:read",
    },
];

/// A validator: the principal guarding one audience, verifying either
/// through the server (`POST /v1/tokens/verify`) or locally with
/// `tokenledger_validator::Validator` (block-list feed, use reports).
#[derive(Debug, Clone, Copy)]
pub struct ValidatorSpec {
    /// Principal name.
    pub name: &'static str,
    /// The audience it guards.
    pub audience: &'static str,
    /// Verifies locally (true) or through the server (false).
    pub local: bool,
}

/// The validators of every tenant, one per audience.
pub const VALIDATORS: [ValidatorSpec; 5] = [
    ValidatorSpec {
        name: "gw-edge",
        audience: "api://gateway",
        local: false,
    },
    ValidatorSpec {
        name: "gw-orders",
        audience: "api://orders",
        local: true,
    },
    ValidatorSpec {
        name: "gw-payments",
        audience: "api://payments",
        local: false,
    },
    ValidatorSpec {
        name: "gw-inventory",
        audience: "api://inventory",
        local: true,
    },
    ValidatorSpec {
        name: "gw-reports",
        audience: "api://reports",
        local: false,
    },
];

/// The validator guarding `audience`.
pub fn validator_for(audience: &str) -> &'static ValidatorSpec {
    VALIDATORS
        .iter()
        .find(|v| v.audience == audience)
        .unwrap_or(&VALIDATORS[0])
}

/// What decides a plan. Same config ⇒ same plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// The seed of the ChaCha8 generator.
    pub seed: u64,
    /// Number of tenants (`sim<seed>-<i>`), at least 1.
    pub tenants: usize,
    /// Run length, seconds (> 0).
    pub seconds: f64,
    /// Mean benign requests per second over all tenants (> 0).
    pub rate: f64,
    /// Length of the compressed "day" of the diurnal rate, seconds (> 0).
    pub day_seconds: f64,
    /// No attack scenarios.
    pub benign_only: bool,
    /// Probability (0 to 1) that a user's request comes from their second
    /// network (a phone moving from Wi-Fi to mobile data: another /24, the
    /// same device and agent) with the token they already hold. 0 keeps
    /// every user on one network. Benign, but indistinguishable by network
    /// alone from a replay: it measures what roaming costs in false
    /// positives.
    #[serde(default)]
    pub roaming: f64,
}

/// Network, device and agent a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ctx {
    /// IPv4 address.
    pub ip: String,
    /// Device id.
    pub device_id: String,
    /// User agent.
    pub user_agent: String,
}

/// A simulated end user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The subject (`u-<hex>`).
    pub subject: String,
    /// Index into [`IDPS`] of the identity provider that logs them in.
    pub idp: usize,
    /// Index into [`EDGE_SERVICES`] of the service their requests go to.
    pub edge: usize,
    /// Scope of their tokens ([`USER_SCOPES_READ`] or [`USER_SCOPES_WRITE`]).
    pub scope: String,
    /// Their ttl for a login token, seconds (300 to 3600).
    pub ttl_seconds: i64,
    /// Where they are.
    pub ctx: Ctx,
}

/// One simulated tenant's organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPlan {
    /// The tenant name, `sim<seed>-<i>`.
    pub name: String,
    /// End users.
    pub users: Vec<User>,
    /// Context of each workload, as [`WORKLOADS`].
    pub workload_ctx: Vec<Ctx>,
    /// Ttl of each workload's tokens, seconds.
    pub workload_ttl: Vec<i64>,
    /// Context of each edge service, as [`EDGE_SERVICES`].
    pub edge_ctx: Vec<Ctx>,
    /// Context of [`ORDERS_SERVICE`].
    pub orders_ctx: Ctx,
}

/// Who presents a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "who", content = "index")]
pub enum Holder {
    /// A user (index).
    User(usize),
    /// A user (index) from their second network (see [`PlanConfig::roaming`]).
    Roaming(usize),
    /// A workload (index into [`WORKLOADS`]).
    Workload(usize),
    /// An edge service (index into [`EDGE_SERVICES`]).
    Edge(usize),
    /// [`ORDERS_SERVICE`].
    Orders,
}

/// How a benign revocation is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeBy {
    /// The issuing client through `POST /oauth2/revoke` (a logout).
    Issuer,
    /// The SOC through `POST /v1/revocations` by token id.
    Soc,
}

/// One benign action. Slots are logical tokens, numbered over the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// `POST /v1/tokens` by the user's identity provider.
    Mint {
        /// The token slot it fills.
        slot: usize,
        /// User index.
        user: usize,
    },
    /// `client_credentials` by a workload.
    ClientCredentials {
        /// The token slot it fills.
        slot: usize,
        /// Workload index.
        workload: usize,
    },
    /// RFC 8693 exchange of `parent` by `caller` for `audience`/`scope`.
    Exchange {
        /// The token slot it fills.
        slot: usize,
        /// The subject token's slot.
        parent: usize,
        /// The calling client.
        caller: String,
        /// The new audience.
        audience: String,
        /// The scope asked for.
        scope: String,
    },
    /// A verification of the slot's token for its audience, from the
    /// holder's context.
    Use {
        /// The token.
        slot: usize,
        /// Who presents it.
        holder: Holder,
    },
    /// A routine revocation of a token that is not used again.
    Revoke {
        /// The token.
        slot: usize,
        /// By whom.
        by: RevokeBy,
    },
    /// `POST /v1/keys/rotate` by the admin.
    RotateKey,
}

/// A benign action at its offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Offset from the start of the run, milliseconds.
    pub at_ms: u64,
    /// Tenant index.
    pub tenant: usize,
    /// What to do.
    pub step: Step,
}

/// The kinds of attack scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    /// A user token replayed from another network and device.
    TokenTheft,
    /// A workload's credential used from a new device and agent.
    StolenWorkloadCredential,
    /// Forged tokens (bad signature) verified from one ip.
    VerifyFailureStorm,
    /// A compromised client minting past `mint_burst_per_client`.
    MintBurst,
    /// An exchange asking for more scope than the subject token holds.
    ExchangeEscalation,
    /// A revoked token presented again.
    UseAfterRevocation,
}

impl ScenarioKind {
    /// Every kind.
    pub const ALL: [ScenarioKind; 6] = [
        ScenarioKind::TokenTheft,
        ScenarioKind::StolenWorkloadCredential,
        ScenarioKind::VerifyFailureStorm,
        ScenarioKind::MintBurst,
        ScenarioKind::ExchangeEscalation,
        ScenarioKind::UseAfterRevocation,
    ];

    /// The wire name (`token_theft`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::TokenTheft => "token_theft",
            ScenarioKind::StolenWorkloadCredential => "stolen_workload_credential",
            ScenarioKind::VerifyFailureStorm => "verify_failure_storm",
            ScenarioKind::MintBurst => "mint_burst",
            ScenarioKind::ExchangeEscalation => "exchange_escalation",
            ScenarioKind::UseAfterRevocation => "use_after_revocation",
        }
    }

    /// Anomaly kinds of which one must be detected.
    pub fn expected_anomalies(self) -> &'static [&'static str] {
        match self {
            ScenarioKind::TokenTheft => &["concurrent_use"],
            ScenarioKind::StolenWorkloadCredential => &["new_device"],
            ScenarioKind::VerifyFailureStorm => &["verify_failure_spike"],
            ScenarioKind::MintBurst => &["mint_burst"],
            ScenarioKind::ExchangeEscalation => &["exchange_escalation"],
            ScenarioKind::UseAfterRevocation => &["use_after_revocation"],
        }
    }

    /// Further anomaly kinds the scenario explains (true positives for
    /// precision, not needed for detection): a stolen token replayed from
    /// the thief's device is also a `new_device` for that token.
    pub fn also_explains(self) -> &'static [&'static str] {
        match self {
            ScenarioKind::TokenTheft => &["new_device"],
            _ => &[],
        }
    }
}

/// An attack scenario as planned (what the executor does and to whom).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedScenario {
    /// Stable id: `<tenant>-<n>-<kind>`.
    pub id: String,
    /// What it is.
    pub kind: ScenarioKind,
    /// Tenant index.
    pub tenant: usize,
    /// Offset of its first request, milliseconds.
    pub at_ms: u64,
    /// The victim user (theft, escalation, use after revocation).
    pub user: Option<usize>,
    /// The client concerned: the stolen workload, the bursting client, the
    /// escalating caller.
    pub client: Option<String>,
    /// The attacker's context.
    pub attacker: Ctx,
    /// How many attack requests (forged tokens, burst mints, replays).
    pub count: u32,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// What it was made from.
    pub config: PlanConfig,
    /// The tenants' organisations.
    pub tenants: Vec<TenantPlan>,
    /// Benign actions, by offset.
    pub actions: Vec<Action>,
    /// Number of token slots (the slots are `0..slots`).
    pub slots: usize,
    /// The tenant of each slot.
    pub slot_tenant: Vec<usize>,
    /// Attack scenarios, by offset.
    pub scenarios: Vec<PlannedScenario>,
}

impl Plan {
    /// A short digest of the whole plan (FNV-1a over its JSON), to compare
    /// two plans at a glance.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in json {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// The tenant name of index `i` for `seed`.
pub fn tenant_name(seed: u64, i: usize) -> String {
    format!("sim{seed}-{i}")
}

const BROWSERS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
];
const MOBILE: [&str; 3] = [
    "ShopApp/4.12.0 (iPhone; iOS 17.5)",
    "ShopApp/4.12.0 (Android 14; Pixel 8)",
    "ShopApp/4.11.2 (Android 13; SM-S911B)",
];
const ATTACK_AGENTS: [&str; 4] = [
    "python-requests/2.32.3",
    "curl/8.8.0",
    "Go-http-client/1.1",
    "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/125.0",
];
/// One /24 per scenario of a tenant, none of them a benign network (benign
/// traffic comes from 10.0.0.0/8).
const ATTACK_NETS: [&str; 6] = [
    "198.51.100",
    "203.0.113",
    "192.0.2",
    "185.220.101",
    "45.155.205",
    "91.219.236",
];

fn hex(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

#[derive(Debug, Clone)]
struct SlotState {
    exp_ms: u64,
    revoked: bool,
    last_use_ms: u64,
    children: Vec<usize>,
}

#[derive(Default)]
struct TenantState {
    user_tok: Vec<Option<usize>>,
    wl_tok: Vec<Option<usize>>,
    /// (edge service, user) → exchanged `api://orders` token.
    hop1: HashMap<(usize, usize), usize>,
    /// user → `api://payments` token exchanged by the orders service.
    hop2: HashMap<usize, usize>,
    mints_by_client: HashMap<String, VecDeque<u64>>,
    mints_by_subject: HashMap<String, VecDeque<u64>>,
}

struct Planner {
    rng: ChaCha8Rng,
    tenants: Vec<TenantPlan>,
    state: Vec<TenantState>,
    slots: Vec<SlotState>,
    slot_tenant: Vec<usize>,
    actions: Vec<Action>,
    end_ms: u64,
    roaming: f64,
}

impl Planner {
    fn usable(&self, slot: usize, t: u64) -> bool {
        let s = &self.slots[slot];
        !s.revoked && t + EXPIRY_MARGIN_MS < s.exp_ms
    }

    fn new_slot(&mut self, tenant: usize, exp_ms: u64) -> usize {
        self.slots.push(SlotState {
            exp_ms,
            revoked: false,
            last_use_ms: 0,
            children: Vec::new(),
        });
        self.slot_tenant.push(tenant);
        self.slots.len() - 1
    }

    fn push(&mut self, at_ms: u64, tenant: usize, step: Step) {
        if at_ms < self.end_ms {
            self.actions.push(Action { at_ms, tenant, step });
        }
    }

    fn use_slot(&mut self, at_ms: u64, tenant: usize, slot: usize, holder: Holder) {
        if at_ms >= self.end_ms {
            return;
        }
        let s = &mut self.slots[slot];
        s.last_use_ms = s.last_use_ms.max(at_ms);
        self.push(at_ms, tenant, Step::Use { slot, holder });
    }

    /// Whether `client` and `subject` may mint at `t` within the budgets;
    /// records the mint if so.
    fn budget(&mut self, tenant: usize, t: u64, client: &str, subject: &str) -> bool {
        let st = &mut self.state[tenant];
        let from = t.saturating_sub(60_000);
        for (map, key, max) in [
            (&mut st.mints_by_client, client, MINT_BUDGET_PER_CLIENT),
            (&mut st.mints_by_subject, subject, MINT_BUDGET_PER_SUBJECT),
        ] {
            let w = map.entry(key.to_owned()).or_default();
            while w.front().is_some_and(|x| *x < from) {
                w.pop_front();
            }
            if w.len() >= max {
                return false;
            }
        }
        st.mints_by_client.entry(client.to_owned()).or_default().push_back(t);
        st.mints_by_subject.entry(subject.to_owned()).or_default().push_back(t);
        true
    }

    /// The user's live token, minting one if needed (and allowed); the
    /// offset at which it can be used.
    fn user_token(&mut self, tenant: usize, u: usize, t: u64) -> Option<(usize, u64)> {
        if let Some(s) = self.state[tenant].user_tok[u]
            && self.usable(s, t)
        {
            return Some((s, t));
        }
        let user = self.tenants[tenant].users[u].clone();
        if !self.budget(tenant, t, IDPS[user.idp], &user.subject) {
            return None;
        }
        let slot = self.new_slot(tenant, t + user.ttl_seconds as u64 * 1000);
        self.state[tenant].user_tok[u] = Some(slot);
        self.push(t, tenant, Step::Mint { slot, user: u });
        let delay = self.rng.random_range(80..400);
        Some((slot, t + delay))
    }

    fn user_request(&mut self, tenant: usize, u: usize, t: u64) {
        let Some((tok, t1)) = self.user_token(tenant, u, t) else {
            return;
        };
        // Roaming draws from the generator only when enabled, so plans
        // without it are unchanged.
        let holder = if self.roaming > 0.0 && self.rng.random_bool(self.roaming) {
            Holder::Roaming(u)
        } else {
            Holder::User(u)
        };
        self.use_slot(t1, tenant, tok, holder);
        if !self.rng.random_bool(0.35) {
            return;
        }
        // The edge service forwards the request to orders with an exchanged token.
        let user = self.tenants[tenant].users[u].clone();
        let t2 = t1 + self.rng.random_range(20..120);
        let hop1 = match self.state[tenant].hop1.get(&(user.edge, u)).copied() {
            Some(s) if self.usable(s, t2) => s,
            _ => {
                if !self.usable(tok, t2 + 60_000) {
                    return;
                }
                let exp = self.slots[tok].exp_ms.min(t2 + 900_000);
                let slot = self.new_slot(tenant, exp);
                self.slots[tok].children.push(slot);
                self.state[tenant].hop1.insert((user.edge, u), slot);
                let scope = if user.scope.contains("orders:write") {
                    "orders:read orders:write payments:read"
                } else {
                    "orders:read payments:read"
                };
                self.push(
                    t2,
                    tenant,
                    Step::Exchange {
                        slot,
                        parent: tok,
                        caller: EDGE_SERVICES[user.edge].to_owned(),
                        audience: "api://orders".to_owned(),
                        scope: scope.to_owned(),
                    },
                );
                slot
            }
        };
        let t3 = t2 + self.rng.random_range(40..200);
        self.use_slot(t3, tenant, hop1, Holder::Edge(user.edge));
        if !self.rng.random_bool(0.35) {
            return;
        }
        let t4 = t3 + self.rng.random_range(20..120);
        let hop2 = match self.state[tenant].hop2.get(&u).copied() {
            Some(s) if self.usable(s, t4) && self.slots[hop1].children.contains(&s) => s,
            _ => {
                if !self.usable(hop1, t4 + 60_000) {
                    return;
                }
                let exp = self.slots[hop1].exp_ms.min(t4 + 600_000);
                let slot = self.new_slot(tenant, exp);
                self.slots[hop1].children.push(slot);
                self.state[tenant].hop2.insert(u, slot);
                self.push(
                    t4,
                    tenant,
                    Step::Exchange {
                        slot,
                        parent: hop1,
                        caller: ORDERS_SERVICE.to_owned(),
                        audience: "api://payments".to_owned(),
                        scope: "payments:read".to_owned(),
                    },
                );
                slot
            }
        };
        let t5 = t4 + self.rng.random_range(40..200);
        self.use_slot(t5, tenant, hop2, Holder::Orders);
    }

    fn workload_request(&mut self, tenant: usize, w: usize, t: u64) {
        let (slot, t1) = match self.state[tenant].wl_tok[w] {
            Some(s) if self.usable(s, t) => (s, t),
            _ => {
                let name = WORKLOADS[w].name;
                if !self.budget(tenant, t, name, name) {
                    return;
                }
                let ttl = self.tenants[tenant].workload_ttl[w] as u64;
                let slot = self.new_slot(tenant, t + ttl * 1000);
                self.state[tenant].wl_tok[w] = Some(slot);
                self.push(t, tenant, Step::ClientCredentials { slot, workload: w });
                (slot, t + self.rng.random_range(50..250))
            }
        };
        self.use_slot(t1, tenant, slot, Holder::Workload(w));
    }

    /// The latest use of `slot` and every token exchanged from it.
    fn last_use_tree(&self, slot: usize) -> u64 {
        let s = &self.slots[slot];
        s.children
            .iter()
            .map(|c| self.last_use_tree(*c))
            .fold(s.last_use_ms, u64::max)
    }

    fn mark_revoked(&mut self, slot: usize) {
        self.slots[slot].revoked = true;
        for c in self.slots[slot].children.clone() {
            self.mark_revoked(c);
        }
    }

    fn revoke_request(&mut self, tenant: usize, t: u64) {
        let n = self.tenants[tenant].users.len();
        let start = self.rng.random_range(0..n);
        for k in 0..n {
            let u = (start + k) % n;
            let Some(slot) = self.state[tenant].user_tok[u] else {
                continue;
            };
            if !self.usable(slot, t) || self.last_use_tree(slot) + REVOKE_QUIET_MS > t {
                continue;
            }
            let by = if self.rng.random_bool(0.7) {
                RevokeBy::Issuer
            } else {
                RevokeBy::Soc
            };
            self.mark_revoked(slot);
            let st = &mut self.state[tenant];
            st.user_tok[u] = None;
            st.hop1.retain(|(_, user), _| *user != u);
            st.hop2.remove(&u);
            self.push(t, tenant, Step::Revoke { slot, by });
            return;
        }
    }
}

fn ctx_user(rng: &mut ChaCha8Rng, tenant: usize, u: usize, mobile: bool) -> Ctx {
    let agents: &[&str] = if mobile { &MOBILE } else { &BROWSERS };
    Ctx {
        ip: format!("10.{}.{}.{}", 10 + tenant, u / 200, 10 + u % 200),
        device_id: format!("dev-{}", hex(rng, 12)),
        user_agent: agents[rng.random_range(0..agents.len())].to_owned(),
    }
}

/// A user's second network (see [`PlanConfig::roaming`]): another /24, the
/// same device and agent.
pub fn roaming_ctx(home: &Ctx, tenant: usize, u: usize) -> Ctx {
    Ctx {
        ip: format!("10.{}.{}.{}", 60 + tenant, u / 200, 10 + u % 200),
        ..home.clone()
    }
}

fn ctx_service(rng: &mut ChaCha8Rng, tenant: usize, k: usize, name: &str) -> Ctx {
    Ctx {
        ip: format!("10.{}.0.{}", 100 + tenant, 10 + k),
        device_id: format!("host-{name}-{}", hex(rng, 6)),
        user_agent: format!(
            "{name}/2.{}.{} (rust; reqwest)",
            rng.random_range(0..9),
            rng.random_range(0..20)
        ),
    }
}

/// Makes the plan for `cfg`.
///
/// Errors: a config out of range (no tenants, a duration, rate or day
/// length that is not positive and finite, more than 10,000 tenants).
pub fn make_plan(cfg: &PlanConfig) -> Result<Plan, String> {
    if cfg.tenants == 0 || cfg.tenants > 10_000 {
        return Err("--tenants must be from 1 to 10000".into());
    }
    for (name, v) in [
        ("--seconds", cfg.seconds),
        ("--rate", cfg.rate),
        ("--day-seconds", cfg.day_seconds),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{name} must be a positive number"));
        }
    }
    if !(0.0..=1.0).contains(&cfg.roaming) {
        return Err("--roaming must be from 0 to 1".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let end_ms = (cfg.seconds * 1000.0) as u64;
    let per_tenant = cfg.rate / cfg.tenants as f64;
    let n_users = ((per_tenant * 2.0).round() as usize).clamp(12, 400);
    let mut tenants = Vec::new();
    for i in 0..cfg.tenants {
        let users = (0..n_users)
            .map(|u| {
                let idp = rng.random_range(0..IDPS.len());
                let edge = rng.random_range(0..EDGE_SERVICES.len());
                let write = rng.random_bool(0.4);
                let ttl_seconds = [300, 600, 900, 1800, 3600][rng.random_range(0..5)];
                let ctx = ctx_user(&mut rng, i, u, idp == 1);
                User {
                    subject: format!("u-{}", hex(&mut rng, 10)),
                    idp,
                    edge,
                    scope: if write { USER_SCOPES_WRITE } else { USER_SCOPES_READ }.to_owned(),
                    ttl_seconds,
                    ctx,
                }
            })
            .collect();
        let workload_ctx = WORKLOADS
            .iter()
            .enumerate()
            .map(|(k, w)| ctx_service(&mut rng, i, k, w.name))
            .collect();
        let workload_ttl = WORKLOADS.iter().map(|_| rng.random_range(10..=60) * 60).collect();
        let edge_ctx = EDGE_SERVICES
            .iter()
            .enumerate()
            .map(|(k, n)| ctx_service(&mut rng, i, 10 + k, n))
            .collect();
        let orders_ctx = ctx_service(&mut rng, i, 20, ORDERS_SERVICE);
        tenants.push(TenantPlan {
            name: tenant_name(cfg.seed, i),
            users,
            workload_ctx,
            workload_ttl,
            edge_ctx,
            orders_ctx,
        });
    }
    let state = tenants
        .iter()
        .map(|t| TenantState {
            user_tok: vec![None; t.users.len()],
            wl_tok: vec![None; WORKLOADS.len()],
            ..Default::default()
        })
        .collect();
    let mut p = Planner {
        rng,
        tenants,
        state,
        slots: Vec::new(),
        slot_tenant: Vec::new(),
        actions: Vec::new(),
        end_ms,
        roaming: cfg.roaming,
    };

    // Morning: every user and workload makes a first request early, so
    // each has been seen before any attack (workloads first).
    let warm = (end_ms / 10).clamp(1, 5_000);
    let mut first: Vec<(u64, usize, Option<usize>, Option<usize>)> = Vec::new();
    for t in 0..cfg.tenants {
        for w in 0..WORKLOADS.len() {
            first.push((p.rng.random_range(0..warm / 2 + 1), t, None, Some(w)));
        }
        for u in 0..p.tenants[t].users.len() {
            first.push((p.rng.random_range(0..warm), t, Some(u), None));
        }
    }
    first.sort_by_key(|f| f.0);

    // The diurnal Poisson process (thinning), merged with the first requests.
    let lmax = cfg.rate * 1.5;
    let mut clock = 0.0f64;
    let mut requests: Vec<(u64, usize, Option<usize>, Option<usize>)> = Vec::new();
    loop {
        let u: f64 = p.rng.random::<f64>();
        clock += -(1.0 - u).ln() / lmax;
        if clock >= cfg.seconds {
            break;
        }
        let phase = std::f64::consts::TAU * clock / cfg.day_seconds - std::f64::consts::FRAC_PI_2;
        let lambda = cfg.rate * (1.0 + 0.5 * phase.sin());
        if p.rng.random::<f64>() * lmax > lambda {
            continue;
        }
        let at = (clock * 1000.0) as u64;
        let tenant = p.rng.random_range(0..cfg.tenants);
        let r: f64 = p.rng.random();
        if r < 0.64 {
            let u = p.rng.random_range(0..p.tenants[tenant].users.len());
            requests.push((at, tenant, Some(u), None));
        } else if r < 0.985 {
            requests.push((at, tenant, None, Some(p.rng.random_range(0..WORKLOADS.len()))));
        } else {
            requests.push((at, tenant, None, None));
        }
    }
    let mut all = first;
    all.extend(requests);
    all.sort_by_key(|r| r.0);
    for (at, tenant, user, workload) in all {
        match (user, workload) {
            (Some(u), _) => p.user_request(tenant, u, at),
            (None, Some(w)) => p.workload_request(tenant, w, at),
            (None, None) => p.revoke_request(tenant, at),
        }
    }
    // Key rotations: one per tenant per ten minutes of run, at least one.
    let rotations = ((cfg.seconds / 600.0).floor() as usize).max(1);
    for t in 0..cfg.tenants {
        for _ in 0..rotations {
            let at = p.rng.random_range(end_ms * 3 / 10..=end_ms * 9 / 10);
            p.push(at, t, Step::RotateKey);
        }
    }
    p.actions.sort_by_key(|a| a.at_ms);

    let mut scenarios = Vec::new();
    if !cfg.benign_only {
        for t in 0..cfg.tenants {
            let name = p.tenants[t].name.clone();
            let users = &p.tenants[t].users;
            // Distinct victims: theft, use after revocation, and a read-only
            // user for the escalation.
            let mut order: Vec<usize> = (0..users.len()).collect();
            for i in (1..order.len()).rev() {
                let j = p.rng.random_range(0..=i);
                order.swap(i, j);
            }
            let readonly = order
                .iter()
                .copied()
                .find(|u| !users[*u].scope.contains("orders:write"))
                .unwrap_or(order[0]);
            let others: Vec<usize> = order.iter().copied().filter(|u| *u != readonly).collect();
            let (theft_victim, uar_victim) = (others[0], others[1]);
            let stolen = p.rng.random_range(0..WORKLOADS.len());
            let mut burst = p.rng.random_range(0..WORKLOADS.len() - 1);
            if burst >= stolen {
                burst += 1;
            }
            let escalating = EDGE_SERVICES[users[readonly].edge];
            let mut kinds = ScenarioKind::ALL;
            for i in (1..kinds.len()).rev() {
                let j = p.rng.random_range(0..=i);
                kinds.swap(i, j);
            }
            for (n, kind) in kinds.into_iter().enumerate() {
                let at_ms = p.rng.random_range(end_ms / 5..=end_ms * 3 / 4);
                let attacker = Ctx {
                    ip: format!("{}.{}", ATTACK_NETS[n], p.rng.random_range(2..254)),
                    device_id: format!("atk-{}", hex(&mut p.rng, 10)),
                    user_agent: ATTACK_AGENTS[p.rng.random_range(0..ATTACK_AGENTS.len())].to_owned(),
                };
                let (user, client, count) = match kind {
                    ScenarioKind::TokenTheft => (Some(theft_victim), None, 3),
                    ScenarioKind::StolenWorkloadCredential => (None, Some(WORKLOADS[stolen].name), 3),
                    ScenarioKind::VerifyFailureStorm => (None, None, p.rng.random_range(28..40)),
                    ScenarioKind::MintBurst => (None, Some(WORKLOADS[burst].name), p.rng.random_range(330..360)),
                    ScenarioKind::ExchangeEscalation => (Some(readonly), Some(escalating), 1),
                    ScenarioKind::UseAfterRevocation => (Some(uar_victim), None, 2),
                };
                scenarios.push(PlannedScenario {
                    id: format!("{name}-{n}-{}", kind.as_str()),
                    kind,
                    tenant: t,
                    at_ms,
                    user,
                    client: client.map(str::to_owned),
                    attacker,
                    count,
                });
            }
        }
        scenarios.sort_by_key(|s| s.at_ms);
    }
    Ok(Plan {
        config: cfg.clone(),
        tenants: p.tenants,
        actions: p.actions,
        slots: p.slots.len(),
        slot_tenant: p.slot_tenant,
        scenarios,
    })
}
