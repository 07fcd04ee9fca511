//! The `tokenledger` binary.

use clap::{Parser, Subcommand};
use tokenledger_server::config::{LogFormat, ServeArgs, Settings};
use tracing_subscriber::EnvFilter;

/// A Zero-Trust token service on an event-sourced ledger.
#[derive(Parser)]
#[command(name = "tokenledger", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The main job in one command: start a server on a fresh data dir,
    /// drive it with the simulator (benign traffic and labelled attacks) for
    /// a bounded time, and print what the ledger recorded, detected and cut
    /// off, scored against the ground truth.
    Demo(tokenledger_server::demo::DemoArgs),
    /// Run the server on the embedded store.
    Serve(ServeArgs),
    /// Rebuild the views from the log (server stopped): fold $all from
    /// position 0 and write a fresh snapshot; --verify compares with the
    /// snapshot the server wrote, --dump writes the canonical views.
    Rebuild(tokenledger_server::projections::RebuildArgs),
    /// Run one SQL query on a running server (analyst credential in
    /// TOKENLEDGER_CREDENTIAL) and print the answer.
    Sql(tokenledger_server::cli::SqlArgs),
    /// Export the tenant's events (partitioned by UTC date) and views as
    /// Parquet from a running server (analyst credential in TOKENLEDGER_CREDENTIAL).
    Export(tokenledger_server::cli::ExportArgs),
    /// Import a log of another identity system (CloudTrail, Zeek
    /// kerberos.log, Okta System Log, Windows Security 4768/4769/4771) into
    /// a running server (admin credential in TOKENLEDGER_CREDENTIAL), keeping
    /// each record's time as source_time; prints records read, mapped and
    /// skipped by reason, and the anomalies raised.
    Import(tokenledger_server::cli::ImportArgs),
    /// Drive a running server like an organisation, with labelled attacks
    /// (bootstrap secret in TOKENLEDGER_CREDENTIAL); writes the ground truth.
    Simulate(tokenledger_simulator::SimulateArgs),
    /// Score a simulation run: per-scenario detection, precision, recall,
    /// time to cutoff, benign false-positive rate.
    Score(tokenledger_simulator::ScoreArgs),
}

fn main() -> std::process::ExitCode {
    // One rustls crypto provider for the whole process, before anything uses TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => tokenledger_server::demo::demo_command(args),
        Command::Rebuild(args) => tokenledger_server::projections::rebuild_command(args),
        Command::Sql(args) => client_command(tokenledger_server::cli::sql(args)),
        Command::Export(args) => client_command(tokenledger_server::cli::export(args)),
        Command::Import(args) => client_command(tokenledger_server::cli::import(args)),
        Command::Simulate(args) => client_command(tokenledger_simulator::simulate(args)),
        Command::Score(args) => client_command(tokenledger_simulator::score(args)),
        Command::Serve(args) => {
            let settings = match Settings::resolve(args) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tokenledger: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_tracing(&settings);
            // 8 MiB stacks (tokio's default is 2 MiB): SQL planning walks
            // query trees recursively; queries are bounded in operators
            // (`MAX_OPERATORS`, tested on 2 MiB), this is the margin on top.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_stack_size(8 << 20)
                .build()
                .expect("tokio runtime");
            match rt.block_on(tokenledger_server::serve::serve(settings)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "tokenledger stopped");
                    eprintln!("tokenledger: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a client command on a small runtime; prints its error and exits 1.
fn client_command(f: impl std::future::Future<Output = Result<(), String>>) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(f) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenledger: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(settings: &Settings) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&settings.log));
    // Colour codes only on a terminal: not into files, journald or collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
