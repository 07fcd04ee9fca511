//! Starting `tokenledger serve` on a data directory: the key-encryption key
//! is generated only for a new ledger, every sealed signing key must open
//! before the server says ready, files and directories are private, and
//! nothing secret or terminal-specific reaches stderr.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tokenledger_server::config::{ServeArgs, Settings};
use tokenledger_server::serve::{self, ServeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const BOOT: &str = "startup-test-bootstrap-secret-0123456789abcdef";

fn args(data: &Path) -> ServeArgs {
    ServeArgs {
        data_dir: Some(data.to_owned()),
        listen: Some(([127, 0, 0, 1], 0).into()),
        bootstrap_token: Some(BOOT.into()),
        ..ServeArgs::default()
    }
}

fn settings(args: ServeArgs) -> Settings {
    Settings::resolve(args).unwrap()
}

/// `GET path` over plain HTTP/1.1; the whole answer.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

/// A JSON call through the running server's router (in-process).
async fn call(
    state: &tokenledger_server::state::AppState,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let resp = tokenledger_server::app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Starts a server on `data`, creates tenant `acme` with an admin, rotates
/// its keys (a public and a local key sealed under the KEK), and stops.
/// Returns the kids.
async fn ledger_with_keys(args: ServeArgs) -> Vec<String> {
    let running = serve::start(settings(args)).await.expect("first start");
    let st = running.state().clone();
    let (s, b) = call(
        &st,
        "/v1/principals",
        BOOT,
        json!({"name": "admin", "role": "admin", "tenant": "acme"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let admin = b["secret"].as_str().unwrap().to_owned();
    let (s, b) = call(&st, "/v1/keys/rotate", &admin, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let kids: Vec<String> = b["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert!(!kids.is_empty(), "{b}");
    drop(st);
    running.shutdown().await.unwrap();
    kids
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ledger_gets_a_kek_and_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let running = serve::start(settings(args(&data))).await.unwrap();
    let ready = http_get(running.local_addr(), "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let kek = std::fs::read_to_string(data.join("kek")).unwrap();
    assert_eq!(hex::decode(kek.trim()).unwrap().len(), 32);
    #[cfg(unix)]
    {
        assert_eq!(mode(&data), 0o700, "data dir");
        assert_eq!(mode(&data.join("kek")), 0o600, "kek");
        assert_eq!(mode(&data.join("ledger.redb")), 0o600, "ledger");
    }
    running.shutdown().await.unwrap();

    // A ledger file left readable (an older version, a restore) is made
    // private again at start; the KEK is reused, not regenerated.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ledger = data.join("ledger.redb");
        std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o644)).unwrap();
        let running = serve::start(settings(args(&data))).await.unwrap();
        assert_eq!(mode(&ledger), 0o600);
        assert_eq!(std::fs::read_to_string(data.join("kek")).unwrap(), kek);
        running.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kek_on_an_existing_ledger_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ledger_with_keys(args(&data)).await;
    let kek_path = data.join("kek");
    std::fs::remove_file(&kek_path).unwrap();

    let err = match serve::start(settings(args(&data))).await {
        Ok(_) => panic!("started without its KEK"),
        Err(e) => e,
    };
    assert!(matches!(err, ServeError::Setup(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "exists but {} is missing: restore the key-encryption key from your backup",
            kek_path.display()
        )),
        "{msg}"
    );
    assert!(!kek_path.exists(), "no new KEK was generated");

    // Even a ledger without keys yet is not given a new KEK silently.
    let dir2 = tempfile::tempdir().unwrap();
    let data2 = dir2.path().join("data");
    let running = serve::start(settings(args(&data2))).await.unwrap();
    running.shutdown().await.unwrap();
    std::fs::remove_file(data2.join("kek")).unwrap();
    assert!(serve::start(settings(args(&data2))).await.is_err());
    assert!(!data2.join("kek").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_that_does_not_open_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek_a = dir.path().join("kek-a");
    let kek_b = dir.path().join("kek-b");
    std::fs::write(&kek_a, hex::encode([0x11u8; 32])).unwrap();
    std::fs::write(&kek_b, hex::encode([0x22u8; 32])).unwrap();
    let with_kek = |kek: &PathBuf| ServeArgs {
        kek_file: Some(kek.clone()),
        ..args(&data)
    };
    let kids = ledger_with_keys(with_kek(&kek_a)).await;

    // Another KEK: refused, naming the tenant and the key.
    let err = match serve::start(settings(with_kek(&kek_b))).await {
        Ok(_) => panic!("started with a KEK that opens none of the keys"),
        Err(e) => e,
    };
    let ServeError::SealedKey(bad) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(bad.tenant, "acme");
    assert!(kids.contains(&bad.kid), "{bad:?} not among {kids:?}");
    let msg = err.to_string();
    assert!(msg.contains("acme") && msg.contains(&bad.kid), "{msg}");
    assert!(msg.contains("does not open under the key-encryption key"), "{msg}");

    // The refused start released the ledger: the right KEK starts, ready.
    let running = serve::start(settings(with_kek(&kek_a))).await.unwrap();
    let ready = http_get(running.local_addr(), "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    running.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// The binary: what reaches stderr.

fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tokenledger"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TOKENLEDGER_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn help_does_not_print_secret_environment_values() {
    const SECRET: &str = "HELP-SECRET-0123456789abcdef0123456789abcdef";
    let out = bin()
        .args(["serve", "--help"])
        .env("TOKENLEDGER_BOOTSTRAP_TOKEN", SECRET)
        .env("TOKENLEDGER_KEK_FILE", "/run/secrets/HELP-SECRET-kek")
        .env("TOKENLEDGER_CONFIG", "/etc/HELP-SECRET.toml")
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("TOKENLEDGER_BOOTSTRAP_TOKEN"), "{all}");
    assert!(!all.contains("HELP-SECRET"), "{all}");
}

#[test]
fn a_toml_error_does_not_echo_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "bootstrap_tokn = \"SUPERSECRET-0123456789abcdef0123456789\n").unwrap();
    let out = bin().args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("config file {}:", config.display())), "{err}");
    assert!(err.contains("at line 1, column"), "{err}");
    assert!(!err.contains("SUPERSECRET"), "{err}");
}

#[test]
fn a_refused_start_exits_non_zero_without_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // A ledger without its KEK.
    std::fs::write(data.join("ledger.redb"), b"").unwrap();
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("TOKENLEDGER_BOOTSTRAP_TOKEN", BOOT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restore the key-encryption key from your backup"), "{err}");
    assert!(err.contains("ERROR"), "the error is logged: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "stderr is not a terminal: no ANSI codes: {err:?}"
    );
    assert!(!data.join("kek").exists());
}

/// Runs the binary until it logs `ready`, stops it with SIGTERM, and returns
/// its exit status and stderr.
#[cfg(unix)]
fn run_until_ready(cmd: &mut std::process::Command) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 || std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("exited or timed out before ready: {seen}");
        }
        seen.push_str(&line);
        if line.contains(" ready") {
            break;
        }
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    stderr.read_to_string(&mut seen).unwrap();
    (child.wait().unwrap(), seen)
}

#[cfg(unix)]
#[test]
fn exposed_kek_file_and_data_dir_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kek = dir.path().join("kek.hex");
    std::fs::write(&kek, hex::encode([0x33u8; 32])).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (status, err) = run_until_ready(
        bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--kek-file")
            .arg(&kek)
            .env("TOKENLEDGER_BOOTSTRAP_TOKEN", BOOT),
    );
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        err.contains("the key-encryption key file is accessible to group or others"),
        "{err}"
    );
    assert!(err.contains("data dir is accessible to group or others"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert_eq!(mode(&data.join("ledger.redb")), 0o600);
    assert!(!err.contains(&hex::encode([0x33u8; 32])), "the KEK is never logged");

    // Private ones are not.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (status, err) = run_until_ready(
        bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--kek-file")
            .arg(&kek)
            .env("TOKENLEDGER_BOOTSTRAP_TOKEN", BOOT),
    );
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("accessible to group or others"), "{err}");
}
