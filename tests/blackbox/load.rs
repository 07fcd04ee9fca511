//! Concurrent appending clients, the record of what each request got back,
//! and the check of `$all` against that record.

use crate::harness::{Answer, Api, token_issued, token_revoked};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// One append as it was sent (kept so it can be retried byte for byte).
#[derive(Debug)]
pub struct Sent {
    pub stream: String,
    pub body: Value,
    /// `(event_id, event_type)` in order.
    pub events: Vec<(String, String)>,
}

impl Sent {
    /// A fresh `token-<uuid>` stream with a `TokenIssued`, and with
    /// `revoke` a `TokenRevoked` after it in the same batch.
    fn new(subject: &str, revoke: bool) -> Sent {
        let jti = Uuid::new_v4().to_string();
        let mut events = vec![token_issued(&jti, subject)];
        if revoke {
            events.push(token_revoked(&jti));
        }
        let ids = events
            .iter()
            .map(|e| {
                (
                    e["event_id"].as_str().unwrap().to_owned(),
                    e["event_type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        Sent {
            stream: format!("token-{jti}"),
            body: json!({"expected_revision": "no_stream", "events": events}),
            events: ids,
        }
    }

    /// `POST /v1/streams/{stream}/events` of this append.
    pub fn path(&self) -> String {
        format!("/v1/streams/{}/events", self.stream)
    }
}

/// What a request got back.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 201 (or 200): each event's position, in order.
    Acked { status: u16, positions: Vec<u64> },
    /// Any other HTTP answer: nothing may have been written.
    Refused(Answer),
    /// The connection could not be made: nothing reached the server.
    NotSent(String),
    /// No answer after the request may have reached the server: it may or
    /// may not have been committed.
    Unknown(String),
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Record {
    pub round: usize,
    pub sent: Arc<Sent>,
    pub started: Instant,
    pub finished: Instant,
    pub outcome: Outcome,
}

impl Record {
    /// Positions, when acknowledged.
    pub fn positions(&self) -> Option<&[u64]> {
        match &self.outcome {
            Outcome::Acked { positions, .. } => Some(positions),
            _ => None,
        }
    }
}

/// Checks an acknowledged answer's shape and returns its positions.
pub fn ack_positions(sent: &Sent, a: &Answer) -> Vec<u64> {
    let evs = a.body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("append answer {} without events: {}", a.status, a.body));
    assert_eq!(
        evs.len(),
        sent.events.len(),
        "append answer names every event: {}",
        a.body
    );
    let mut positions = Vec::with_capacity(evs.len());
    for (i, (e, (id, _))) in evs.iter().zip(&sent.events).enumerate() {
        assert_eq!(
            e["event_id"].as_str(),
            Some(id.as_str()),
            "answer event {i}: {}",
            a.body
        );
        assert_eq!(
            e["revision"].as_u64(),
            Some(i as u64),
            "a new stream starts at revision 0: {}",
            a.body
        );
        positions.push(
            e["position"]
                .as_u64()
                .unwrap_or_else(|| panic!("no position: {}", a.body)),
        );
    }
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions within one append are ordered: {}",
        a.body
    );
    assert_eq!(
        a.body["next_expected_revision"].as_u64(),
        Some(sent.events.len() as u64 - 1),
        "next_expected_revision: {}",
        a.body
    );
    positions
}

/// A running load: `tasks` clients, each appending one request at a time.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts `tasks` clients appending as `issuer` to the server at `base`.
    /// Every fourth request of a client is a 2-event batch (TokenIssued then
    /// TokenRevoked of the same token); the others a single TokenIssued.
    pub fn start(base: String, issuer: &str, tasks: usize, round: usize) -> Load {
        let api = Api::new(base);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let tasks = (0..tasks)
            .map(|t| {
                let (api, stop, acked, issuer) = (api.clone(), stop.clone(), acked.clone(), issuer.to_owned());
                tokio::spawn(async move {
                    let subject = format!("bb-r{round}-c{t}");
                    let mut records = Vec::new();
                    let mut seq = 0usize;
                    while !stop.load(Ordering::Acquire) {
                        let sent = Arc::new(Sent::new(&subject, seq % 4 == 3));
                        seq += 1;
                        let started = Instant::now();
                        let r = api
                            .call(reqwest::Method::POST, &sent.path(), &issuer, Some(&sent.body))
                            .await;
                        let outcome = match r {
                            Ok(a) if a.status == 200 || a.status == 201 => {
                                acked.fetch_add(1, Ordering::Relaxed);
                                Outcome::Acked {
                                    status: a.status,
                                    positions: ack_positions(&sent, &a),
                                }
                            }
                            Ok(a) => Outcome::Refused(a),
                            Err(e) if e.is_connect() => Outcome::NotSent(e.to_string()),
                            Err(e) => Outcome::Unknown(format!("{e:?}")),
                        };
                        let failed = !matches!(outcome, Outcome::Acked { .. });
                        records.push(Record {
                            round,
                            sent,
                            started,
                            finished: Instant::now(),
                            outcome,
                        });
                        if failed {
                            // The server is going away: do not spin.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    records
                })
            })
            .collect();
        Load { stop, acked, tasks }
    }

    /// Appends acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Lets the load run for `at_least`, and longer (up to a minute) until
    /// `min_acked` appends were acknowledged, so the kill lands mid-load.
    pub async fn run_for(&self, at_least: Duration, min_acked: usize) {
        tokio::time::sleep(at_least).await;
        let t0 = Instant::now();
        while self.acked() < min_acked && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells every client to stop after its current request and collects
    /// the records.
    pub async fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Release);
        let mut out = Vec::new();
        for t in self.tasks {
            out.extend(t.await.expect("a load client panicked"));
        }
        out
    }
}

/// Counts of one batch of records.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub requests: usize,
    pub acked: usize,
    pub acked_events: usize,
    pub refused: usize,
    pub not_sent: usize,
    pub unknown: usize,
}

pub fn tally<'a>(records: impl IntoIterator<Item = &'a Record>) -> Tally {
    let mut t = Tally::default();
    for r in records {
        t.requests += 1;
        match &r.outcome {
            Outcome::Acked { positions, .. } => {
                t.acked += 1;
                t.acked_events += positions.len();
            }
            Outcome::Refused(_) => t.refused += 1,
            Outcome::NotSent(_) => t.not_sent += 1,
            Outcome::Unknown(_) => t.unknown += 1,
        }
    }
    t
}

/// What the check of `$all` found.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogCheck {
    /// Events in the tenant's `$all`.
    pub events: usize,
    /// Acknowledged events, each found once at its acknowledged position.
    pub acked_events: usize,
    /// Appends with no answer that were committed nevertheless.
    pub unknown_committed: usize,
    /// Appends with no answer that were not committed.
    pub unknown_absent: usize,
    /// Missing positions between the first and last event of `$all`
    /// (informative: positions are opaque).
    pub gaps: u64,
    /// The last position in `$all`.
    pub head: u64,
}

/// Checks the tenant's `$all` (`log`, as read) against every request made:
///
/// * positions strictly increase, and no event id occurs twice;
/// * every acknowledged event is present, exactly once, at the position,
///   in the stream and with the type it was acknowledged with;
/// * an append answered with anything but 200/201, or whose connection
///   could not even be made, wrote nothing;
/// * an append with no answer was committed entirely or not at all;
/// * every event of a `token-` stream comes from some request made (no
///   phantom events).
pub fn check_log(log: &[Value], records: &[Record]) -> LogCheck {
    let mut by_id: HashMap<&str, (u64, &str, &str)> = HashMap::with_capacity(log.len());
    let mut prev: Option<u64> = None;
    for e in log {
        let pos = e["position"]
            .as_u64()
            .unwrap_or_else(|| panic!("event without position: {e}"));
        if let Some(p) = prev {
            assert!(pos > p, "$all is not strictly ordered: position {pos} after {p}");
        }
        prev = Some(pos);
        let id = e["event_id"]
            .as_str()
            .unwrap_or_else(|| panic!("event without id: {e}"));
        let stream = e["stream"].as_str().unwrap_or_default();
        let ty = e["event_type"].as_str().unwrap_or_default();
        if let Some((other, _, _)) = by_id.insert(id, (pos, stream, ty)) {
            panic!("event id {id} occurs twice in $all: at positions {other} and {pos}");
        }
    }
    let mut check = LogCheck {
        events: log.len(),
        ..LogCheck::default()
    };
    if let (Some(first), Some(last)) = (log.first(), log.last()) {
        let (first, last) = (first["position"].as_u64().unwrap(), last["position"].as_u64().unwrap());
        check.head = last;
        check.gaps = (last - first + 1) - log.len() as u64;
    }

    let mut sent_ids: HashSet<&str> = HashSet::new();
    let mut lost = Vec::new();
    for r in records {
        let found: Vec<Option<&(u64, &str, &str)>> =
            r.sent.events.iter().map(|(id, _)| by_id.get(id.as_str())).collect();
        for ((id, _), f) in r.sent.events.iter().zip(&found) {
            sent_ids.insert(id);
            if let Some((pos, stream, _)) = f {
                assert_eq!(
                    *stream, r.sent.stream,
                    "event {id} at position {pos} is in the wrong stream"
                );
            }
        }
        match &r.outcome {
            Outcome::Acked { positions, status } => {
                for (((id, ty), f), want) in r.sent.events.iter().zip(&found).zip(positions) {
                    match f {
                        None => lost.push(format!(
                            "{id} ({ty}, round {}, answered {status} at position {want})",
                            r.round
                        )),
                        Some((pos, _, got_ty)) => {
                            assert_eq!(
                                pos, want,
                                "event {id} was acknowledged at position {want} but is at {pos} in $all"
                            );
                            assert_eq!(got_ty, ty, "event {id} at {pos} has the wrong type");
                            check.acked_events += 1;
                        }
                    }
                }
            }
            Outcome::Refused(a) => assert!(
                found.iter().all(Option::is_none),
                "an append answered {} {} was written anyway ({} of round {})",
                a.status,
                a.body,
                r.sent.stream,
                r.round
            ),
            Outcome::NotSent(e) => assert!(
                found.iter().all(Option::is_none),
                "an append that never connected ({e}) is in $all ({} of round {})",
                r.sent.stream,
                r.round
            ),
            Outcome::Unknown(_) => {
                let present = found.iter().filter(|f| f.is_some()).count();
                assert!(
                    present == 0 || present == found.len(),
                    "an unanswered append of {} events was committed in part ({present} present): {}",
                    found.len(),
                    r.sent.stream
                );
                if present == 0 {
                    check.unknown_absent += 1;
                } else {
                    check.unknown_committed += 1;
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged events are missing from $all, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let phantoms: Vec<&str> = log
        .iter()
        .filter(|e| e["stream"].as_str().is_some_and(|s| s.starts_with("token-")))
        .filter_map(|e| e["event_id"].as_str())
        .filter(|id| !sent_ids.contains(id))
        .collect();
    assert!(
        phantoms.is_empty(),
        "{} token events in $all were never sent, e.g. {:?}",
        phantoms.len(),
        &phantoms[..phantoms.len().min(5)]
    );
    check
}
