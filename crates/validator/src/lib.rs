//! `tokenledger-validator`: local token verification for a validator (an
//! API gateway, a service) in front of a tokenledger ledger, as DESIGN.md
//! ("Who uses it": validator) describes.
//!
//! [`Validator::connect`] fetches the tenant's published key set
//! (`GET /v1/keys`) and a block-list snapshot (`GET /v1/blocklist`), then
//! keeps both current in background tasks:
//!
//! * the **block-list feed**: a long poll `GET /v1/blocklist?since=POS&wait=25`
//!   that the ledger answers as soon as a revocation commits, so a revoked
//!   token is refused locally within a round trip of its revocation (the
//!   design's figure: < 1 s). Token entries are dropped once their token has
//!   expired; errors are retried with exponential backoff;
//! * the **key set**: refreshed every [`ValidatorOptions::key_refresh_interval`]
//!   with `If-None-Match`, and soon after a token names a `kid` that is not
//!   in it (rate-limited, so forged kids cannot make the validator hammer
//!   the ledger);
//! * **use reports**: every [`Validator::verify`] queues a use; batches of up
//!   to 1000 are sent to `POST /v1/uses` at least every second. The queue is
//!   bounded: when it is full the oldest use is dropped and counted.
//!
//! [`Validator::verify`] itself is synchronous and does no I/O: it checks a
//! token in the ledger's order, with the ledger's reason names — `malformed`,
//! `unknown_kid`, `bad_signature`, `key_revoked`, `expired` /
//! `not_yet_valid` (with leeway), `audience_mismatch`, `revoked`.
//!
//! # What a local verification cannot know
//!
//! * **`not_issued`**: whether the ledger recorded the token. A token validly
//!   signed by a stolen key but never recorded verifies locally. That is
//!   what the use reports are for: the ledger's detectors see uses of tokens
//!   it never issued (`never_issued` anomalies) and of revoked tokens and
//!   keys, and the SOC can cut off or revoke in response. Where that window
//!   is not acceptable, verify with the ledger (`POST /v1/tokens/verify`).
//! * **`cutoff`** and **`insufficient_scope`**: minting cutoffs live in the
//!   ledger; required scopes are the caller's to check on
//!   [`TokenClaims::scope`].
//! * **`v4.local` tokens**: their keys are never published, so they are
//!   [`LocalVerdict::Unverifiable`]; ask the ledger.
//! * **Tokens of trusted external issuers**: their keys are not in
//!   `GET /v1/keys`, so they are `unknown_kid` here; ask the ledger.
//! * **Selector revocations are matched on the token's own claims**
//!   (`sub`, `client_id`, `iss`) with `iat` ≤ `revoked_at` (whole seconds,
//!   so a token minted in the same second as the revocation is refused too).
//!   The ledger also refuses a token *exchanged from* a token that a
//!   selector covers; the feed does not list those, so locally such a token
//!   stays active until it expires or is revoked by id.
//!
//! # Example
//!
//! ```no_run
//! use tokenledger_validator::{LocalVerdict, RequestContext, Validator, ValidatorOptions};
//!
//! # async fn gateway(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let credential = std::env::var("TOKENLEDGER_CREDENTIAL")?; // a `validator` principal's secret
//! let validator = Validator::connect(
//!     "https://ledger.internal:8443",
//!     &credential,
//!     "api://orders",
//!     ValidatorOptions::default(),
//! )
//! .await?;
//!
//! let context = RequestContext {
//!     ip: Some("203.0.113.9".into()),
//!     user_agent: Some("orders-cli/1.2".into()),
//!     device_id: None,
//! };
//! match validator.verify(token, Some(&context)) {
//!     LocalVerdict::Active(claims) => println!("{} may call with scope {}", claims.sub, claims.scope),
//!     LocalVerdict::Rejected(reason) => println!("401: {reason}"),
//!     LocalVerdict::Unverifiable => println!("a v4.local token: ask POST /v1/tokens/verify"),
//!     _ => println!("401"),
//! }
//! println!("{:?}", validator.stats());
//!
//! // Stops the feed and sends the uses still queued.
//! validator.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The tasks run on the tokio runtime `connect` is called on; dropping the
//! last clone of a [`Validator`] stops them without flushing (use
//! [`Validator::shutdown`] to flush).

mod blocklist;
mod follow;
mod keyset;
mod reporter;
mod verdict;
mod verify;

use blocklist::BlockList;
use follow::{Counters, FeedHealth, Shared, add, feed_task, key_task, lock, read, report_task};
use keyset::KeySet;
use reporter::{Queue, Use};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use tokenledger_domain::events::RequestContext;
pub use tokenledger_tokens::paseto::TokenClaims;
pub use verdict::{LocalVerdict, Reason};

/// Largest verification leeway the ledger allows (`verify_leeway_seconds`).
pub const MAX_LEEWAY_SECONDS: u32 = 300;
/// Most uses the ledger takes in one report.
pub const MAX_USES_PER_REPORT: usize = 1000;
/// Longest long-poll wait the ledger allows, seconds.
pub const MAX_FEED_WAIT_SECONDS: u64 = 30;

/// How a [`Validator`] verifies, follows the ledger and reports. Every field
/// has a default ([`ValidatorOptions::default`]); override with
/// `ValidatorOptions { leeway_seconds: 10, ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct ValidatorOptions {
    /// Clock leeway for `exp` and `nbf`, seconds; default 30, at most
    /// [`MAX_LEEWAY_SECONDS`] (as the ledger's `verify_leeway_seconds`).
    pub leeway_seconds: u32,
    /// The `iss` a token signed by a published key must carry, else it is
    /// `unknown_kid` (as on the ledger); default `Some("tokenledger")`, the
    /// ledger's default `issuer_name`. `None` accepts any `iss`.
    pub issuer: Option<String>,
    /// Seconds the ledger may hold a feed request open when nothing is new;
    /// default 25, at most [`MAX_FEED_WAIT_SECONDS`].
    pub feed_wait_seconds: u64,
    /// How often the key set is refreshed (with `If-None-Match`); default
    /// 60 s, the ledger's `max-age`.
    pub key_refresh_interval: Duration,
    /// The shortest time between two refreshes asked for by unknown kids;
    /// default 1 s. Tokens of a key published after the last refresh are
    /// `unknown_kid` until the refresh their first verification asks for;
    /// rotate with `lead_seconds` ≥ [`ValidatorOptions::key_refresh_interval`]
    /// so that new keys arrive before they sign.
    pub unknown_kid_refresh_interval: Duration,
    /// Whether verifications are reported to `POST /v1/uses`; default true.
    /// Turn off only for a validator whose uses are reported otherwise: the
    /// ledger's detectors (never-issued tokens, use after revocation) see
    /// local verifications only through these reports.
    pub report_uses: bool,
    /// Most uses in one report, 1 to [`MAX_USES_PER_REPORT`] (the default).
    pub report_batch_size: usize,
    /// How often queued uses are sent (a full batch is sent at once);
    /// default 1 s.
    pub report_interval: Duration,
    /// Most uses waiting to be sent; when full the oldest is dropped and
    /// counted in [`Stats::dropped`]. Default 100 000.
    pub report_queue_capacity: usize,
    /// Uses older than this are dropped (and counted) instead of sent: the
    /// ledger refuses a use whose `at` is more than its `clock_skew_seconds`
    /// (default 60) away from its clock. Default 50 s.
    pub report_max_age: Duration,
    /// Timeout of one request (a feed request gets the wait on top);
    /// default 10 s.
    pub request_timeout: Duration,
    /// First delay after a failed request, doubled on each failure up to
    /// [`ValidatorOptions::backoff_max`] (with jitter); default 250 ms.
    pub backoff_min: Duration,
    /// Longest delay between retries; default 30 s.
    pub backoff_max: Duration,
    /// Extra trusted root certificates for HTTPS to the ledger, PEM (a
    /// private CA). Needs the `rustls-tls` feature (on by default).
    pub root_certificates_pem: Vec<String>,
}

impl Default for ValidatorOptions {
    fn default() -> Self {
        ValidatorOptions {
            leeway_seconds: 30,
            issuer: Some("tokenledger".to_owned()),
            feed_wait_seconds: 25,
            key_refresh_interval: Duration::from_secs(60),
            unknown_kid_refresh_interval: Duration::from_secs(1),
            report_uses: true,
            report_batch_size: MAX_USES_PER_REPORT,
            report_interval: Duration::from_secs(1),
            report_queue_capacity: 100_000,
            report_max_age: Duration::from_secs(50),
            request_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            root_certificates_pem: Vec::new(),
        }
    }
}

/// Why [`Validator::connect`] failed. Nothing is left running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// An argument or option is out of range: the base URL is not an
    /// `http(s)://` URL, the credential is empty or not a header value, the
    /// audience is not an identifier, or an option is outside its bounds.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No HTTP answer from the ledger (connection refused, timeout, TLS).
    #[error("{endpoint}: no answer from the ledger: {detail}")]
    Unreachable {
        /// `GET /v1/keys` or `GET /v1/blocklist`.
        endpoint: &'static str,
        /// What the HTTP client said.
        detail: String,
    },
    /// The ledger answered with an error status: 401 for a bad credential,
    /// 403 for a principal whose role may not read keys and block list
    /// (use a `validator`), 503 while the ledger starts.
    #[error("{endpoint}: the ledger answered {status} ({problem})")]
    Refused {
        /// `GET /v1/keys` or `GET /v1/blocklist`.
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
        /// The last segment of the problem `type`, if any.
        problem: String,
    },
    /// A 200 answer that is not the expected JSON shape.
    #[error("{endpoint}: unexpected answer: {detail}")]
    InvalidAnswer {
        /// `GET /v1/keys` or `GET /v1/blocklist`.
        endpoint: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// A snapshot of a validator's counters ([`Validator::stats`]). Counts are
/// since `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Verifications that accepted the token ([`LocalVerdict::Active`]).
    pub verified: u64,
    /// Verifications that refused the token, by reason (every reason is
    /// present, possibly with 0).
    pub rejected: BTreeMap<Reason, u64>,
    /// `v4.local` tokens ([`LocalVerdict::Unverifiable`]); not reported.
    pub unverifiable: u64,
    /// Uses the ledger has recorded (a retried report's uses count once).
    pub reported: u64,
    /// Uses that will never be reported: dropped from a full queue, too old
    /// to send, or refused by the ledger.
    pub dropped: u64,
    /// Verifications with nothing to report: a refused token whose id could
    /// not be read, or an audience that is not an identifier.
    pub unreportable: u64,
    /// Uses waiting in the queue.
    pub queued: usize,
    /// The feed position the local block list is complete up to.
    pub feed_position: Option<u64>,
    /// How long the block list may have been missing entries: zero while
    /// the feed is healthy (its last request succeeded and the next one is
    /// waiting, which the ledger answers as soon as an entry commits), else
    /// the time since the last successful answer.
    pub feed_lag: Duration,
    /// Feed requests that failed.
    pub feed_errors: u64,
    /// Key-set fetches that succeeded (including 304).
    pub key_refreshes: u64,
    /// Key-set fetches that failed.
    pub key_errors: u64,
    /// Published keys known.
    pub keys: usize,
    /// Revoked token ids on the local block list.
    pub blocked_tokens: usize,
    /// Selector revocations on the local block list.
    pub blocked_selectors: usize,
    /// Revoked key ids on the local block list.
    pub revoked_kids: usize,
}

impl Stats {
    /// Every refused verification, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// What the [`Validator`] handle owns: the tasks, stopped when the last
/// clone is dropped.
struct Inner {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

/// A local verifier following one ledger tenant (the tenant of its
/// credential). Cheap to clone: clones share keys, block list, queue and
/// tasks. See the crate docs.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sh = &self.inner.shared;
        f.debug_struct("Validator")
            .field("base", &sh.base)
            .field("audience", &sh.audience)
            .field("feed_position", &read(&sh.blocks).position())
            .field("keys", &*read(&sh.keys))
            .finish_non_exhaustive()
    }
}

fn check_options(o: &ValidatorOptions) -> Result<(), ConnectError> {
    let bad = |s: String| Err(ConnectError::InvalidArgument(s));
    if o.leeway_seconds > MAX_LEEWAY_SECONDS {
        return bad(format!(
            "leeway_seconds is {}; at most {MAX_LEEWAY_SECONDS}",
            o.leeway_seconds
        ));
    }
    if o.feed_wait_seconds > MAX_FEED_WAIT_SECONDS {
        return bad(format!(
            "feed_wait_seconds is {}; at most {MAX_FEED_WAIT_SECONDS}",
            o.feed_wait_seconds
        ));
    }
    if !(1..=MAX_USES_PER_REPORT).contains(&o.report_batch_size) {
        return bad(format!(
            "report_batch_size is {}; 1 to {MAX_USES_PER_REPORT}",
            o.report_batch_size
        ));
    }
    if o.report_queue_capacity == 0 {
        return bad("report_queue_capacity must be at least 1".into());
    }
    for (name, d) in [
        ("key_refresh_interval", o.key_refresh_interval),
        ("report_interval", o.report_interval),
        ("request_timeout", o.request_timeout),
        ("backoff_min", o.backoff_min),
    ] {
        if d.is_zero() {
            return bad(format!("{name} must be more than zero"));
        }
    }
    if o.backoff_max < o.backoff_min {
        return bad("backoff_max must be at least backoff_min".into());
    }
    if let Some(iss) = &o.issuer
        && tokenledger_domain::ids::check_identifier("issuer", iss).is_err()
    {
        return bad(format!("issuer {iss:?} is not an identifier"));
    }
    Ok(())
}

fn http_client(o: &ValidatorOptions) -> Result<reqwest::Client, ConnectError> {
    let builder = reqwest::Client::builder()
        .connect_timeout(o.request_timeout)
        .user_agent(concat!("tokenledger-validator/", env!("CARGO_PKG_VERSION")));
    #[cfg(feature = "rustls-tls")]
    let builder = {
        let mut b = builder;
        for pem in &o.root_certificates_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| ConnectError::InvalidArgument(format!("root_certificates_pem: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        b
    };
    #[cfg(not(feature = "rustls-tls"))]
    if !o.root_certificates_pem.is_empty() {
        return Err(ConnectError::InvalidArgument(
            "root_certificates_pem needs the `rustls-tls` feature".into(),
        ));
    }
    builder
        .build()
        .map_err(|e| ConnectError::InvalidArgument(format!("HTTP client: {e}")))
}

impl Validator {
    /// Connects to the ledger at `base_url` (`http://` or `https://`, with
    /// an optional path prefix) as the principal whose secret is
    /// `credential` (`tl_…`, role `validator`), to verify tokens presented
    /// to `audience` (e.g. `api://orders`).
    ///
    /// Fetches the key set and a block-list snapshot — both must succeed —
    /// then starts the feed, key-refresh and report tasks on the current
    /// tokio runtime (so it must be called within one).
    ///
    /// # Errors
    ///
    /// [`ConnectError::InvalidArgument`] for arguments or options out of
    /// range; [`ConnectError::Unreachable`], [`ConnectError::Refused`]
    /// (401: bad credential, 403: a role that may not read the block list,
    /// 503: the ledger is starting) or [`ConnectError::InvalidAnswer`] when
    /// fetching the key set or the snapshot failed.
    pub async fn connect(
        base_url: &str,
        credential: &str,
        audience: &str,
        options: ValidatorOptions,
    ) -> Result<Validator, ConnectError> {
        check_options(&options)?;
        let base = base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| ConnectError::InvalidArgument(format!("base_url {base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(ConnectError::InvalidArgument(format!(
                "base_url {base_url:?} must be an http:// or https:// URL without query or fragment"
            )));
        }
        if credential.is_empty() || reqwest::header::HeaderValue::from_str(&format!("Bearer {credential}")).is_err() {
            return Err(ConnectError::InvalidArgument(
                "credential must be a non-empty header value".into(),
            ));
        }
        tokenledger_domain::ids::check_identifier("audience", audience)
            .map_err(|e| ConnectError::InvalidArgument(e.to_string()))?;
        let http = http_client(&options)?;
        let (position, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            http,
            base,
            credential: credential.to_owned(),
            audience: audience.to_owned(),
            queue: Mutex::new(Queue::new(options.report_queue_capacity)),
            opts: options,
            keys: RwLock::new(KeySet::default()),
            keys_etag: Mutex::new(None),
            blocks: RwLock::new(BlockList::default()),
            counters: Counters::default(),
            kid_miss: Notify::new(),
            kid_miss_pending: AtomicBool::new(false),
            flush_now: Notify::new(),
            stopped: AtomicBool::new(false),
            position,
            feed: Mutex::new(FeedHealth {
                healthy: false,
                last_ok: Instant::now(),
            }),
        });
        shared
            .refresh_keys()
            .await
            .map_err(|e| e.into_connect("GET /v1/keys"))?;
        shared
            .poll_feed()
            .await
            .map_err(|e| e.into_connect("GET /v1/blocklist"))?;
        let (stop, _) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(feed_task(shared.clone(), stop.subscribe())),
            tokio::spawn(key_task(shared.clone(), stop.subscribe())),
        ];
        if shared.opts.report_uses {
            tasks.push(tokio::spawn(report_task(shared.clone(), stop.subscribe())));
        }
        Ok(Validator {
            inner: Arc::new(Inner {
                shared,
                stop,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Verifies `token` for the audience given to [`Validator::connect`],
    /// locally and without I/O, and queues a use report with `context` (the
    /// request being authorized: the end user's address and agent, not the
    /// gateway's own connection). See [`Validator::verify_for`].
    pub fn verify(&self, token: &str, context: Option<&RequestContext>) -> LocalVerdict {
        let sh = &self.inner.shared;
        self.verify_for(token, &sh.audience, context)
    }

    /// Verifies `token` as presented to `audience`, in the ledger's order:
    /// `malformed`, `unknown_kid`, `bad_signature`, `key_revoked`, `iss`
    /// (`unknown_kid`), `expired` / `not_yet_valid` with the leeway,
    /// `audience_mismatch`, `revoked`. Never panics, whatever `token` holds.
    ///
    /// Queues a use report (unless reporting is off): `accepted` with the
    /// verified `jti`, or `rejected` with the reason and the verified `jti`
    /// — or, when the signature did not verify, the unverified one if it can
    /// be read (else nothing is reported). A `v4.local` token is
    /// [`LocalVerdict::Unverifiable`] and not reported: verify it with the
    /// ledger, which records the use itself. An unknown `kid` also asks the
    /// key task for a refresh (rate-limited); a token signed by a new key
    /// verifies once it has run.
    pub fn verify_for(&self, token: &str, audience: &str, context: Option<&RequestContext>) -> LocalVerdict {
        let sh = &self.inner.shared;
        let expect = verify::Expect {
            audience,
            issuer: sh.opts.issuer.as_deref(),
            leeway_seconds: sh.opts.leeway_seconds,
        };
        let now = chrono::Utc::now();
        let checked = verify::check(&sh.keys, &sh.blocks, token, expect, now);
        if checked.unknown_kid && !sh.kid_miss_pending.swap(true, Ordering::AcqRel) {
            sh.kid_miss.notify_one();
        }
        let c = &sh.counters;
        match &checked.verdict {
            LocalVerdict::Active(_) => add(&c.verified, 1),
            LocalVerdict::Rejected(r) => add(&c.rejected[r.index()], 1),
            LocalVerdict::Unverifiable => {
                add(&c.unverifiable, 1);
                return checked.verdict;
            }
        }
        if sh.opts.report_uses {
            self.enqueue(checked.report_id, audience, checked.verdict.reason(), now, context);
        }
        checked.verdict
    }

    fn enqueue(
        &self,
        token_id: Option<String>,
        audience: &str,
        reason: Option<Reason>,
        at: chrono::DateTime<chrono::Utc>,
        context: Option<&RequestContext>,
    ) {
        let sh = &self.inner.shared;
        if sh.stopped.load(Ordering::Acquire) {
            add(&sh.counters.dropped, 1);
            return;
        }
        let Some(token_id) = token_id else {
            add(&sh.counters.unreportable, 1);
            return;
        };
        let audience: Arc<str> = if audience == sh.audience {
            Arc::from(sh.audience.as_str())
        } else if tokenledger_domain::ids::check_identifier("audience", audience).is_ok() {
            Arc::from(audience)
        } else {
            add(&sh.counters.unreportable, 1);
            return;
        };
        let u = Use {
            token_id,
            audience,
            reason,
            at,
            context: context.and_then(reporter::clean_context),
        };
        let (dropped, len) = {
            let mut q = lock(&sh.queue);
            (q.push(u), q.len())
        };
        add(&sh.counters.dropped, dropped);
        if len >= sh.opts.report_batch_size {
            sh.flush_now.notify_one();
        }
    }

    /// The counters and the state of the feed.
    pub fn stats(&self) -> Stats {
        let sh = &self.inner.shared;
        let c = &sh.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (blocked_tokens, blocked_selectors, revoked_kids, feed_position) = {
            let bl = read(&sh.blocks);
            let (t, s, k) = bl.sizes();
            (t, s, k, bl.position())
        };
        let feed_lag = {
            let h = lock(&sh.feed);
            if h.healthy { Duration::ZERO } else { h.last_ok.elapsed() }
        };
        Stats {
            verified: get(&c.verified),
            rejected: Reason::ALL.iter().map(|r| (*r, get(&c.rejected[r.index()]))).collect(),
            unverifiable: get(&c.unverifiable),
            reported: get(&c.reported),
            dropped: get(&c.dropped),
            unreportable: get(&c.unreportable),
            queued: lock(&sh.queue).len(),
            feed_position,
            feed_lag,
            feed_errors: get(&c.feed_errors),
            key_refreshes: get(&c.key_refreshes),
            key_errors: get(&c.key_errors),
            keys: read(&sh.keys).len(),
            blocked_tokens,
            blocked_selectors,
            revoked_kids,
        }
    }

    /// The feed position the local block list is complete up to: every
    /// block-list entry the ledger committed at or before it has been
    /// applied.
    pub fn feed_position(&self) -> Option<u64> {
        read(&self.inner.shared.blocks).position()
    }

    /// Waits until the local block list is complete up to `position` — e.g.
    /// the `position` that `POST /v1/revocations` answered, so that the
    /// revocation is in force here. Returns at once if it already is; wrap
    /// it in a timeout, as it waits as long as the feed is down.
    pub async fn wait_for_position(&self, position: u64) {
        let mut rx = self.inner.shared.position.subscribe();
        // `wait_for` returns an error only if the sender is gone, which it
        // is not while `self` lives.
        let _ = rx.wait_for(|p| p.is_some_and(|p| p >= position)).await;
    }

    /// Stops the feed and key tasks and sends the uses still queued (each
    /// request bounded by [`ValidatorOptions::request_timeout`]; uses that
    /// cannot be sent are counted as dropped). Verification keeps working
    /// afterwards, on the keys and block list as they were.
    pub async fn shutdown(&self) {
        self.inner.shared.stopped.store(true, Ordering::Release);
        self.inner.stop.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = lock(&self.inner.tasks).drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}
