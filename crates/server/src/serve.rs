//! `tokenledger serve`: open the store, rebuild the registry from the log,
//! listen (HTTPS with rustls, or plain HTTP on loopback), and on SIGTERM
//! drain in-flight requests, flush pending commits and write the views
//! snapshot before exiting.

use crate::api;
use crate::config::Settings;
use crate::state::{AppState, UnopenableKey};
use axum_server::Handle;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokenledger_domain::clock::{Clock, SystemClock};
use tokenledger_store::{EventStore, RedbOptions, RedbStore};
use tokio::task::JoinHandle;

/// The ledger file in the data directory.
pub const LEDGER_FILE: &str = "ledger.redb";
/// The analytics projection's checkpoint directory, inside the data
/// directory (see `tokenledger_analytics::checkpoint`).
pub const ANALYTICS_DIR: &str = "analytics";
/// The generated key-encryption key in the data directory.
pub const KEK_FILE: &str = "kek";

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory, bootstrap token, key-encryption key or TLS files
    /// could not be used.
    #[error("{0}")]
    Setup(String),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] tokenledger_store::StoreError),
    /// A signing key in the log does not open under the key-encryption key.
    #[error("{0}")]
    SealedKey(#[from] UnopenableKey),
    /// Listening or serving failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(settings: Settings) -> Result<(), ServeError> {
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    let running = tokio::select! {
        r = start(settings) => r?,
        _ = &mut stop => {
            // Nothing was accepted yet (the API answers 503 until ready).
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    stop.await;
    running.shutdown().await
}

/// A started server: listening, caught up with the log, every signing key
/// opened, ready. Stop it with [`Running::shutdown`].
pub struct Running {
    state: AppState,
    store: Arc<dyn EventStore>,
    addr: SocketAddr,
    handle: Handle<SocketAddr>,
    server: JoinHandle<std::io::Result<()>>,
    metrics: Option<(SocketAddr, Handle<SocketAddr>, JoinHandle<std::io::Result<()>>)>,
    scheduler: JoinHandle<()>,
    rules: JoinHandle<()>,
    webhooks: JoinHandle<()>,
}

/// Listeners that are up while the server starts.
struct Listeners {
    addr: SocketAddr,
    handle: Handle<SocketAddr>,
    server: JoinHandle<std::io::Result<()>>,
    metrics: Option<(SocketAddr, Handle<SocketAddr>, JoinHandle<std::io::Result<()>>)>,
}

impl Listeners {
    /// Stops at once (a start that failed) and releases the store.
    async fn abort(self, store: &Arc<dyn EventStore>) {
        self.handle.shutdown();
        let _ = self.server.await;
        if let Some((_, h, task)) = self.metrics {
            h.shutdown();
            let _ = task.await;
        }
        store.close().await;
    }
}

/// Opens the store, listens (503 until ready), catches up with the log,
/// checks that every signing key opens under the key-encryption key, and
/// marks the state ready. A failure after listening stops the listeners
/// and closes the store before it is returned.
pub async fn start(settings: Settings) -> Result<Running, ServeError> {
    let settings = Arc::new(settings);
    prepare_data_dir(&settings.data_dir)?;
    let bootstrap = bootstrap_secret(&settings)?;
    let ledger = settings.data_dir.join(LEDGER_FILE);
    let new_ledger = !ledger
        .try_exists()
        .map_err(|e| ServeError::Setup(format!("ledger {}: {e}", ledger.display())))?;
    // The KEK before the store: a new ledger file is only ever created once
    // its KEK is on disk.
    let kek = load_kek(&settings, new_ledger)?;
    if new_ledger {
        create_private_file(&ledger)?;
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut opts = RedbOptions::new(ledger.clone());
    opts.clock = clock.clone();
    let store = RedbStore::open(opts)?;
    restrict_file(&ledger);
    let store: Arc<dyn EventStore> = Arc::new(store);
    let state = AppState::new(store.clone(), settings.clone(), clock, &bootstrap, kek);
    if let Some(e) = state.rules.file_error() {
        store.close().await;
        return Err(ServeError::Setup(e.to_owned()));
    }
    state.projections.enable_snapshots(crate::projections::SnapshotPolicy {
        path: crate::projections::snapshot_path(&settings.data_dir),
        every_events: settings.snapshot_every_events,
        every_seconds: settings.snapshot_every_seconds,
    });
    state
        .analytics
        .enable_checkpoints(tokenledger_analytics::CheckpointPolicy {
            dir: settings.data_dir.join(ANALYTICS_DIR),
            every_events: settings.snapshot_every_events,
            every_seconds: settings.snapshot_every_seconds,
        });

    let listeners = match listen(&settings, &state).await {
        Ok(l) => l,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let addr = listeners.addr;
    let scheme = if settings.tls_cert.is_some() { "https" } else { "http" };
    tracing::info!(listen = %addr, scheme, data_dir = %settings.data_dir.display(), "listening; catching up with the log");

    // Views reach the head of the log before the API answers (503 until
    // then), and every sealed key must open before the server says ready.
    let checked = async {
        let head = state.catch_up_views().await?;
        let keys = state.check_sealed_keys()?;
        Ok::<_, ServeError>((head, keys))
    }
    .await;
    let (head, keys) = match checked {
        Ok(r) => r,
        Err(e) => {
            listeners.abort(&store).await;
            return Err(e);
        }
    };
    state.mark_ready();
    let _analytics = state.follow_analytics();
    let scheduler = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                if let Err(e) = state.keyring.tick(&state).await {
                    tracing::error!(error = %e, "key scheduler step failed");
                }
                crate::api::cutoffs::expire_due(&state).await;
            }
        })
    };
    // Cutoff rules run on their own task, off the writer's path.
    let rules = crate::rules::spawn(state.clone());
    // Alert webhooks deliver on their own tasks too; cursors persist in
    // <data-dir>/webhooks.
    state
        .webhooks
        .enable_persistence(settings.data_dir.join(crate::webhooks::CURSOR_DIR));
    let webhooks = crate::webhooks::spawn(state.clone());
    tracing::info!(head = head.0, keys, "ready");
    let Listeners {
        addr: _,
        handle,
        server,
        metrics,
    } = listeners;
    Ok(Running {
        state,
        store,
        addr,
        handle,
        server,
        metrics,
        scheduler,
        rules,
        webhooks,
    })
}

/// Binds the API listener (and the metrics listener, if any).
async fn listen(settings: &Arc<Settings>, state: &AppState) -> Result<Listeners, ServeError> {
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
    let metrics = match settings.metrics_listen {
        Some(maddr) => {
            let h: Handle<SocketAddr> = Handle::new();
            let app = api::metrics_app(state.clone());
            let h2 = h.clone();
            let task =
                tokio::spawn(async move { axum_server::bind(maddr).handle(h2).serve(app.into_make_service()).await });
            let Some(a) = h.listening().await else {
                handle.shutdown();
                let _ = server.await;
                return Err(match task.await {
                    Ok(Err(e)) => ServeError::Io(e),
                    _ => ServeError::Setup(format!("could not listen on {maddr}")),
                });
            };
            tracing::info!(listen = %a, "metrics listener (unauthenticated)");
            Some((a, h, task))
        }
        None => None,
    };
    Ok(Listeners {
        addr,
        handle,
        server,
        metrics,
    })
}

impl Running {
    /// The address the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the metrics listener, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(a, _, _)| *a)
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops answering (503), drains in-flight requests for at most
    /// `shutdown_grace_seconds`, and flushes pending commits.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        tracing::info!("shutting down: draining in-flight requests");
        self.state.ready.store(false, Ordering::Release);
        self.handle
            .graceful_shutdown(Some(Duration::from_secs(self.state.settings.shutdown_grace_seconds)));
        if let Some((_, h, _)) = &self.metrics {
            h.graceful_shutdown(Some(Duration::from_secs(1)));
        }
        let result = match self.server.await {
            Ok(r) => r.map_err(ServeError::from),
            Err(e) => {
                tracing::error!(error = %e, "server task failed");
                Ok(())
            }
        };
        if let Some((_, _, task)) = self.metrics {
            let _ = task.await;
        }
        self.scheduler.abort();
        let _ = self.scheduler.await;
        self.rules.abort();
        let _ = self.rules.await;
        self.webhooks.abort();
        let _ = self.webhooks.await;
        self.store.close().await;
        // Every commit is folded now: the final snapshot has them all.
        let projections = self.state.projections.clone();
        let _ = tokio::task::spawn_blocking(move || projections.shutdown()).await;
        // The analytics projection gets a moment to fold the last commits,
        // then checkpoints what it has (it resumes from there either way).
        let analytics = self.state.analytics.clone();
        if let Ok(head) = self.store.head().await {
            analytics.wait_for(head.0, Duration::from_secs(5)).await;
        }
        match tokio::task::spawn_blocking(move || analytics.write_checkpoint()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "analytics checkpoint at shutdown failed"),
            Err(e) => tracing::error!(error = %e, "analytics checkpoint at shutdown failed"),
            Ok(Ok(_)) => {}
        }
        tracing::info!("pending commits flushed; views snapshot and analytics checkpoint written; stopped");
        result
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when it is first awaited: a signal that arrives while the
/// server starts is not lost (nor does it kill the process unhandled).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Creates the data directory with mode 0700; a pre-existing one that
/// group or others may use is warned about (it holds the ledger, the
/// bootstrap token and by default the key-encryption key).
fn prepare_data_dir(dir: &Path) -> Result<(), ServeError> {
    let existed = dir.is_dir();
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .map_err(|e| ServeError::Setup(format!("data dir {}: {e}", dir.display())))?;
    if existed {
        warn_if_exposed(dir, "data dir");
    }
    Ok(())
}

/// The permission bits of `path` that group or others hold, if any (unix).
pub fn exposed_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Logs a warning when group or others have any access to `path`.
fn warn_if_exposed(path: &Path, what: &str) {
    if let Some(mode) = exposed_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "{what} is accessible to group or others; restrict it to the server's user (chmod go-rwx)"
        );
    }
}

/// Creates an empty file with mode 0600 (redb initializes an empty file as
/// a new database), so the ledger is never readable by others, not even
/// for a moment.
fn create_private_file(path: &Path) -> Result<(), ServeError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(ServeError::Setup(format!("ledger {}: {e}", path.display()))),
    }
}

/// Sets a file to mode 0600 when group or others have access (unix): a
/// ledger created by an older version, or restored with a loose mode. A
/// failure is logged.
fn restrict_file(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if exposed_mode(path).is_some()
            && let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %path.display(), error = %e, "could not restrict the file to mode 0600");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The key-encryption key: from `--kek-file`, or `<data-dir>/kek`. The
/// latter is generated (exclusively, mode 0600, 256 random bits) only for a
/// new ledger: when the ledger file exists but its KEK does not, every
/// sealed key would be lost, so the server refuses to start. Never a
/// built-in default.
pub fn load_kek(settings: &Settings, new_ledger: bool) -> Result<tokenledger_tokens::seal::Kek, ServeError> {
    let (path, generated) = match &settings.kek_file {
        Some(p) => (p.clone(), false),
        None => (settings.data_dir.join(KEK_FILE), true),
    };
    let setup = |e: String| ServeError::Setup(format!("key-encryption key {}: {e}", path.display()));
    let parse = |text: &str| -> Result<tokenledger_tokens::seal::Kek, ServeError> {
        let raw = hex::decode(text.trim()).map_err(|_| setup("must be 32 bytes in hex".into()))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| setup("must be 32 bytes in hex".into()))?;
        Ok(tokenledger_tokens::seal::Kek::from_bytes(bytes))
    };
    let exists = path.try_exists().map_err(|e| setup(e.to_string()))?;
    if exists || !generated {
        let kek = parse(&std::fs::read_to_string(&path).map_err(|e| setup(e.to_string()))?)?;
        warn_if_exposed(&path, "the key-encryption key file");
        return Ok(kek);
    }
    if !new_ledger {
        return Err(ServeError::Setup(format!(
            "the ledger {} exists but {} is missing: restore the key-encryption key from your backup \
             (or give --kek-file); a new one would not open the signing keys sealed in the ledger",
            settings.data_dir.join(LEDGER_FILE).display(),
            path.display()
        )));
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
    tracing::info!(path = %path.display(), "generated the key-encryption key for a new ledger; back it up");
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
            warn_if_exposed(&path, "the bootstrap token file");
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
