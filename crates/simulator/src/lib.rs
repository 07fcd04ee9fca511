//! `tokenledger simulate` and `tokenledger score`: a seeded, reproducible
//! simulation of organisations using the ledger over HTTP, with labelled
//! attack scenarios mixed into benign traffic, and a scorer that matches the
//! anomalies and cutoffs the server produced against the labels.
//!
//! * [`plan`]: the seeded plan (organisation, benign actions, scenarios);
//!   the same [`plan::PlanConfig`] gives the same plan.
//! * [`run`]: plays a plan against a server ([`SimConfig`]) and writes
//!   `labels.json`, `run.json` and `credentials.json` (mode 0600).
//! * [`score_run`]: reads a run directory and scores it ([`Scorecard`],
//!   which prints as a table).
//!
//! Each simulated tenant (`sim<seed>-<i>`) has two identity providers
//! (`idp-web`, `idp-mobile`) minting user tokens for `api://gateway`; two
//! edge services (`svc-gateway`, `svc-search`) that exchange user tokens for
//! `api://orders`, and `svc-orders`, which exchanges those for
//! `api://payments` (chains 2 deep); three workloads (`svc-inventory`,
//! `svc-billing`, `svc-reports`) using `client_credentials`; five
//! validators, two of which (`gw-orders`, `gw-inventory`) verify locally
//! with `tokenledger_validator::Validator` and report uses, the others
//! through `POST /v1/tokens/verify`; a `soc` and an `analyst`. The detector
//! thresholds are left at the server's defaults.
//!
//! Attack scenarios, each once per tenant unless `--benign-only`, at seeded
//! times between 20 % and 75 % of the run: token theft and replay from
//! another network (`concurrent_use`, cutoff of the subject), a stolen
//! workload credential used from a new device (`new_device`), a storm of
//! forged tokens from one ip (`verify_failure_spike`), a compromised client
//! minting 330–360 tokens for distinct subjects, past the default 300 per
//! 60 s (`mint_burst`, cutoff of the client), an exchange asking for a scope
//! the subject token lacks (`exchange_escalation`, cutoff of the caller),
//! and a revoked token presented again (`use_after_revocation`, cutoff of
//! the subject).

pub mod exec;
pub mod plan;
pub mod score;

pub use exec::{
    CredentialsFile, ExpectedCutoff, Keys, Label, LabelsFile, Progress, RunOutcome, SimConfig, TenantCredentials, run,
};
pub use plan::{Plan, PlanConfig, ScenarioKind, make_plan};
pub use score::{Scorecard, score_labels, score_run};

use std::path::PathBuf;

/// The default server URL.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `tokenledger simulate`: drive a server with seeded benign traffic and
/// labelled attacks. The bootstrap secret comes from `TOKENLEDGER_CREDENTIAL`
/// only (never a flag).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Base URL of the server.
    #[arg(long, env = "TOKENLEDGER_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Seed of the plan: the same seed gives the same actions and labels.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to run, seconds (wall clock; then in-flight work is awaited).
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Number of tenants (`sim<seed>-<i>`).
    #[arg(long, default_value_t = 2)]
    pub tenants: usize,
    /// Mean benign requests per second over all tenants.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Length of the compressed day of the diurnal rate, seconds (default:
    /// the run length).
    #[arg(long)]
    pub day_seconds: Option<f64>,
    /// No attack scenarios.
    #[arg(long)]
    pub benign_only: bool,
    /// Probability (0 to 1) that a user's request comes from their second
    /// network (Wi-Fi to mobile data) with the token they hold: benign
    /// roaming, which the network-based detectors cannot tell from replay.
    #[arg(long, default_value_t = 0.0)]
    pub roaming: f64,
    /// Where to write labels.json, run.json and credentials.json (0600).
    #[arg(long, default_value = "sim-run")]
    pub out: PathBuf,
}

/// `tokenledger score`: score a run directory against the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// Base URL of the server.
    #[arg(long, env = "TOKENLEDGER_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The run directory (`simulate --out`).
    #[arg(long)]
    pub run: PathBuf,
    /// Print the scorecard as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tokenledger simulate`: progress lines on stderr, a summary (no
/// secrets) on stdout.
///
/// Errors: `TOKENLEDGER_CREDENTIAL` unset, bad flags, an unreachable server,
/// a tenant that already has an admin, files that cannot be written.
pub async fn simulate(args: SimulateArgs) -> Result<(), String> {
    let credential = std::env::var("TOKENLEDGER_CREDENTIAL")
        .map_err(|_| "set TOKENLEDGER_CREDENTIAL to the server's bootstrap secret".to_owned())?;
    let mut cfg = SimConfig::new(&args.server, credential.trim(), args.seed);
    cfg.seconds = args.seconds;
    cfg.tenants = args.tenants;
    cfg.rate = args.rate;
    cfg.day_seconds = args.day_seconds;
    cfg.benign_only = args.benign_only;
    cfg.roaming = args.roaming;
    cfg.out = Some(args.out.clone());
    let outcome = run(&cfg, &|p: &Progress| eprintln!("simulate: {p}")).await?;
    let c = &outcome.counters;
    println!(
        "simulated {} s on {} tenant(s) ({}): {} requests ({} benign), {} tokens minted, {} client_credentials, {} exchanged, {} verified, {} revoked, {} key rotations, {} refused, {} errors",
        c.elapsed_seconds,
        outcome.labels.tenants.len(),
        outcome.labels.tenants.join(", "),
        c.requests,
        c.benign_requests,
        c.minted,
        c.client_credentials,
        c.exchanged,
        c.verified,
        c.revoked,
        c.rotations,
        c.refused,
        c.errors
    );
    println!("attacks injected: {}", outcome.attacks_line());
    println!(
        "wrote {0}/labels.json, {0}/run.json, {0}/credentials.json (0600); score with: tokenledger score --server {1} --run {0}",
        args.out.display(),
        cfg.server
    );
    Ok(())
}

/// Runs `tokenledger score`: the scorecard as a table (or JSON with
/// `--json`) on stdout. A bad score is not an error.
///
/// Errors: unreadable run files, an unreachable server, a refused credential.
pub async fn score(args: ScoreArgs) -> Result<(), String> {
    let card = score_run(&args.run, &args.server).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&card).map_err(|e| e.to_string())?);
    } else {
        print!("{card}");
    }
    Ok(())
}
