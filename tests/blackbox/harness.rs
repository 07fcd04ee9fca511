//! The server under test and how to talk to it.

use serde_json::{Value, json};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The bootstrap secret every test server starts with (≥ 32 bytes).
pub const BOOTSTRAP: &str = "blackbox-bootstrap-secret-0123456789abcdef";

/// How long a server may take to become ready, or to exit after SIGTERM.
/// Generous: the machine is shared and the binary may be a debug build.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The issuer every test appends as.
pub const ISSUER: &str = "bb-issuer";

/// The `tokenledger` binary under test (see the crate docs): `TOKENLEDGER_BIN`
/// or a `cargo build` in the test's own profile, done once per process.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TOKENLEDGER_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "TOKENLEDGER_BIN={} is not a file", p.display());
            return p;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let workspace = env!("CARGO_MANIFEST_DIR");
        let release = !cfg!(debug_assertions);
        let mut build = Command::new(&cargo);
        build
            .current_dir(workspace)
            .args(["build", "-q", "-p", "tokenledger-server", "--bin", "tokenledger"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build of tokenledger failed: {status}");
        let meta = Command::new(&cargo)
            .current_dir(workspace)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .expect("running cargo metadata");
        assert!(meta.status.success(), "cargo metadata failed: {}", meta.status);
        let meta: Value = serde_json::from_slice(&meta.stdout).expect("cargo metadata JSON");
        let target = meta["target_directory"]
            .as_str()
            .expect("target_directory in cargo metadata");
        let exe = Path::new(target)
            .join(if release { "release" } else { "debug" })
            .join(format!("tokenledger{}", std::env::consts::EXE_SUFFIX));
        assert!(exe.is_file(), "no binary at {}", exe.display());
        exe
    })
}

/// Serializes the heavy tests: the machine has few cores, and two load tests
/// at once would only slow each other down.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A `tokenledger serve` process on a loopback port, with its data dir in a
/// temporary directory that lives as long as this value. Dropping it kills
/// the process.
pub struct Server {
    tmp: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
    port: u16,
    starts: usize,
}

impl Server {
    /// Starts a server on a fresh data dir with extra `serve` flags and waits
    /// until `/readyz` answers 200.
    pub async fn start(extra: &[&str]) -> Server {
        tokio::task::spawn_blocking(binary).await.expect("locating the binary");
        let tmp = tempfile::Builder::new()
            .prefix("tl-blackbox-")
            .tempdir()
            .expect("temp dir");
        let mut s = Server {
            tmp,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            port: 0,
            starts: 0,
        };
        s.launch().await;
        s
    }

    /// The data directory (the same across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.tmp.path().join("server.log")
    }

    /// `http://127.0.0.1:PORT` of the running process.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id of the running process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// The last lines of the server's log (stdout and stderr of every start).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Spawns the process on a new free port and waits for readiness. A port
    /// taken between choosing and binding it is retried with another.
    async fn launch(&mut self) {
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            self.port = free_port();
            self.starts += 1;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("server log file");
            let child = Command::new(binary())
                .arg("serve")
                .arg("--data-dir")
                .arg(self.data_dir())
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .args(&self.extra)
                .env("TOKENLEDGER_BOOTSTRAP_TOKEN", BOOTSTRAP)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .expect("spawning tokenledger");
            self.child = Some(child);
            match self.wait_ready().await {
                Ok(()) => return,
                Err(why) => {
                    last_failure = why;
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
            }
        }
        panic!(
            "tokenledger did not become ready (start #{}): {last_failure}\n--- server log ---\n{}",
            self.starts,
            self.log_tail(40)
        );
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let url = format!("{}/readyz", self.base());
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("the process exited with {status} before it was ready"));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return Ok(());
            }
            if t0.elapsed() > PATIENCE {
                return Err(format!("/readyz was not 200 within {PATIENCE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: SIGKILL (what `Child::kill` sends on unix), then reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("server is running");
        c.kill().expect("SIGKILL");
        c.wait().expect("reaping the killed server")
    }

    /// Sends SIGTERM (through `kill -TERM`, no unsafe code) and returns at once.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("running kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid());
    }

    /// Waits (at most `limit`) for the process to exit and reaps it; `None`
    /// if it is still running then.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            let c = self.child.as_mut().expect("server was started");
            if let Some(status) = c.try_wait().expect("polling the server process") {
                self.child = None;
                return Some(status);
            }
            if t0.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the binary again on the same data dir (on a new port) and
    /// waits for readiness. The previous process must have exited.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a server that is still running");
        self.launch().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTP answer: status and body (JSON, or the raw text as a JSON string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

/// A thin JSON client bound to one server address.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    /// A client for `base` with one connection pool.
    pub fn new(base: String) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        Api { http, base }
    }

    /// One request; `Err` when no HTTP answer came back.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Answer, reqwest::Error> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await?;
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }

    /// A request that must get an answer with one of `ok` statuses.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        ok: &[u16],
    ) -> Value {
        let a = self
            .call(method.clone(), path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
        assert!(ok.contains(&a.status), "{method} {path} -> {} {}", a.status, a.body);
        a.body
    }

    /// Every event of the caller's tenant's `$all`, in order, following `next`.
    pub async fn read_all(&self, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let page = self
                .expect(
                    reqwest::Method::GET,
                    &format!("/v1/events?from={from}&limit=1000"),
                    token,
                    None,
                    &[200],
                )
                .await;
            let events = page["events"].as_array().expect("events array in a $all page").clone();
            if events.is_empty() {
                return out;
            }
            let next = page["next"].as_u64().expect("next in a $all page");
            assert!(next > from, "$all paging does not advance: from={from} next={next}");
            from = next;
            out.extend(events);
        }
    }
}

/// The credentials of the tenant every test uses.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub admin: String,
    pub issuer: String,
}

/// Creates tenant `default`'s admin (through the bootstrap secret) and the
/// issuer [`ISSUER`] with a policy that allows `external` issuance for
/// `api://orders`.
pub async fn setup(server: &Server) -> Tenant {
    let api = Api::new(server.base());
    let post = reqwest::Method::POST;
    let admin = api
        .expect(
            post.clone(),
            "/v1/principals",
            BOOTSTRAP,
            Some(&json!({"name": "admin-default", "role": "admin", "tenant": "default"})),
            &[200, 201],
        )
        .await["secret"]
        .as_str()
        .expect("admin secret")
        .to_owned();
    let issuer = api
        .expect(
            post,
            "/v1/principals",
            &admin,
            Some(&json!({"name": ISSUER, "role": "issuer", "tenant": "default"})),
            &[200, 201],
        )
        .await["secret"]
        .as_str()
        .expect("issuer secret")
        .to_owned();
    let policy = json!({
        "audiences": {"api://orders": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600}},
        "formats": ["external"],
    });
    api.expect(
        reqwest::Method::PUT,
        &format!("/v1/clients/{ISSUER}/policy"),
        &admin,
        Some(&policy),
        &[200, 201, 204],
    )
    .await;
    Tenant { admin, issuer }
}

/// Now (UTC, whole seconds) plus `offset_s`, as RFC 3339 with `Z`.
pub fn now_rfc3339(offset_s: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_s))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A `TokenIssued` for `jti`, as the issuer appends it (format `external`).
pub fn token_issued(jti: &str, subject: &str) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(),
        "event_type": "TokenIssued",
        "data": {
            "token_id": jti, "subject": subject, "audience": "api://orders", "scope": "orders:read",
            "issued_at": now_rfc3339(0), "expires_at": now_rfc3339(300), "not_before": now_rfc3339(0),
            "format": "external",
        },
        "metadata": {},
    })
}

/// A `TokenRevoked` of `jti`.
pub fn token_revoked(jti: &str) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(),
        "event_type": "TokenRevoked",
        "data": {"token_id": jti, "reason": "blackbox"},
        "metadata": {},
    })
}
