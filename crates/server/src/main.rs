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

#[derive(Subcommand)]
enum Command {
    /// Run the server on the embedded store.
    Serve(ServeArgs),
}

fn main() -> std::process::ExitCode {
    // One rustls crypto provider for the whole process, before anything uses TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = match Settings::resolve(args) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tokenledger: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_tracing(&settings);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
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
