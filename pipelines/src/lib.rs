//! tokenledger's analyst pipelines: batch jobs on Polars' lazy API over one
//! tenant's Parquet export (`tokenledger export --to DIR`).
//!
//! | pipeline | tables written | what |
//! |---|---|---|
//! | `daily-usage` | `daily_usage` | issuance, exchanges, uses and refusals per UTC day, client and audience |
//! | `token-lifetimes` | `tokens`, `token_lifetimes` | each token's uses, revocation and status; per client and audience: issued / used / revoked / expired unused, time to first use |
//! | `exchange-graph` | `exchange_edges` | who exchanges which tokens into which audience (RFC 8693) |
//! | `anomalies-daily` | `anomalies_daily` | anomalies per UTC day, kind and severity |
//! | `cutoff-audit` | `cutoff_audit`, `cutoffs_daily` | each cutoff: what, why, how long, what it blocked (`GrantRefused`); per day |
//!
//! The crate is a workspace member outside `default-members`: building the
//! server never compiles Polars.

pub mod input;
pub mod pipelines;

use input::Export;
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// The pipelines, by the name `tokenledger-pipelines run NAME` takes.
pub const PIPELINES: [&str; 5] = [
    "daily-usage",
    "token-lifetimes",
    "exchange-graph",
    "anomalies-daily",
    "cutoff-audit",
];

/// A failed run: bad input, an unknown pipeline, or an output problem.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The input is not a usable export.
    #[error(transparent)]
    Input(#[from] input::InputError),
    /// No pipeline has that name.
    #[error("unknown pipeline {0:?}; the pipelines are {list} (or all)", list = PIPELINES.join(", "))]
    Unknown(String),
    /// Polars failed while computing a table.
    #[error("{0}")]
    Polars(#[from] PolarsError),
    /// Writing an output failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The tables one pipeline computes, by output name, collected.
///
/// # Errors
/// [`RunError::Unknown`] for a name not in [`PIPELINES`]; Polars errors.
pub fn compute(name: &str, export: &Export) -> Result<Vec<(&'static str, DataFrame)>, RunError> {
    // An export without events has no "now"; its tables are empty anyway.
    let as_of = pipelines::as_of(export)?.unwrap_or(0);
    Ok(match name {
        "daily-usage" => vec![("daily_usage", pipelines::daily_usage(export).collect()?)],
        "token-lifetimes" => {
            let tokens = pipelines::tokens(export, as_of)?.collect()?;
            let summary = pipelines::token_lifetimes(tokens.clone().lazy()).collect()?;
            vec![("tokens", tokens), ("token_lifetimes", summary)]
        }
        "exchange-graph" => vec![("exchange_edges", pipelines::exchange_edges(export).collect()?)],
        "anomalies-daily" => vec![("anomalies_daily", pipelines::anomalies_daily(export).collect()?)],
        "cutoff-audit" => vec![
            ("cutoff_audit", pipelines::cutoff_audit(export, as_of).collect()?),
            ("cutoffs_daily", pipelines::cutoffs_daily(export).collect()?),
        ],
        other => return Err(RunError::Unknown(other.to_owned())),
    })
}

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Apache Parquet (the default).
    Parquet,
    /// CSV with a header row; dates `YYYY-MM-DD`, times RFC 3339 in UTC
    /// (`2026-03-02T09:41:00.000000Z`).
    Csv,
}

impl OutputFormat {
    fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Csv => "csv",
        }
    }
}

/// Writes `df` to `dir/<name>.<ext>`, through a temporary file renamed into
/// place (a reader never sees half a table). Returns the path.
///
/// # Errors
/// [`RunError::Io`] naming the file; Polars errors encoding it.
pub fn write_table(dir: &Path, name: &str, df: &mut DataFrame, format: OutputFormat) -> Result<PathBuf, RunError> {
    std::fs::create_dir_all(dir).map_err(|e| RunError::Io(dir.to_path_buf(), e))?;
    let path = dir.join(format!("{name}.{}", format.extension()));
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| RunError::Io(tmp.clone(), e))?;
    match format {
        OutputFormat::Parquet => {
            ParquetWriter::new(&mut file).finish(df)?;
        }
        // Every time is UTC: RFC 3339 with `Z`, to the microsecond.
        OutputFormat::Csv => CsvWriter::new(&mut file)
            .include_header(true)
            .with_datetime_format(Some("%Y-%m-%dT%H:%M:%S%.6fZ".into()))
            .finish(df)?,
    }
    file.sync_all().map_err(|e| RunError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| RunError::Io(path.clone(), e))?;
    Ok(path)
}

/// Runs pipeline `name` (or every pipeline for `all`) over the export in
/// `input` and writes its tables into `output`. Returns each written file
/// with its row count.
///
/// # Errors
/// [`RunError`]: an unusable export, an unknown name, a write failure.
pub fn run(name: &str, input: &Path, output: &Path, format: OutputFormat) -> Result<Vec<(PathBuf, usize)>, RunError> {
    let names: Vec<&str> = match name {
        "all" => PIPELINES.to_vec(),
        n if PIPELINES.contains(&n) => vec![n],
        other => return Err(RunError::Unknown(other.to_owned())),
    };
    let export = Export::open(input)?;
    let mut written = Vec::new();
    for n in names {
        for (table, mut df) in compute(n, &export)? {
            let rows = df.height();
            written.push((write_table(output, table, &mut df, format)?, rows));
        }
    }
    Ok(written)
}
