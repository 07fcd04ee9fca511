//! Client commands of the `tokenledger` binary that talk to a running
//! server (DESIGN.md "CLI"): `sql` and `export`. The credential comes from
//! `TOKENLEDGER_CREDENTIAL` (an analyst's `tl_…` secret), the server from
//! `--server` / `TOKENLEDGER_SERVER`.

use clap::Args;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use tokenledger_analytics::arrow::ipc::reader::StreamReader;
use tokenledger_analytics::encode::ARROW_STREAM;

/// Where the server is and who is asking.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the server.
    #[arg(long, env = "TOKENLEDGER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The caller's credential (`tl_…`); read from the environment only, so
    /// it never shows in `ps`.
    #[arg(skip = std::env::var("TOKENLEDGER_CREDENTIAL").unwrap_or_default())]
    pub credential: String,
}

/// `tokenledger sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print the server's JSON answer (`{"columns", "rows"}`) instead of a table.
    #[arg(long)]
    json: bool,
    /// The query.
    query: String,
}

/// `tokenledger export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Directory to write into (created if absent): `events/date=YYYY-MM-DD/part-0.parquet`
    /// per UTC day, `<view>.parquet` per view, `manifest.json`.
    #[arg(long)]
    to: PathBuf,
}

/// The views exported beside `events`: every SQL view of the tenant.
pub const EXPORTED_VIEWS: &[&str] = &[
    "active_tokens",
    "block_list",
    "keys",
    "cutoffs",
    "anomalies",
    "risk_signals",
];

/// A failed client command: the message to print.
type CliResult = Result<(), String>;

fn client(args: &ClientArgs) -> Result<reqwest::Client, String> {
    if args.credential.is_empty() {
        return Err("set TOKENLEDGER_CREDENTIAL to an analyst's credential (tl_…)".into());
    }
    reqwest::Client::builder().build().map_err(|e| e.to_string())
}

async fn failure(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => format!(
            "{status}: {}",
            v.get("detail").and_then(|d| d.as_str()).unwrap_or(&text)
        ),
        Err(_) => format!("{status}: {text}"),
    }
}

/// Runs `tokenledger sql`: prints the answer as a table (or JSON).
pub async fn sql(args: SqlArgs) -> CliResult {
    let http = client(&args.client)?;
    let req = http
        .post(format!("{}/v1/sql", args.client.server.trim_end_matches('/')))
        .bearer_auth(&args.client.credential)
        .json(&serde_json::json!({"sql": args.query}));
    let req = if args.json {
        req
    } else {
        req.header(reqwest::header::ACCEPT, ARROW_STREAM)
    };
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(failure(resp).await);
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        out.write_all(&body)
            .and_then(|_| writeln!(out))
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(body), None).map_err(|e| e.to_string())?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let table =
        tokenledger_analytics::arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| e.to_string())?;
    writeln!(out, "{table}").map_err(|e| e.to_string())
}

/// Downloads one table's Arrow IPC stream into `path`.
async fn download(http: &reqwest::Client, args: &ClientArgs, table: &str, path: &Path) -> Result<u64, String> {
    let mut resp = http
        .get(format!("{}/v1/export/{table}", args.server.trim_end_matches('/')))
        .bearer_auth(&args.credential)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{table}: {}", failure(resp).await));
    }
    let position = resp
        .headers()
        .get("tokenledger-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut file = BufWriter::new(File::create(path).map_err(|e| format!("{}: {e}", path.display()))?);
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        file.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    file.flush().map_err(|e| e.to_string())?;
    Ok(position)
}

/// Runs `tokenledger export`: the tenant's events, partitioned by UTC date,
/// and every view, as Parquet with the SQL tables' Arrow schemas.
pub async fn export(args: ExportArgs) -> CliResult {
    export_to(&args.client, &args.to).await
}

/// Exports the caller's tenant into `to` (the layout of [`ExportArgs::to`]):
/// `events/date=YYYY-MM-DD/part-0.parquet` per UTC day of `recorded_at`,
/// `<view>.parquet` per view of [`EXPORTED_VIEWS`], and `manifest.json`
/// (`{table: {"rows", "position"}}`). Errors name the table and the server's
/// problem detail.
pub async fn export_to(client_args: &ClientArgs, to: &Path) -> CliResult {
    let http = client(client_args)?;
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let staging = tempfile_in(to)?;
    let done = export_tables(client_args, &http, to, &staging).await;
    // The staging directory goes, whatever happened (a refused credential,
    // a server gone mid-way): a failed export leaves no debris behind.
    let _ = std::fs::remove_dir_all(&staging);
    done
}

async fn export_tables(client_args: &ClientArgs, http: &reqwest::Client, to: &Path, staging: &Path) -> CliResult {
    let mut manifest = serde_json::Map::new();
    for table in std::iter::once("events").chain(EXPORTED_VIEWS.iter().copied()) {
        let ipc = staging.join(format!("{table}.arrows"));
        let position = download(http, client_args, table, &ipc).await?;
        let reader = StreamReader::try_new(BufReader::new(File::open(&ipc).map_err(|e| e.to_string())?), None)
            .map_err(|e| e.to_string())?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if table == "events" {
            let dir = to.join("events");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let days = tokenledger_analytics::export::by_date(batches)?;
            for (date, parts) in &days {
                tokenledger_analytics::export::write_parquet(
                    &dir.join(format!("date={date}")).join("part-0.parquet"),
                    parts,
                    schema.clone(),
                )?;
            }
            eprintln!("events: {rows} rows in {} daily partitions", days.len());
        } else {
            tokenledger_analytics::export::write_parquet(&to.join(format!("{table}.parquet")), &batches, schema)?;
            eprintln!("{table}: {rows} rows");
        }
        manifest.insert(table.into(), serde_json::json!({"rows": rows, "position": position}));
        let _ = std::fs::remove_file(&ipc);
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(manifest)).map_err(|e| e.to_string())?;
    std::fs::write(to.join("manifest.json"), text + "\n").map_err(|e| e.to_string())?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> Result<PathBuf, String> {
    let p = dir.join(format!(".export-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

/// `tokenledger import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The log format: cloudtrail, zeek-kerberos, okta or windows-security.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(tokenledger_importers::Format::NAMES))]
    format: String,
    /// Map and report only; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Most events per request (the server's `max_events_per_append` bounds it).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// The log file.
    file: PathBuf,
}

/// Largest request body the import sends, bytes (the server's default limit is 1 MiB).
const IMPORT_BODY_BYTES: usize = 768 * 1024;

/// Runs `tokenledger import`: maps the file's records to ledger events
/// (crate `tokenledger-importers`), prints what was read, mapped and skipped
/// by reason, appends the events through `POST /v1/imports` (admin
/// credential; into the admin's tenant), and lists the anomalies the
/// imported events raised.
pub async fn import(args: ImportArgs) -> CliResult {
    let format = tokenledger_importers::Format::parse(&args.format).ok_or("unknown format")?;
    let text = std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let report = tokenledger_importers::import(format, &text).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let mut by_type = std::collections::BTreeMap::<&str, u64>::new();
    for e in &report.events {
        *by_type.entry(e.event.event_type().as_str()).or_default() += 1;
    }
    let mut out = std::io::stdout().lock();
    let p = |out: &mut std::io::StdoutLock, s: String| writeln!(out, "{s}").map_err(|e| e.to_string());
    p(
        &mut out,
        format!(
            "{}: {} records read, {} mapped, {} skipped",
            args.file.display(),
            report.records_read,
            report.records_mapped,
            report.records_read - report.records_mapped
        ),
    )?;
    for (reason, n) in &report.skipped {
        p(&mut out, format!("  skipped {n:>6}  {reason}"))?;
    }
    for (ty, n) in &by_type {
        p(&mut out, format!("  event   {n:>6}  {ty}"))?;
    }
    if args.dry_run || report.events.is_empty() {
        return Ok(());
    }
    let http = client(&args.client)?;
    let base = args.client.server.trim_end_matches('/');
    let (mut appended, mut duplicates, mut first) = (0u64, 0u64, None::<u64>);
    let mut batch: Vec<serde_json::Value> = Vec::new();
    let mut bytes = 0usize;
    let mut rest = report.events.iter().peekable();
    while rest.peek().is_some() || !batch.is_empty() {
        if let Some(e) = rest.peek() {
            let (ty, data) = e.event.to_parts().map_err(|e| e.to_string())?;
            let item = serde_json::json!({
                "event_id": e.event_id, "event_type": ty, "data": data,
                "source_time": e.source_time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            });
            let size = item.to_string().len() + 1;
            if batch.is_empty() || (batch.len() < args.batch as usize && bytes + size <= IMPORT_BODY_BYTES) {
                batch.push(item);
                bytes += size;
                rest.next();
                continue;
            }
        }
        let resp = http
            .post(format!("{base}/v1/imports"))
            .bearer_auth(&args.client.credential)
            .json(&serde_json::json!({"format": args.format, "events": batch}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!(
                "import stopped after {appended} events appended: {}",
                failure(resp).await
            ));
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        appended += v["appended"].as_u64().unwrap_or(0);
        duplicates += v["duplicates"].as_u64().unwrap_or(0);
        first = first.or(v["first_position"].as_u64());
        batch.clear();
        bytes = 0;
    }
    p(
        &mut out,
        format!("appended {appended} events ({duplicates} already recorded)"),
    )?;
    // The anomalies the import raised (positions from its first event on).
    let since = first.map(|f| f.saturating_sub(1)).unwrap_or(0);
    let resp = http
        .get(format!("{base}/v1/anomalies?since={since}&limit=1000"))
        .bearer_auth(&args.client.credential)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("reading anomalies: {}", failure(resp).await));
    }
    let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    let list = v["anomalies"].as_array().cloned().unwrap_or_default();
    p(&mut out, format!("anomalies raised: {}", list.len()))?;
    for a in &list {
        let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
        p(
            &mut out,
            format!(
                "  {} {} [{}] subject={} token={} — {}",
                s("detected_at"),
                s("kind"),
                s("severity"),
                s("subject"),
                s("token_id"),
                s("detail")
            ),
        )?;
    }
    Ok(())
}
