//! `tokenledger serve`: open the store, rebuild the registry from the log,
//! listen (HTTPS with rustls, or plain HTTP on loopback), and on SIGTERM
//! drain in-flight requests and flush pending commits before exiting.

use crate::api;
use crate::config::Settings;
use crate::state::AppState;
use axum_server::Handle;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokenledger_domain::clock::{Clock, SystemClock};
use tokenledger_store::{EventStore, RedbOptions, RedbStore};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory, bootstrap token or TLS files could not be used.
    #[error("{0}")]
    Setup(String),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] tokenledger_store::StoreError),
    /// Listening or serving failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(settings: Settings) -> Result<(), ServeError> {
    let settings = Arc::new(settings);
    create_private_dir(&settings.data_dir)?;
    let bootstrap = bootstrap_secret(&settings)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut opts = RedbOptions::new(settings.data_dir.join("ledger.redb"));
    opts.clock = clock.clone();
    let store = RedbStore::open(opts)?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let kek = load_kek(&settings)?;
    let state = AppState::new(store.clone(), settings.clone(), clock, &bootstrap, kek);

    let handle: Handle<SocketAddr> = Handle::new();
    let app = api::app(state.clone());
    let server = {
        let handle = handle.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            match (&settings.tls_cert, &settings.tls_key) {
                (Some(cert), Some(key)) => {
                    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
                    axum_server::bind_rustls(settings.listen, tls)
                        .handle(handle)
                        .serve(app.into_make_service())
                        .await
                }
                _ => {
                    axum_server::bind(settings.listen)
                        .handle(handle)
                        .serve(app.into_make_service())
                        .await
                }
            }
        })
    };
    let Some(addr) = handle.listening().await else {
        return Err(match server.await {
            Ok(Err(e)) => ServeError::Io(e),
            _ => ServeError::Setup(format!("could not listen on {}", settings.listen)),
        });
    };
    let scheme = if settings.tls_cert.is_some() { "https" } else { "http" };
    tracing::info!(listen = %addr, scheme, data_dir = %settings.data_dir.display(), "listening; catching up with the log");

    let metrics_server = match settings.metrics_listen {
        Some(maddr) => {
            let h: Handle<SocketAddr> = Handle::new();
            let app = api::metrics_app(state.clone());
            let h2 = h.clone();
            tokio::spawn(async move { axum_server::bind(maddr).handle(h2).serve(app.into_make_service()).await });
            if let Some(a) = h.listening().await {
                tracing::info!(listen = %a, "metrics listener (unauthenticated)");
            }
            Some(h)
        }
        None => None,
    };

    // Views reach the head of the log before the API answers (503 until then).
    let head = state.catch_up().await?;
    let scheduler = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                if let Err(e) = state.keyring.tick(&state).await {
                    tracing::error!(error = %e, "key scheduler step failed");
                }
            }
        })
    };
    tracing::info!(head = head.0, "ready");

    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    state.ready.store(false, Ordering::Release);
    handle.graceful_shutdown(Some(Duration::from_secs(settings.shutdown_grace_seconds)));
    if let Some(h) = metrics_server {
        h.graceful_shutdown(Some(Duration::from_secs(1)));
    }
    match server.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "server task failed"),
    }
    scheduler.abort();
    store.close().await;
    tracing::info!("pending commits flushed; stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ServeError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .map_err(|e| ServeError::Setup(format!("data dir {}: {e}", dir.display())))
}

/// The key-encryption key: from `--kek-file`, or `<data-dir>/kek` (created
/// exclusively with mode 0600 and 256 random bits if absent). Never a
/// built-in default.
fn load_kek(settings: &Settings) -> Result<tokenledger_tokens::seal::Kek, ServeError> {
    let (path, may_create) = match &settings.kek_file {
        Some(p) => (p.clone(), false),
        None => (settings.data_dir.join("kek"), true),
    };
    let setup = |e: String| ServeError::Setup(format!("key-encryption key {}: {e}", path.display()));
    let parse = |text: &str| -> Result<tokenledger_tokens::seal::Kek, ServeError> {
        let raw = hex::decode(text.trim()).map_err(|e| setup(e.to_string()))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| setup("must be 32 bytes in hex".into()))?;
        Ok(tokenledger_tokens::seal::Kek::from_bytes(bytes))
    };
    if path.exists() || !may_create {
        return parse(&std::fs::read_to_string(&path).map_err(|e| setup(e.to_string()))?);
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let kek = tokenledger_tokens::seal::Kek::generate(&mut rand::rng());
    let mut f = opts.open(&path).map_err(|e| setup(e.to_string()))?;
    f.write_all(hex::encode(kek.to_bytes()).as_bytes())
        .map_err(|e| setup(e.to_string()))?;
    f.sync_all().map_err(|e| setup(e.to_string()))?;
    tracing::info!(path = %path.display(), "generated the key-encryption key");
    Ok(kek)
}

/// The bootstrap secret: from the settings, or `<data-dir>/bootstrap.token`
/// (created exclusively with mode 0600 and 256 random bits if absent).
fn bootstrap_secret(settings: &Settings) -> Result<String, ServeError> {
    if let Some(t) = &settings.bootstrap_token {
        return Ok(t.clone());
    }
    let path = settings.data_dir.join("bootstrap.token");
    let setup = |e: std::io::Error| ServeError::Setup(format!("bootstrap token {}: {e}", path.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(&path) {
        Ok(mut f) => {
            let mut raw = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
            let token = hex::encode(raw);
            f.write_all(token.as_bytes()).map_err(setup)?;
            f.sync_all().map_err(setup)?;
            tracing::info!(path = %path.display(), "generated the bootstrap token");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let token = std::fs::read_to_string(&path).map_err(setup)?.trim().to_owned();
            if token.len() < 32 {
                return Err(ServeError::Setup(format!(
                    "{} holds fewer than 32 bytes",
                    path.display()
                )));
            }
            Ok(token)
        }
        Err(e) => Err(setup(e)),
    }
}
