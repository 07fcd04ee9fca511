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

/// The views exported beside `events`.
pub const EXPORTED_VIEWS: &[&str] = &["active_tokens", "block_list", "keys", "cutoffs"];

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
    let http = client(&args.client)?;
    std::fs::create_dir_all(&args.to).map_err(|e| format!("{}: {e}", args.to.display()))?;
    let staging = tempfile_in(&args.to)?;
    let mut manifest = serde_json::Map::new();
    for table in std::iter::once("events").chain(EXPORTED_VIEWS.iter().copied()) {
        let ipc = staging.join(format!("{table}.arrows"));
        let position = download(&http, &args.client, table, &ipc).await?;
        let reader = StreamReader::try_new(BufReader::new(File::open(&ipc).map_err(|e| e.to_string())?), None)
            .map_err(|e| e.to_string())?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if table == "events" {
            let dir = args.to.join("events");
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
            tokenledger_analytics::export::write_parquet(&args.to.join(format!("{table}.parquet")), &batches, schema)?;
            eprintln!("{table}: {rows} rows");
        }
        manifest.insert(table.into(), serde_json::json!({"rows": rows, "position": position}));
        let _ = std::fs::remove_file(&ipc);
    }
    let _ = std::fs::remove_dir(&staging);
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(manifest)).map_err(|e| e.to_string())?;
    std::fs::write(args.to.join("manifest.json"), text + "\n").map_err(|e| e.to_string())?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> Result<PathBuf, String> {
    let p = dir.join(format!(".export-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}
