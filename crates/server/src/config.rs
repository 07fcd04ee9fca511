//! Every setting of `tokenledger serve`, in one place.
//!
//! Each setting is read, in this order of precedence, from the command-line
//! flag, the `TOKENLEDGER_*` environment variable, the TOML file given by
//! `--config` / `TOKENLEDGER_CONFIG` (keys are the flag names with `_`), and
//! the default below.
//!
//! | flag / TOML key | variable | default | meaning |
//! |---|---|---|---|
//! | `--data-dir` / `data_dir` | `TOKENLEDGER_DATA_DIR` | `./data` | the ledger file, bootstrap token |
//! | `--listen` / `listen` | `TOKENLEDGER_LISTEN` | `127.0.0.1:8080` | address of the API |
//! | `--tls-cert` / `tls_cert` | `TOKENLEDGER_TLS_CERT` | none | PEM certificate chain: serve HTTPS |
//! | `--tls-key` / `tls_key` | `TOKENLEDGER_TLS_KEY` | none | PEM private key |
//! | `--allow-plain-http` / `allow_plain_http` | `TOKENLEDGER_ALLOW_PLAIN_HTTP` | `false` | plain HTTP on a non-loopback address |
//! | `--metrics-listen` / `metrics_listen` | `TOKENLEDGER_METRICS_LISTEN` | none | second, unauthenticated listener for `/metrics` |
//! | `--max-body-bytes` / `max_body_bytes` | `TOKENLEDGER_MAX_BODY_BYTES` | `1048576` | request body limit (413 above) |
//! | `--max-events-per-append` / `max_events_per_append` | `TOKENLEDGER_MAX_EVENTS_PER_APPEND` | `1000` | events in one append |
//! | `--read-limit-max` / `read_limit_max` | `TOKENLEDGER_READ_LIMIT_MAX` | `1000` | `limit` of reads is clamped to this |
//! | `--clock-skew-seconds` / `clock_skew_seconds` | `TOKENLEDGER_CLOCK_SKEW_SECONDS` | `60` | client times further than this from the writer's clock are refused (422) |
//! | `--verify-leeway-seconds` / `verify_leeway_seconds` | `TOKENLEDGER_VERIFY_LEEWAY_SECONDS` | `30` | `exp`/`nbf` leeway, at most 300 |
//! | `--cutoff-mode` / `cutoff_mode` | `TOKENLEDGER_CUTOFF_MODE` | `enforce` | `enforce`, `dry_run` or `off` for rule cutoffs |
//! | `--verify-refuses-cut-off` / `verify_refuses_cut_off` | `TOKENLEDGER_VERIFY_REFUSES_CUT_OFF` | `false` | verify and introspect also refuse (reason `cutoff`) tokens of a subject under an enforced cutoff |
//! | `--rules-file` / `rules_file` | `TOKENLEDGER_RULES_FILE` | none | TOML file of cutoff rules (`[[rule]]`, see `crate::rules`) |
//! | `--rules-interval-seconds` / `rules_interval_seconds` | `TOKENLEDGER_RULES_INTERVAL_SECONDS` | `10` | the cutoff rules also run this often (at least 1), besides on every new anomaly, risk signal or detector config |
//! | `--bootstrap-token` / `bootstrap_token` | `TOKENLEDGER_BOOTSTRAP_TOKEN` | generated into `<data-dir>/bootstrap.token` (0600) | the bootstrap secret, ≥ 32 bytes |
//! | `--kek-file` / `kek_file` | `TOKENLEDGER_KEK_FILE` | `<data-dir>/kek`, generated (0600) for a new ledger only | the key-encryption key that seals signing keys, 32 bytes hex; a ledger whose KEK is missing, or whose signing keys do not open under it, does not start |
//! | `--issuer-name` / `issuer_name` | `TOKENLEDGER_ISSUER_NAME` | `tokenledger` | `iss` of minted tokens |
//! | `--key-publish-lead-seconds` / `key_publish_lead_seconds` | `TOKENLEDGER_KEY_PUBLISH_LEAD_SECONDS` | `3600` | a scheduled next key is published this long before it signs |
//! | `--key-rotation-seconds` / `key_rotation_seconds` | `TOKENLEDGER_KEY_ROTATION_SECONDS` | `2592000` | scheduled rotation period (0: never) |
//! | `--max-token-ttl-seconds` / `max_token_ttl_seconds` | `TOKENLEDGER_MAX_TOKEN_TTL_SECONDS` | `86400` | no policy grants longer; a retired key verifies this long |
//! | `--max-exchange-depth` / `max_exchange_depth` | `TOKENLEDGER_MAX_EXCHANGE_DEPTH` | `4` | deepest token-exchange chain |
//! | `--webhook-allow` / `webhook_allow` | `TOKENLEDGER_WEBHOOK_ALLOW` | none | hosts and CIDRs alert webhooks may target although not public (loopback, private, link-local, …), comma-separated (a TOML array too); their URLs may be plain `http://` |
//! | `--sql-memory-mb` / `sql_memory_mb` | `TOKENLEDGER_SQL_MEMORY_MB` | `512` | memory one SQL query may reserve (sorts, joins, aggregations), MiB |
//! | `--sql-timeout-seconds` / `sql_timeout_seconds` | `TOKENLEDGER_SQL_TIMEOUT_SECONDS` | `30` | time one SQL query may take |
//! | `--sql-max-rows` / `sql_max_rows` | `TOKENLEDGER_SQL_MAX_ROWS` | `100000` | rows one `POST /v1/sql` answer may hold (exports are not capped) |
//! | `--sql-concurrency` / `sql_concurrency` | `TOKENLEDGER_SQL_CONCURRENCY` | `2` | SQL queries that run at once; more wait |
//! | `--snapshot-every-events` / `snapshot_every_events` | `TOKENLEDGER_SNAPSHOT_EVERY_EVENTS` | `100000` | write a views snapshot (`<data-dir>/projections/views.snapshot`) after this many events (0: not by count) |
//! | `--snapshot-every-seconds` / `snapshot_every_seconds` | `TOKENLEDGER_SNAPSHOT_EVERY_SECONDS` | `300` | write a views snapshot this often while events come (0: not by time); always at a graceful shutdown |
//! | `--shutdown-grace-seconds` / `shutdown_grace_seconds` | `TOKENLEDGER_SHUTDOWN_GRACE_SECONDS` | `30` | on SIGTERM, how long in-flight requests may finish |
//! | `--log-format` / `log_format` | `TOKENLEDGER_LOG_FORMAT` | `text` | `text` or `json` |
//! | `--log` / `log` | `TOKENLEDGER_LOG` | `info` | a `tracing` filter, e.g. `info,tokenledger_server=debug` |

use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What rule-engaged cutoffs do (DESIGN.md `cutoff_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum CutoffMode {
    /// Rules engage enforced cutoffs.
    Enforce,
    /// Rules record what they would do.
    DryRun,
    /// Rules do nothing.
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

macro_rules! settings {
    (
        defaulted { $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, env = $env:literal; )+ }
        optional { $( $(#[doc = $odoc:literal])* $oname:ident : $oty:ty, env = $oenv:literal; )+ }
    ) => {
        /// Flags of `tokenledger serve` (see the module docs for the table).
        #[derive(Debug, Clone, Default, Args)]
        pub struct ServeArgs {
            /// A TOML file with any of the settings below.
            // `hide_env_values`: `--help` names the variable but never prints
            // its value (the bootstrap token, the KEK path, …).
            #[arg(long, env = "TOKENLEDGER_CONFIG", hide_env_values = true)]
            pub config: Option<PathBuf>,
            $( $(#[doc = $doc])* #[arg(long, env = $env, hide_env_values = true)] pub $name: Option<$ty>, )+
            $( $(#[doc = $odoc])* #[arg(long, env = $oenv, hide_env_values = true)] pub $oname: Option<$oty>, )+
        }

        /// The same settings read from the TOML file.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileSettings { $( $name: Option<$ty>, )+ $( $oname: Option<$oty>, )+ }

        /// Resolved settings.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $name: $ty, )+
            $( $(#[doc = $odoc])* pub $oname: Option<$oty>, )+
        }

        impl Settings {
            fn merge(args: ServeArgs, file: FileSettings) -> Settings {
                Settings {
                    $( $name: args.$name.or(file.$name).unwrap_or_else(|| $default), )+
                    $( $oname: args.$oname.or(file.$oname), )+
                }
            }
        }
    };
}

settings! {
    defaulted {
        /// The data directory: the ledger file and the bootstrap token.
        data_dir: PathBuf = PathBuf::from("./data"), env = "TOKENLEDGER_DATA_DIR";
        /// Address of the API.
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), env = "TOKENLEDGER_LISTEN";
        /// Allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
        allow_plain_http: bool = false, env = "TOKENLEDGER_ALLOW_PLAIN_HTTP";
        /// Request body limit in bytes; larger bodies get 413.
        max_body_bytes: usize = 1 << 20, env = "TOKENLEDGER_MAX_BODY_BYTES";
        /// Most events in one append.
        max_events_per_append: usize = 1000, env = "TOKENLEDGER_MAX_EVENTS_PER_APPEND";
        /// Reads return at most this many events.
        read_limit_max: usize = 1000, env = "TOKENLEDGER_READ_LIMIT_MAX";
        /// Client-sent times further than this from the writer's clock are refused, seconds.
        clock_skew_seconds: u32 = 60, env = "TOKENLEDGER_CLOCK_SKEW_SECONDS";
        /// Leeway for exp/nbf when verifying tokens, seconds, at most 300.
        verify_leeway_seconds: u32 = 30, env = "TOKENLEDGER_VERIFY_LEEWAY_SECONDS";
        /// What rule-engaged cutoffs do: enforce, dry_run or off.
        cutoff_mode: CutoffMode = CutoffMode::Enforce, env = "TOKENLEDGER_CUTOFF_MODE";
        /// Verify and introspect also refuse (reason `cutoff`) the tokens of a subject under an enforced cutoff.
        verify_refuses_cut_off: bool = false, env = "TOKENLEDGER_VERIFY_REFUSES_CUT_OFF";
        /// The cutoff rules also run this often, seconds (at least 1).
        rules_interval_seconds: u64 = 10, env = "TOKENLEDGER_RULES_INTERVAL_SECONDS";
        /// Write a views snapshot after this many events (0: not by count).
        snapshot_every_events: u64 = 100_000, env = "TOKENLEDGER_SNAPSHOT_EVERY_EVENTS";
        /// Write a views snapshot this often while events come, seconds (0: not by time).
        snapshot_every_seconds: u64 = 300, env = "TOKENLEDGER_SNAPSHOT_EVERY_SECONDS";
        /// On SIGTERM, how long in-flight requests may take to finish, seconds.
        shutdown_grace_seconds: u64 = 30, env = "TOKENLEDGER_SHUTDOWN_GRACE_SECONDS";
        /// The `iss` of tokens this server mints.
        issuer_name: String = "tokenledger".to_owned(), env = "TOKENLEDGER_ISSUER_NAME";
        /// How long a scheduled next key is published before it signs, seconds.
        key_publish_lead_seconds: u64 = 3600, env = "TOKENLEDGER_KEY_PUBLISH_LEAD_SECONDS";
        /// Scheduled rotation: a key signs for at most this long, seconds (0: never).
        key_rotation_seconds: u64 = 30 * 86400, env = "TOKENLEDGER_KEY_ROTATION_SECONDS";
        /// Longest token lifetime any policy may grant, seconds; a retired key verifies this long.
        max_token_ttl_seconds: u64 = 86400, env = "TOKENLEDGER_MAX_TOKEN_TTL_SECONDS";
        /// Deepest exchange chain: a token exchanged more often than this is refused.
        max_exchange_depth: u32 = 4, env = "TOKENLEDGER_MAX_EXCHANGE_DEPTH";
        /// Hosts and CIDRs alert webhooks may target although not public, comma-separated.
        webhook_allow: crate::webhooks::AllowList = crate::webhooks::AllowList::default(), env = "TOKENLEDGER_WEBHOOK_ALLOW";
        /// Memory one SQL query may reserve for sorts, joins and aggregations, MiB.
        sql_memory_mb: u64 = 512, env = "TOKENLEDGER_SQL_MEMORY_MB";
        /// Time one SQL query may take, seconds.
        sql_timeout_seconds: u64 = 30, env = "TOKENLEDGER_SQL_TIMEOUT_SECONDS";
        /// Rows one SQL answer may hold (`POST /v1/sql`; exports are not capped).
        sql_max_rows: u64 = 100000, env = "TOKENLEDGER_SQL_MAX_ROWS";
        /// SQL queries that run at once; more wait.
        sql_concurrency: u64 = 2, env = "TOKENLEDGER_SQL_CONCURRENCY";
        /// Log format: text or json.
        log_format: LogFormat = LogFormat::Text, env = "TOKENLEDGER_LOG_FORMAT";
        /// A tracing filter, e.g. "info,tokenledger_server=debug".
        log: String = "info".to_owned(), env = "TOKENLEDGER_LOG";
    }
    optional {
        /// PEM certificate chain; with --tls-key, serve HTTPS.
        tls_cert: PathBuf, env = "TOKENLEDGER_TLS_CERT";
        /// PEM private key for --tls-cert.
        tls_key: PathBuf, env = "TOKENLEDGER_TLS_KEY";
        /// A second, unauthenticated listener serving only /metrics.
        metrics_listen: SocketAddr, env = "TOKENLEDGER_METRICS_LISTEN";
        /// The bootstrap secret (at least 32 bytes); generated into the data dir if absent.
        bootstrap_token: String, env = "TOKENLEDGER_BOOTSTRAP_TOKEN";
        /// The key-encryption key file (32 bytes, hex); generated as <data-dir>/kek (0600) for a new ledger.
        kek_file: PathBuf, env = "TOKENLEDGER_KEK_FILE";
        /// TOML file of cutoff rules (`[[rule]]` with id, sql, duration_seconds, mode, description).
        rules_file: PathBuf, env = "TOKENLEDGER_RULES_FILE";
    }
}

/// Why the settings were refused; the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A value is out of range or settings contradict each other.
    #[error("{0}")]
    Invalid(String),
}

/// A TOML error as `message at line L, column C`, without the source
/// snippet `toml`'s `Display` adds: the offending line may hold a secret
/// (`bootstrap_token = "…"`), and errors go to stderr and the logs.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    // The message names keys and expectations, never values; keep only its
    // first line in case a future version adds context.
    let mut message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .trim_end()
        .to_owned();
    let Some(span) = e.span() else { return message };
    // A value refused for its type or variant is quoted by serde's message
    // (`invalid type: string "…"`, `unknown variant `…``): the offending
    // value is cut out of the message too. Key names (an unknown or
    // duplicate key) are not secret and stay, to point at the typo.
    let about_key = ["unknown field", "duplicate key", "missing field"]
        .iter()
        .any(|k| message.contains(k));
    if !about_key && let Some(value) = text.get(span.clone()) {
        let inner = value.trim().trim_matches(['"', '\'']);
        if inner.len() >= 4 {
            message = message.replace(inner, "…");
        }
    }
    let (line, column) = line_column(text, span.start);
    format!("{message} at line {line}, column {column}")
}

/// 1-based line and column (in characters) of byte offset `at` of `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

impl Settings {
    /// Resolves flags and variables (already merged by clap) over the TOML
    /// file and the defaults, then checks them.
    pub fn resolve(args: ServeArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            None => FileSettings::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: toml_error(&text, &e),
                })?
            }
        };
        let s = Settings::merge(args, file);
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.verify_leeway_seconds > 300 {
            return bad(format!(
                "verify_leeway_seconds is {}; at most 300 is allowed",
                self.verify_leeway_seconds
            ));
        }
        if self.clock_skew_seconds > 3600 {
            return bad(format!(
                "clock_skew_seconds is {}; at most 3600 is allowed",
                self.clock_skew_seconds
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("--tls-cert and --tls-key go together".into());
        }
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() && !self.allow_plain_http {
            return bad(format!(
                "refusing plain HTTP on non-loopback address {}: give --tls-cert/--tls-key, or --allow-plain-http behind a TLS proxy",
                self.listen
            ));
        }
        if let Some(t) = &self.bootstrap_token
            && t.len() < 32
        {
            return bad("the bootstrap token must be at least 32 bytes".into());
        }
        if self.rules_interval_seconds == 0 {
            return bad("rules_interval_seconds must be at least 1".into());
        }
        if self.max_body_bytes < 1024 || self.max_events_per_append == 0 || self.read_limit_max == 0 {
            return bad("max_body_bytes must be ≥ 1024, max_events_per_append and read_limit_max ≥ 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn defaults_are_safe() {
        let s = Settings::resolve(args()).unwrap();
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.verify_leeway_seconds, 30);
        assert_eq!(s.clock_skew_seconds, 60);
        assert_eq!(s.cutoff_mode, CutoffMode::Enforce);
    }

    #[test]
    fn out_of_range_refuses_to_start() {
        let mut a = args();
        a.verify_leeway_seconds = Some(301);
        assert!(Settings::resolve(a).is_err());
        let mut a = args();
        a.listen = Some("0.0.0.0:8080".parse().unwrap());
        assert!(Settings::resolve(a.clone()).is_err());
        a.allow_plain_http = Some(true);
        assert!(Settings::resolve(a).is_ok());
        let mut a = args();
        a.bootstrap_token = Some("short".into());
        assert!(Settings::resolve(a).is_err());
    }

    #[test]
    fn file_is_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "clock_skew_seconds = 10\nmax_body_bytes = 4096\ncutoff_mode = \"dry_run\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        a.max_body_bytes = Some(8192);
        let s = Settings::resolve(a).unwrap();
        assert_eq!(s.clock_skew_seconds, 10);
        assert_eq!(s.max_body_bytes, 8192);
        assert_eq!(s.cutoff_mode, CutoffMode::DryRun);
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        assert!(matches!(Settings::resolve(a), Err(ConfigError::File { .. })));
    }

    fn file_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let a = ServeArgs {
            config: Some(path.clone()),
            ..args()
        };
        let err = Settings::resolve(a).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.starts_with(&format!("config file {}: ", path.display())), "{err}");
        err
    }

    #[test]
    fn toml_errors_never_echo_the_file() {
        const SECRET: &str = "SUPERSECRET-0123456789abcdef0123456789";
        // A misspelt key whose value is a secret.
        let err = file_error(&format!("listen = \"127.0.0.1:8080\"\nbootstrap_tokn = \"{SECRET}\"\n"));
        assert!(!err.contains("SUPERSECRET"), "{err}");
        assert!(err.contains("bootstrap_tokn"), "the key is named: {err}");
        assert!(err.ends_with("at line 2, column 1"), "{err}");
        // An unterminated string holding the secret.
        let err = file_error(&format!("data_dir = \"/d\"\nbootstrap_token = \"{SECRET}\n"));
        assert!(!err.contains("SUPERSECRET"), "{err}");
        assert!(err.contains("at line 2, column "), "{err}");
        assert!(!err.contains('\n'), "one line: {err:?}");
        // A secret refused for its type or variant.
        let err = file_error(&format!("cutoff_mode = \"{SECRET}\"\n"));
        assert!(!err.contains("SUPERSECRET"), "{err}");
        assert!(err.contains("at line 1, column 15"), "{err}");
        let err = file_error(&format!("max_body_bytes = \"{SECRET}\"\n"));
        assert!(!err.contains("SUPERSECRET"), "{err}");
        let err = file_error("bootstrap_token = 98765432109876543210987\n");
        assert!(!err.contains("98765432109876543210987"), "{err}");
        assert!(err.contains("expected a string"), "{err}");
        // Not valid TOML at all.
        let err = file_error(&format!("[x\nbootstrap_token = \"{SECRET}\"\n"));
        assert!(!err.contains("SUPERSECRET"), "{err}");
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("a\nbc", 3), (2, 2));
        assert_eq!(line_column("a\nébc", 4), (2, 2));
        assert_eq!(line_column("a\nébc", 3), (2, 1), "inside a character");
        assert_eq!(line_column("ab", 99), (1, 3));
    }

    #[test]
    fn help_never_prints_environment_values() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        // Every argument hides its variable's value; `--help` renders from
        // these flags, so no value set in the environment reaches it.
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            if arg.get_env().is_some() {
                assert!(arg.is_hide_env_values_set(), "--{} shows its env value", arg.get_id());
            }
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("TOKENLEDGER_BOOTSTRAP_TOKEN"), "{help}");
    }
}
