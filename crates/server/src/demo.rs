//! `tokenledger demo` — the main job in one command, on the embedded store:
//! starts this binary's `serve` on a fresh data dir with the shipped cutoff
//! rules, drives it with the simulator (`tokenledger-simulator`: several
//! tenants, benign traffic with labelled attacks) for a bounded time with a
//! progress line every few seconds, scores what the ledger detected against
//! the ground truth, prints a summary (events appended, tokens minted /
//! verified / exchanged / revoked, anomalies by kind, cutoffs engaged, the
//! answer of an example SQL query), stops the server (SIGTERM: a clean
//! shutdown with a snapshot) and leaves the data dir with the credentials
//! for the analyst commands (`sim/credentials.json`, mode 0600).

use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenledger_simulator::{Progress, SimConfig, TenantCredentials};

/// The shipped cutoff rules (`rules/default.toml`), written into the data
/// dir so the demo runs from any directory.
const DEFAULT_RULES: &str = include_str!("../../../rules/default.toml");

/// `tokenledger demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data dir of the demo ledger; must not exist yet (or be empty).
    #[arg(long, default_value = "demo-data")]
    pub data_dir: PathBuf,
    /// How long the simulator drives the server, seconds (10 to 3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub seconds: u64,
    /// Seed of the simulation (the same seed plays the same plan).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of simulated tenants.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub tenants: u64,
    /// Mean benign requests per second over all tenants.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Address the demo server listens on (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Keep serving after the summary (until Ctrl-C) for the analyst commands.
    #[arg(long)]
    pub keep_serving: bool,
    /// After the summary, export each tenant as Parquet into `DIR/<tenant>`
    /// (the layout of `tokenledger export`), as that tenant's analyst.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
}

/// Runs `tokenledger demo`; the exit code is 0 when the demo ran to its
/// summary.
pub fn demo_command(args: DemoArgs) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(demo(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenledger demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The server child: SIGTERM and wait on drop, so an error path leaves no
/// server behind.
struct ServerChild {
    child: Child,
}

impl ServerChild {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM through kill(1): the crate forbids unsafe code.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_loopback(listen: &str) -> Result<String, String> {
    let l = std::net::TcpListener::bind(listen).map_err(|e| format!("--listen {listen}: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_loopback() {
        return Err(format!("--listen {listen}: the demo listens on loopback only"));
    }
    Ok(addr.to_string())
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let dir = &args.data_dir;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} already holds a ledger; remove it (rm -rf {}) or pass --data-dir",
            dir.display(),
            dir.display()
        ));
    }
    if let Some(to) = &args.export
        && to.exists()
        && !to.is_dir()
    {
        return Err(format!("--export {}: not a directory", to.display()));
    }
    tokenledger_store::files::create_private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, DEFAULT_RULES).map_err(|e| format!("{}: {e}", rules.display()))?;
    let addr = free_loopback(&args.listen)?;
    let base = format!("http://{addr}");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;

    println!(
        "tokenledger demo: starting the server on {base} (data dir {}, log {})",
        dir.display(),
        log_path.display()
    );
    let child = Command::new(&exe)
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &addr, "--rules-file"])
        .arg(&rules)
        .env_remove("TOKENLEDGER_BOOTSTRAP_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let mut server = ServerChild { child };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    wait_ready(&http, &base, &mut server, &log_path).await?;
    // The server wrote its bootstrap secret (0600) on first start.
    let bootstrap = std::fs::read_to_string(dir.join("bootstrap.token"))
        .map_err(|e| format!("reading the bootstrap secret: {e}"))?;

    let out = dir.join("sim");
    let mut cfg = SimConfig::new(&base, bootstrap.trim(), args.seed);
    cfg.seconds = args.seconds as f64;
    cfg.tenants = args.tenants as usize;
    cfg.rate = args.rate;
    cfg.out = Some(out.clone());
    println!(
        "tokenledger demo: simulating {} tenant(s) for {} s (seed {}): benign traffic with labelled attacks",
        cfg.tenants, args.seconds, args.seed
    );
    let progress = |p: &Progress| println!("  {p}");
    let outcome = tokenledger_simulator::run(&cfg, &progress).await?;
    // Rules run on every detection and every few seconds: give the last
    // detections' rules a moment before reading the cutoffs.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let c = &outcome.counters;
    println!();
    println!("== Summary ==");
    println!(
        "requests {} ({} benign); by the benign clients (the attacks are counted below and in the ledger): tokens minted {} (+{} client_credentials, {} exchanged); verified {} ({} locally, {} refused); revoked {}; key rotations {}",
        c.requests,
        c.benign_requests,
        c.minted,
        c.client_credentials,
        c.exchanged,
        c.verified,
        c.verified_locally,
        c.rejected,
        c.revoked,
        c.rotations
    );
    println!("attacks injected: {}", outcome.attacks_line());
    for t in &outcome.credentials {
        tenant_summary(&http, &base, t).await?;
    }
    let card = tokenledger_simulator::score_run(&out, &base).await?;
    println!();
    println!(
        "== Score against the ground truth ({}) ==",
        out.join("labels.json").display()
    );
    println!("{card}");
    if let Some(to) = &args.export {
        println!();
        for t in &outcome.credentials {
            let client = crate::cli::ClientArgs {
                server: base.clone(),
                credential: t.analyst.clone(),
            };
            let dest = to.join(&t.tenant);
            crate::cli::export_to(&client, &dest)
                .await
                .map_err(|e| format!("exporting tenant {}: {e}", t.tenant))?;
            println!("exported tenant {} as Parquet to {}", t.tenant, dest.display());
        }
    }
    if args.keep_serving {
        println!("serving on {base} until Ctrl-C …");
        let _ = tokio::signal::ctrl_c().await;
    }
    server.stop();
    let first = outcome
        .credentials
        .first()
        .map(|t| t.tenant.clone())
        .unwrap_or_default();
    println!();
    println!(
        "The ledger is in {} and the tenants' credentials in {} (0600). For the analyst commands:",
        dir.display(),
        out.join("credentials.json").display()
    );
    println!(
        "  tokenledger serve --data-dir {} --listen 127.0.0.1:8080 &",
        dir.display()
    );
    println!(
        "  export TOKENLEDGER_CREDENTIAL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"tenants\"][0][\"analyst\"])' {})   # tenant {first}",
        out.join("credentials.json").display()
    );
    println!("  tokenledger sql \"SELECT kind, count(*) FROM anomalies GROUP BY kind\"");
    println!("  tokenledger export --to ./parquet");
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, base: &str, server: &mut ServerChild, log: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("the server exited ({status}) at start; see {}", log.display()));
        }
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(format!("the server was not ready within 120 s; see {}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One SQL query as the tenant's analyst → rows.
async fn sql(http: &reqwest::Client, base: &str, analyst: &str, query: &str) -> Result<Vec<Vec<Value>>, String> {
    let r = http
        .post(format!("{base}/v1/sql"))
        .bearer_auth(analyst)
        .json(&serde_json::json!({"sql": query}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("SQL {query:?}: {status} {}", v["detail"]));
    }
    Ok(serde_json::from_value(v["rows"].clone()).unwrap_or_default())
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The ledger's own account of one tenant, through SQL.
async fn tenant_summary(http: &reqwest::Client, base: &str, t: &TenantCredentials) -> Result<(), String> {
    println!();
    println!("-- tenant {} --", t.tenant);
    let rows = sql(
        http,
        base,
        &t.analyst,
        "SELECT event_type, count(*) AS n FROM events GROUP BY event_type ORDER BY n DESC",
    )
    .await?;
    let total: u64 = rows.iter().filter_map(|r| r.get(1).and_then(Value::as_u64)).sum();
    let parts: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", cell(&r[0]), cell(&r[1])))
        .collect();
    println!("events appended: {total} ({})", parts.join(", "));
    let rows = sql(
        http,
        base,
        &t.analyst,
        "SELECT kind, count(*) AS n FROM anomalies GROUP BY kind ORDER BY n DESC, kind",
    )
    .await?;
    let parts: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", cell(&r[0]), cell(&r[1])))
        .collect();
    println!(
        "anomalies by kind: {}",
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    );
    let rows = sql(
        http,
        base,
        &t.analyst,
        "SELECT scope, key, rule_id, active FROM cutoffs ORDER BY position",
    )
    .await?;
    println!("cutoffs engaged: {}", rows.len());
    for r in &rows {
        println!(
            "  {} {} by rule {} ({})",
            cell(&r[0]),
            cell(&r[1]),
            cell(&r[2]),
            if r[3] == Value::Bool(true) {
                "active"
            } else {
                "released"
            }
        );
    }
    let example = "SELECT client_id, \
        sum(CASE WHEN event_type = 'TokenIssued' THEN 1 ELSE 0 END) AS minted, \
        sum(CASE WHEN event_type = 'TokenUsed' AND outcome = 'accepted' THEN 1 ELSE 0 END) AS accepted_uses, \
        sum(CASE WHEN event_type = 'GrantRefused' THEN 1 ELSE 0 END) AS refused \
        FROM events WHERE client_id IS NOT NULL GROUP BY client_id ORDER BY minted DESC LIMIT 5";
    let rows = sql(http, base, &t.analyst, example).await?;
    println!("example SQL — the busiest clients:");
    println!("  {example}");
    println!(
        "  {:<20} {:>8} {:>14} {:>8}",
        "client_id", "minted", "accepted_uses", "refused"
    );
    for r in &rows {
        println!(
            "  {:<20} {:>8} {:>14} {:>8}",
            cell(&r[0]),
            cell(&r[1]),
            cell(&r[2]),
            cell(&r[3])
        );
    }
    Ok(())
}
