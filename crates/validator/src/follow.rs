//! The ledger side of a validator: what `verify` shares with the
//! background tasks, the HTTP requests, and the tasks that follow the
//! block-list feed, refresh the key set and send use reports.

use crate::blocklist::{BlockList, parse_answer};
use crate::keyset::KeySet;
use crate::reporter::{self, Queue, Sent, Use};
use crate::verdict::Reason;
use crate::{ConnectError, ValidatorOptions};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// The counters behind [`crate::Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) verified: AtomicU64,
    pub(crate) rejected: [AtomicU64; Reason::ALL.len()],
    pub(crate) unverifiable: AtomicU64,
    pub(crate) reported: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) unreportable: AtomicU64,
    pub(crate) feed_errors: AtomicU64,
    pub(crate) key_refreshes: AtomicU64,
    pub(crate) key_errors: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the feed is healthy, and when it last answered.
pub(crate) struct FeedHealth {
    pub(crate) healthy: bool,
    pub(crate) last_ok: Instant,
}

/// What the background tasks and `verify` share.
pub(crate) struct Shared {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) credential: String,
    pub(crate) audience: String,
    pub(crate) opts: ValidatorOptions,
    pub(crate) keys: RwLock<KeySet>,
    pub(crate) keys_etag: Mutex<Option<String>>,
    pub(crate) blocks: RwLock<BlockList>,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) counters: Counters,
    /// A token named a kid not in the key set.
    pub(crate) kid_miss: Notify,
    pub(crate) kid_miss_pending: AtomicBool,
    /// The queue holds a full batch.
    pub(crate) flush_now: Notify,
    /// `shutdown` was called: uses are no longer queued.
    pub(crate) stopped: AtomicBool,
    pub(crate) position: watch::Sender<Option<u64>>,
    pub(crate) feed: Mutex<FeedHealth>,
}

/// A failed request.
#[derive(Debug)]
pub(crate) enum HttpError {
    Transport(String),
    Status(u16, String),
    Body(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Transport(e) => write!(f, "no answer: {e}"),
            HttpError::Status(s, p) => write!(f, "status {s} {p}"),
            HttpError::Body(e) => write!(f, "bad answer: {e}"),
        }
    }
}

impl HttpError {
    pub(crate) fn into_connect(self, endpoint: &'static str) -> ConnectError {
        match self {
            HttpError::Transport(detail) => ConnectError::Unreachable { endpoint, detail },
            HttpError::Status(status, problem) => ConnectError::Refused {
                endpoint,
                status,
                problem,
            },
            HttpError::Body(detail) => ConnectError::InvalidAnswer { endpoint, detail },
        }
    }
}

/// Describes a transport error without the URL's query or anything secret.
pub(crate) fn transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    };
    let mut msg = format!("{kind} error");
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Exponential backoff with jitter.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay: between half and all of the current step.
    fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let frac = f64::from(nanos % 1000) / 1000.0;
        step.mul_f64(0.5 + 0.5 * frac)
    }
}

/// Sleeps, or returns `false` at once if the validator is stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// A GET answer: the JSON body and `ETag`, or 304.
pub(crate) enum Fetched {
    Json(Value, Option<String>),
    NotModified,
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, etag: Option<&str>, timeout: Duration) -> Result<Fetched, HttpError> {
        let mut rb = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.credential)
            .timeout(timeout);
        if let Some(t) = etag {
            rb = rb.header(reqwest::header::IF_NONE_MATCH, t);
        }
        let resp = rb.send().await.map_err(|e| HttpError::Transport(transport(&e)))?;
        let status = resp.status().as_u16();
        if status == 304 {
            return Ok(Fetched::NotModified);
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| HttpError::Transport(transport(&e)))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status != 200 {
            return Err(HttpError::Status(status, reporter::problem_kind(&body)));
        }
        if body.is_null() {
            return Err(HttpError::Body("not JSON".into()));
        }
        Ok(Fetched::Json(body, etag))
    }

    /// Fetches the key set (with `If-None-Match`) and installs it.
    pub(crate) async fn refresh_keys(&self) -> Result<(), HttpError> {
        let etag = lock(&self.keys_etag).clone();
        let r = self.get("/v1/keys", etag.as_deref(), self.opts.request_timeout).await;
        let r = r.and_then(|f| match f {
            Fetched::NotModified => Ok(()),
            Fetched::Json(v, etag) => {
                let (set, ignored) = KeySet::parse(&v).map_err(HttpError::Body)?;
                if ignored > 0 {
                    tracing::warn!(
                        ignored,
                        "key set: keys not taken (kid does not match the key, or not a k4.public key)"
                    );
                }
                *write(&self.keys) = set;
                *lock(&self.keys_etag) = etag;
                Ok(())
            }
        });
        match &r {
            Ok(()) => add(&self.counters.key_refreshes, 1),
            Err(_) => add(&self.counters.key_errors, 1),
        }
        r
    }

    /// One feed request: a snapshot when the position is unknown, else a
    /// long poll for the delta after it. Applies the answer.
    pub(crate) async fn poll_feed(&self) -> Result<(), HttpError> {
        let since = read(&self.blocks).position();
        let (path, timeout) = match since {
            None => ("/v1/blocklist".to_owned(), self.opts.request_timeout),
            Some(p) => (
                format!("/v1/blocklist?since={p}&wait={}", self.opts.feed_wait_seconds),
                self.opts.request_timeout + Duration::from_secs(self.opts.feed_wait_seconds),
            ),
        };
        let Fetched::Json(v, _) = self.get(&path, None, timeout).await? else {
            return Err(HttpError::Body("304 to a request without If-None-Match".into()));
        };
        let now = chrono::Utc::now();
        let answer = parse_answer(&v, now).map_err(HttpError::Body)?;
        if answer.ignored > 0 {
            tracing::warn!(ignored = answer.ignored, "block list: entries not understood");
        }
        let position = {
            let mut bl = write(&self.blocks);
            match since {
                None => bl.replace(answer),
                Some(_) => bl.apply_delta(answer),
            }
            bl.prune(now, self.prune_grace());
            bl.position()
        };
        self.position.send_replace(position);
        let mut h = lock(&self.feed);
        h.healthy = true;
        h.last_ok = Instant::now();
        Ok(())
    }

    /// Token entries are kept this long after their token's expiry: the
    /// leeway (during which the token still passes the time check) plus a
    /// minute for clock differences.
    fn prune_grace(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.opts.leeway_seconds) + 60)
    }

    /// Sends one report of `uses`.
    async fn send_uses(&self, uses: &[Use]) -> Sent {
        let resp = self
            .http
            .post(self.url("/v1/uses"))
            .bearer_auth(&self.credential)
            .timeout(self.opts.request_timeout)
            .json(&reporter::body(uses))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Sent::Retry(transport(&e)),
        };
        let status = resp.status().as_u16();
        let body: Value = resp
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        reporter::classify(status, &body)
    }

    pub(crate) fn dropped(&self, n: usize) {
        add(&self.counters.dropped, n as u64);
    }

    /// Sends `batch` until it is recorded or given up; `false` if it should
    /// be retried later (kept in `batch`).
    async fn deliver(&self, batch: &mut Vec<Use>, limit: &mut usize) -> bool {
        loop {
            // Too old for the ledger's clock-skew check: drop instead of sending.
            let max_age = chrono::Duration::from_std(self.opts.report_max_age).unwrap_or(chrono::Duration::MAX);
            let oldest_ok = chrono::Utc::now().checked_sub_signed(max_age);
            let before = batch.len();
            if let Some(oldest_ok) = oldest_ok {
                batch.retain(|u| u.at >= oldest_ok);
            }
            self.dropped(before - batch.len());
            if batch.is_empty() {
                return true;
            }
            let n = batch.len().min(*limit);
            match self.send_uses(&batch[..n]).await {
                Sent::Recorded => {
                    add(&self.counters.reported, n as u64);
                    batch.drain(..n);
                }
                Sent::RefusedUse { index, kind } => {
                    tracing::warn!(kind = %kind, "use report: the ledger refused a use; dropping it");
                    let mut head: Vec<Use> = batch.drain(..n).collect();
                    let gone = reporter::drop_refused(&mut head, index, &kind);
                    self.dropped(gone);
                    head.append(batch);
                    *batch = head;
                }
                Sent::TooLarge if n > 1 => *limit = (n / 2).max(1),
                Sent::TooLarge => {
                    tracing::warn!("use report: one use is over the ledger's body limit; dropping it");
                    batch.remove(0);
                    self.dropped(1);
                }
                Sent::Refused(status, kind) => {
                    tracing::error!(status, kind = %kind, "use report refused; dropping {n} uses (check the credential's role)");
                    batch.drain(..n);
                    self.dropped(n);
                    return false;
                }
                Sent::Retry(why) => {
                    tracing::warn!(error = %why, "use report failed; will retry");
                    return false;
                }
            }
        }
    }
}

/// Follows the block-list feed until stopped.
pub(crate) async fn feed_task(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(sh.opts.backoff_min, sh.opts.backoff_max);
    loop {
        let r = tokio::select! {
            r = sh.poll_feed() => r,
            _ = stop.changed() => return,
        };
        match r {
            Ok(()) => backoff.reset(),
            Err(e) => {
                add(&sh.counters.feed_errors, 1);
                lock(&sh.feed).healthy = false;
                if let HttpError::Status(400, _) = e {
                    // `since` not understood: start again from a snapshot.
                    write(&sh.blocks).reset_position();
                }
                tracing::warn!(error = %e, "block-list feed failed; retrying");
                if !pause(&mut stop, backoff.delay()).await {
                    return;
                }
            }
        }
    }
}

/// Refreshes the key set periodically and after unknown kids, until stopped.
pub(crate) async fn key_task(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(sh.opts.backoff_min, sh.opts.backoff_max);
    let mut last = Instant::now();
    let mut retry_in: Option<Duration> = None;
    loop {
        let wait = retry_in.unwrap_or(sh.opts.key_refresh_interval);
        let woke_by_miss = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = sh.kid_miss.notified() => true,
            _ = stop.changed() => return,
        };
        if woke_by_miss {
            let gap = sh.opts.unknown_kid_refresh_interval.saturating_sub(last.elapsed());
            if !gap.is_zero() && !pause(&mut stop, gap).await {
                return;
            }
        }
        // Misses seen from here on ask for the next refresh.
        sh.kid_miss_pending.store(false, Ordering::Release);
        last = Instant::now();
        match sh.refresh_keys().await {
            Ok(()) => {
                backoff.reset();
                retry_in = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "key-set refresh failed; retrying");
                retry_in = Some(backoff.delay().min(sh.opts.key_refresh_interval));
            }
        }
    }
}

/// Sends queued uses every `report_interval` or when a batch is full; on
/// stop, sends what is left once.
pub(crate) async fn report_task(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(sh.opts.backoff_min, sh.opts.backoff_max);
    let mut limit = sh.opts.report_batch_size;
    let mut pending: Vec<Use> = Vec::new();
    let mut tick = tokio::time::interval(sh.opts.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sh.flush_now.notified() => {}
            _ = stop.changed() => {}
        }
        loop {
            if *stop.borrow() {
                return final_flush(&sh, pending, &mut limit).await;
            }
            if pending.is_empty() {
                pending = lock(&sh.queue).take(sh.opts.report_batch_size);
            }
            if pending.is_empty() {
                break;
            }
            if sh.deliver(&mut pending, &mut limit).await {
                backoff.reset();
            } else if !pause(&mut stop, backoff.delay()).await {
                return final_flush(&sh, pending, &mut limit).await;
            }
        }
    }
}

/// On the way out: sends `pending` and the queue once, batch by batch; at
/// the first failure the rest is counted as dropped.
async fn final_flush(sh: &Shared, pending: Vec<Use>, limit: &mut usize) {
    let mut rest = pending;
    rest.extend(lock(&sh.queue).take(usize::MAX));
    while !rest.is_empty() {
        let n = rest.len().min(sh.opts.report_batch_size);
        let mut chunk: Vec<Use> = rest.drain(..n).collect();
        if !sh.deliver(&mut chunk, limit).await {
            sh.dropped(chunk.len() + rest.len());
            return;
        }
    }
}
