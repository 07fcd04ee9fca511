//! `tokenledger-pipelines`: runs the analyst pipelines over a Parquet export.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokenledger_pipelines::{OutputFormat, PIPELINES, run};

/// Batch pipelines (Polars) over a tokenledger Parquet export.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one pipeline (or `all`) and writes its tables.
    Run {
        /// The pipeline: daily-usage, token-lifetimes, exchange-graph,
        /// anomalies-daily, cutoff-audit, or all.
        name: String,
        /// One tenant's export (`tokenledger export --to DIR`).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the tables (created if absent; files replaced).
        #[arg(long)]
        output: PathBuf,
        /// Write CSV instead of Parquet.
        #[arg(long)]
        csv: bool,
    },
    /// Lists the pipelines.
    List,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List => {
            for p in PIPELINES {
                println!("{p}");
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            name,
            input,
            output,
            csv,
        } => {
            let format = if csv { OutputFormat::Csv } else { OutputFormat::Parquet };
            match run(&name, &input, &output, format) {
                Ok(written) => {
                    for (path, rows) in written {
                        println!("{}: {rows} rows", path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tokenledger-pipelines: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
