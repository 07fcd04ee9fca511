//! Dev support shared by the black-box tests (`tests/`), the benches
//! (`benches/`) and the validator's tests: they all start the real
//! `tokenledger` binary and talk to it over HTTP. Only dev-dependencies may
//! use this crate; nothing in it is production code.
//!
//! * [`binary`]: the binary under test, `TOKENLEDGER_BIN` or a `cargo build`;
//! * [`Server`]: a `tokenledger serve` process on a free loopback port with a
//!   temporary data dir and a bootstrap secret: wait for `/readyz`,
//!   `kill -9`, SIGTERM, restart on the same data dir;
//! * [`request`], [`admin_via_bootstrap`], [`create_principal`],
//!   [`set_policy`]: the HTTP setup of a tenant;
//! * [`machine`]: the description of the machine the benches print.

use serde_json::Value;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a starting server may take to answer 200 on `/readyz`.
/// Generous: the machine is shared and the binary may be a debug build.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// The cargo profile the binary is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `target/debug`, `cargo build`.
    Debug,
    /// `target/release`, `cargo build --release`.
    Release,
}

impl Profile {
    /// The profile a caller was built in, given its `cfg!(debug_assertions)`:
    /// `Release` when debug assertions are off (`cargo test --release`).
    pub fn matching(debug_assertions: bool) -> Profile {
        if debug_assertions {
            Profile::Debug
        } else {
            Profile::Release
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// The `tokenledger` binary under test, located once per process and profile:
///
/// 1. `TOKENLEDGER_BIN`, if set, is the path of the binary (nothing is built);
/// 2. otherwise `cargo build -q --bins --tests` runs in the workspace (the
///    default members, as `cargo test` builds them: the same feature set,
///    so the binary `cargo test` already built is fresh and nothing
///    compiles again; `-p tokenledger-server --bin tokenledger --release`
///    for [`Profile::Release`], which the benches use), and the
///    binary is `<target_directory>/{debug|release}/tokenledger`, where
///    `target_directory` comes from `cargo metadata --format-version 1
///    --no-deps` (so `CARGO_TARGET_DIR` is honoured).
///
/// Blocking; from async code call it through `tokio::task::spawn_blocking`.
pub fn binary(profile: Profile) -> &'static Path {
    static DEBUG: OnceLock<PathBuf> = OnceLock::new();
    static RELEASE: OnceLock<PathBuf> = OnceLock::new();
    let cell = match profile {
        Profile::Debug => &DEBUG,
        Profile::Release => &RELEASE,
    };
    cell.get_or_init(|| locate(profile))
}

fn locate(profile: Profile) -> PathBuf {
    if let Some(p) = std::env::var_os("TOKENLEDGER_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TOKENLEDGER_BIN={} is not a file", p.display());
        return p;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    // The workspace root (not this crate's directory, where cargo would
    // select this package alone).
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut build = Command::new(&cargo);
    build.current_dir(&workspace);
    match profile {
        // A `-p` selection has another feature set than `cargo test`'s
        // (dev-dependencies unify features), which would compile the
        // DataFusion stack a second time.
        Profile::Debug => build.args(["build", "-q", "--bins", "--tests"]),
        Profile::Release => build.args([
            "build",
            "-q",
            "-p",
            "tokenledger-server",
            "--bin",
            "tokenledger",
            "--release",
        ]),
    };
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "cargo build of tokenledger failed: {status}");
    let meta = Command::new(&cargo)
        .current_dir(&workspace)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .expect("running cargo metadata");
    assert!(meta.status.success(), "cargo metadata failed: {}", meta.status);
    let meta: Value = serde_json::from_slice(&meta.stdout).expect("cargo metadata JSON");
    let target = meta["target_directory"]
        .as_str()
        .expect("target_directory in cargo metadata");
    let exe = Path::new(target)
        .join(profile.dir())
        .join(format!("tokenledger{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.is_file(), "no binary at {}", exe.display());
    exe
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// How to start a [`Server`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The profile [`binary`] builds in.
    pub profile: Profile,
    /// `TOKENLEDGER_BOOTSTRAP_TOKEN` of the process (≥ 32 bytes).
    pub bootstrap: String,
    /// The prefix of the temporary directory holding the data dir and the log.
    pub tmp_prefix: String,
    /// Extra `serve` flags.
    pub extra_args: Vec<String>,
}

impl Options {
    /// Options with no extra `serve` flags.
    pub fn new(profile: Profile, bootstrap: &str, tmp_prefix: &str) -> Options {
        Options {
            profile,
            bootstrap: bootstrap.to_owned(),
            tmp_prefix: tmp_prefix.to_owned(),
            extra_args: Vec::new(),
        }
    }

    /// These options with extra `serve` flags.
    pub fn with_args(mut self, args: &[&str]) -> Options {
        self.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }
}

/// A `tokenledger serve` process on a loopback port, with its data dir in a
/// temporary directory that lives as long as this value. Its stdout and
/// stderr (of every start) go to [`Server::log_path`], with `RUST_LOG=warn`.
/// Dropping it kills the process.
pub struct Server {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    opts: Options,
    child: Option<Child>,
    port: u16,
    starts: usize,
}

impl Server {
    fn new(bin: PathBuf, opts: Options) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix(&opts.tmp_prefix)
            .tempdir()
            .expect("temp dir");
        Server {
            tmp,
            bin,
            opts,
            child: None,
            port: 0,
            starts: 0,
        }
    }

    /// Starts a server on a fresh data dir and a free port, and waits until
    /// `/readyz` answers 200. A port taken between choosing and binding it
    /// is retried with another (three attempts in all).
    pub async fn start(opts: Options) -> Server {
        let profile = opts.profile;
        let bin = tokio::task::spawn_blocking(move || binary(profile))
            .await
            .expect("locating the binary");
        let mut s = Server::new(bin.to_owned(), opts);
        s.launch_on_free_ports().await;
        s
    }

    /// [`Server::start`] without an async runtime: one attempt, readiness
    /// polled with plain blocking `GET /readyz` requests.
    pub fn start_blocking(opts: Options) -> Server {
        let bin = binary(opts.profile).to_owned();
        let mut s = Server::new(bin, opts);
        s.port = free_port();
        s.spawn();
        let t0 = Instant::now();
        loop {
            if let Some(status) = s.exited() {
                panic!("tokenledger exited with {status} before it was ready:\n{}", s.log());
            }
            if raw_get_status(s.port, "/readyz") == Some(200) {
                return s;
            }
            assert!(
                t0.elapsed() < READY_WITHIN,
                "/readyz not 200 within {READY_WITHIN:?}:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The binary the process runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The data directory (the same across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The log file: stdout and stderr of every start, appended.
    pub fn log_path(&self) -> PathBuf {
        self.tmp.path().join("server.log")
    }

    /// The whole log (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `http://127.0.0.1:PORT` of the (last) process.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id of the running process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Spawns the process on the data dir and `self.port`, appending to the log.
    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log file");
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.opts.extra_args)
            .env("TOKENLEDGER_BOOTSTRAP_TOKEN", &self.opts.bootstrap)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning tokenledger");
        self.child = Some(child);
    }

    /// The exit status, if the process has exited (it stays to be reaped).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Spawns the process on a new free port and waits for readiness, three
    /// attempts at most.
    async fn launch_on_free_ports(&mut self) {
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            self.port = free_port();
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => return,
                Err(why) => {
                    last_failure = why;
                    self.kill();
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
            if let Some(status) = self.exited() {
                return Err(format!("the process exited with {status} before it was ready"));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return Ok(());
            }
            if t0.elapsed() > READY_WITHIN {
                return Err(format!("/readyz was not 200 within {READY_WITHIN:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: SIGKILL (what `Child::kill` sends on unix), then reaps it.
    /// The server must be running.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("server is running");
        c.kill().expect("SIGKILL");
        c.wait().expect("reaping the killed server")
    }

    /// `kill -9` and reap, if the process is running; nothing otherwise.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

    /// Starts the binary again on the same data dir, on a new free port (see
    /// [`Server::start`]), and waits for readiness. The previous process
    /// must have exited.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a server that is still running");
        self.launch_on_free_ports().await;
    }

    /// Starts the binary again on the same data dir and the same port, so
    /// [`Server::base`] is unchanged, and waits for readiness (one attempt).
    /// The previous process must have been killed.
    pub async fn restart_on_same_port(&mut self) {
        assert!(self.child.is_none(), "restart of a server that is still running");
        self.spawn();
        if let Err(why) = self.wait_ready().await {
            panic!("tokenledger did not become ready again: {why}\n{}", self.log());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status of a plain `GET path` on the loopback port (no async runtime).
fn raw_get_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The statuses a setup request must answer with.
#[derive(Debug, Clone, Copy)]
pub enum Statuses {
    /// Any 2xx.
    Success,
    /// One of these.
    OneOf(&'static [u16]),
}

impl Statuses {
    fn allow(self, status: u16) -> bool {
        match self {
            Statuses::Success => (200..300).contains(&status),
            Statuses::OneOf(ok) => ok.contains(&status),
        }
    }
}

/// One request (bearer `token`, JSON `body` if any) that must answer one of
/// `ok`; the JSON body of the answer (`Null` if it is not JSON).
pub async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
    ok: Statuses,
) -> Value {
    let mut rb = http.request(method.clone(), url).bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let resp = rb.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert!(ok.allow(status), "{method} {url} -> {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Creates the admin `name` of `tenant` through the bootstrap secret
/// (`POST /v1/principals`); its secret.
pub async fn admin_via_bootstrap(
    http: &reqwest::Client,
    base: &str,
    bootstrap: &str,
    name: &str,
    tenant: &str,
    ok: Statuses,
) -> String {
    let body = serde_json::json!({"name": name, "role": "admin", "tenant": tenant});
    create_principal(http, base, bootstrap, &body, ok).await
}

/// Creates a principal (`POST /v1/principals` with `principal`, e.g.
/// `{"name", "role"}`) as `token`; its secret.
pub async fn create_principal(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    principal: &Value,
    ok: Statuses,
) -> String {
    let url = format!("{base}/v1/principals");
    let answer = request(http, reqwest::Method::POST, &url, token, Some(principal), ok).await;
    answer["secret"].as_str().expect("a secret").to_owned()
}

/// Sets the policy of client `client` (`PUT /v1/clients/{client}/policy`) as
/// the admin `admin`.
pub async fn set_policy(http: &reqwest::Client, base: &str, admin: &str, client: &str, policy: &Value, ok: Statuses) {
    let url = format!("{base}/v1/clients/{client}/policy");
    request(http, reqwest::Method::PUT, &url, admin, Some(policy), ok).await;
}

/// A tenant to set up with [`issuer_and_validator`].
#[derive(Debug, Clone)]
pub struct TenantSpec<'a> {
    /// The bootstrap secret the server was started with.
    pub bootstrap: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The name of its admin.
    pub admin: &'a str,
    /// The name of its issuer, the client the policy is for.
    pub issuer: &'a str,
    /// The name of its validator.
    pub validator: &'a str,
    /// The issuer's client policy.
    pub policy: Value,
}

/// The secrets of the principals [`issuer_and_validator`] created.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The tenant's admin.
    pub admin: String,
    /// The issuer.
    pub issuer: String,
    /// The validator.
    pub validator: String,
}

/// Sets up `spec.tenant`: its admin (through the bootstrap secret), an
/// issuer with the client policy `spec.policy` and a validator, each request
/// answering 2xx.
pub async fn issuer_and_validator(http: &reqwest::Client, base: &str, spec: &TenantSpec<'_>) -> Secrets {
    let ok = Statuses::Success;
    let admin = admin_via_bootstrap(http, base, spec.bootstrap, spec.admin, spec.tenant, ok).await;
    let issuer = serde_json::json!({"name": spec.issuer, "role": "issuer"});
    let issuer = create_principal(http, base, &admin, &issuer, ok).await;
    let validator = serde_json::json!({"name": spec.validator, "role": "validator"});
    let validator = create_principal(http, base, &admin, &validator, ok).await;
    set_policy(http, base, &admin, spec.issuer, &spec.policy, ok).await;
    Secrets {
        admin,
        issuer,
        validator,
    }
}

/// The machine, as the benches print it: cores, CPU model, kernel, and the
/// filesystem holding `dir`, which is described as `dir_label` (e.g.
/// `"temp dir"`):
///
/// ```text
/// - machine: 2 cores (available_parallelism), CPU <model>, Linux <release>
/// - <dir_label> <dir> on <device> on <mount point> type <fs> (<options>)
/// ```
pub fn machine(dir: &Path, dir_label: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    // The mount with the longest mount point that contains `dir`.
    let mount = std::fs::read_to_string("/proc/mounts").ok().and_then(|mounts| {
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4 && dir.starts_with(f[1]))
                    .then(|| (f[1].len(), format!("{} on {} type {} ({})", f[0], f[1], f[2], f[3])))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, m)| m)
    });
    format!(
        "- machine: {cores} cores (available_parallelism), CPU {cpu}, Linux {kernel}\n- {dir_label} {} on {}",
        dir.display(),
        mount.unwrap_or_else(|| "an unknown filesystem".into())
    )
}

/// tokio's worker threads (`tokio-rt-worker`, or `tokio-runtime-worker` in
/// older versions), as `/proc` names them: a prefix for [`thread_time`].
pub const TOKIO_THREADS: &str = "tokio-";
/// The store's writer thread, `tokenledger-writer` cut to the 15 bytes
/// `/proc` shows: a prefix for [`thread_time`].
pub const WRITER_THREAD: &str = "tokenledger-wri";

/// Scheduler time of a set of threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadTime {
    /// Running on a CPU.
    pub on_cpu: Duration,
    /// Runnable, waiting for a CPU.
    pub runnable: Duration,
}

impl std::ops::Sub for ThreadTime {
    type Output = ThreadTime;
    fn sub(self, rhs: ThreadTime) -> ThreadTime {
        ThreadTime {
            on_cpu: self.on_cpu.saturating_sub(rhs.on_cpu),
            runnable: self.runnable.saturating_sub(rhs.runnable),
        }
    }
}

impl std::ops::Add for ThreadTime {
    type Output = ThreadTime;
    fn add(self, rhs: ThreadTime) -> ThreadTime {
        ThreadTime {
            on_cpu: self.on_cpu + rhs.on_cpu,
            runnable: self.runnable + rhs.runnable,
        }
    }
}

/// Summed scheduler time of the threads of `pid` (this process for `None`)
/// whose name starts with `prefix`, from `/proc/*/task/*/schedstat` (zero
/// where `/proc` has no schedstat).
pub fn thread_time(pid: Option<u32>, prefix: &str) -> ThreadTime {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let mut sum = ThreadTime::default();
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return sum;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
        sum.on_cpu += Duration::from_nanos(fields.next().unwrap_or(0));
        sum.runnable += Duration::from_nanos(fields.next().unwrap_or(0));
    }
    sum
}

/// `n` with its digits grouped by threes: `1,234,567`.
pub fn fmt_int(n: usize) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).expect("ASCII digits"))
        .collect();
    groups.join(",")
}

/// A rate, rounded to a whole number, as [`fmt_int`] prints it.
pub fn fmt_rate(r: f64) -> String {
    fmt_int(r.round() as usize)
}

/// The positive finite number in the env var `name`, or `default` if it is
/// not set. Panics on anything else.
pub fn positive_env(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => v,
            _ => panic!("{name} must be a positive number, not {s:?}"),
        },
    }
}
