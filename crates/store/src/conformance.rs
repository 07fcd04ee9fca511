//! The conformance suite: one set of tests that every [`EventStore`]
//! backend runs unchanged, through [`conformance_suite!`](crate::conformance_suite).
//!
//! ```text
//! tokenledger_store::conformance_suite!(MyHarness::new());
//! ```
//!
//! A backend supplies a [`Harness`] that opens a fresh, empty log and can
//! restart it (close the store, drop every handle, open the same data again).

use crate::*;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// Opens and restarts one backend's log for the suite.
#[async_trait::async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend.
    type Store: EventStore + Clone;
    /// A handle on the harness's log (empty on the first call).
    async fn open(&self) -> Self::Store;
    /// Closes `store`, drops it, and opens the same log again, as a process
    /// restart would.
    async fn restart(&self, store: Self::Store) -> Self::Store;
}

/// Runs every conformance test against a backend: expands to one
/// `#[tokio::test]` per test, each with a fresh harness from `$harness`.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@tests $harness;
            append_and_read, expected_revision_semantics, optimistic_concurrency_race,
            no_stream_race, idempotency, idempotency_survives_restart, ordering_under_concurrency,
            subscription_hand_over, subscription_from_checkpoint, reads_after_restart,
            tenants_are_isolated, commit_hooks_run_before_acknowledgement, close_refuses_appends,
            guard_is_serialized_with_the_log);
    };
    (@tests $harness:expr; $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::conformance::$name(&$harness).await;
            }
        )+
    };
}

fn ev(kind: &str, n: u64) -> NewEvent {
    NewEvent::new(Uuid::new_v4(), kind, json!({ "n": n }), json!({ "tenant": "t" }))
}

fn sid(tenant: &str, name: &str) -> StreamId {
    StreamId::new(tenant, name)
}

/// Appends, then reads the stream and `$all` back.
pub async fn append_and_read<H: Harness>(h: &H) {
    let s = h.open().await;
    assert_eq!(s.head().await.unwrap(), Position::START);
    let a = sid("t", "token-a");
    let r = s
        .append(&a, ExpectedRevision::NoStream, vec![ev("A", 0), ev("A", 1)])
        .await
        .unwrap();
    assert!(r.written);
    assert_eq!(r.next_expected_revision, 1);
    assert_eq!(r.events.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![0, 1]);
    assert!(r.events[0].position > Position::START && r.events[1].position > r.events[0].position);
    let r2 = s
        .append(&a, ExpectedRevision::Exact(1), vec![ev("A", 2)])
        .await
        .unwrap();
    assert_eq!(r2.next_expected_revision, 2);
    let read = s.read_stream(&a, 0, 100).await.unwrap().unwrap();
    assert_eq!(
        read.iter().map(|e| e.data["n"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(read.iter().all(|e| e.stream == "token-a" && e.tenant == "t"));
    assert_eq!(s.read_stream(&a, 1, 1).await.unwrap().unwrap()[0].revision, 1);
    assert!(s.read_stream(&sid("t", "nope"), 0, 10).await.unwrap().is_none());
    let all = s.read_all(Position::START, 100, None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(s.head().await.unwrap(), all[2].position);
    let from_second = s.read_all(all[1].position, 100, None).await.unwrap();
    assert_eq!(from_second.len(), 2, "read_all's from is inclusive");
    assert_eq!(s.read_all(Position::START, 1, None).await.unwrap().len(), 1);
}

/// `any`, `no_stream`, `stream_exists` and exact revisions, and the actual
/// revision a conflict reports.
pub async fn expected_revision_semantics<H: Harness>(h: &H) {
    let s = h.open().await;
    let a = sid("t", "s");
    let wrong = |r: Result<AppendResult, AppendError>, actual| match r {
        Err(AppendError::WrongExpectedRevision { actual: got, .. }) => assert_eq!(got, actual),
        other => panic!("expected a conflict, got {other:?}"),
    };
    wrong(
        s.append(&a, ExpectedRevision::StreamExists, vec![ev("A", 0)]).await,
        None,
    );
    wrong(s.append(&a, ExpectedRevision::Exact(0), vec![ev("A", 0)]).await, None);
    s.append(&a, ExpectedRevision::Any, vec![ev("A", 0)]).await.unwrap();
    wrong(
        s.append(&a, ExpectedRevision::NoStream, vec![ev("A", 1)]).await,
        Some(0),
    );
    wrong(
        s.append(&a, ExpectedRevision::Exact(5), vec![ev("A", 1)]).await,
        Some(0),
    );
    s.append(&a, ExpectedRevision::StreamExists, vec![ev("A", 1)])
        .await
        .unwrap();
    s.append(&a, ExpectedRevision::Exact(1), vec![ev("A", 2)])
        .await
        .unwrap();
    s.append(&a, ExpectedRevision::Any, vec![ev("A", 3)]).await.unwrap();
    assert_eq!(s.read_stream(&a, 0, 10).await.unwrap().unwrap().len(), 4);
    assert_eq!(
        s.append(&a, ExpectedRevision::Any, vec![]).await,
        Err(AppendError::Empty)
    );
}

/// N tasks append with the same expected revision: exactly one wins.
pub async fn optimistic_concurrency_race<H: Harness>(h: &H) {
    let s = h.open().await;
    let a = sid("t", "race");
    s.append(&a, ExpectedRevision::NoStream, vec![ev("A", 0)])
        .await
        .unwrap();
    for round in 0..5u64 {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let s = s.clone();
                let a = a.clone();
                tokio::spawn(async move { s.append(&a, ExpectedRevision::Exact(round), vec![ev("A", i)]).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    wins += 1;
                    assert_eq!(r.next_expected_revision, round + 1);
                }
                Err(AppendError::WrongExpectedRevision { actual, .. }) => assert_eq!(actual, Some(round + 1)),
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one append may win");
    }
    assert_eq!(s.read_stream(&a, 0, 100).await.unwrap().unwrap().len(), 6);
}

/// N tasks create the same stream with `no_stream`: exactly one wins.
pub async fn no_stream_race<H: Harness>(h: &H) {
    let s = h.open().await;
    for k in 0..5 {
        let a = sid("t", &format!("token-{k}"));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (s, a) = (s.clone(), a.clone());
                tokio::spawn(async move {
                    s.append(&a, ExpectedRevision::NoStream, vec![ev("A", i), ev("B", i)])
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(s.read_stream(&a, 0, 100).await.unwrap().unwrap().len(), 2);
    }
}

/// The same ids return the original result and write nothing; a known id
/// with other content, in another stream, or mixed with new ids, conflicts.
pub async fn idempotency<H: Harness>(h: &H) {
    let s = h.open().await;
    let a = sid("t", "token-x");
    let batch = vec![ev("A", 1), ev("B", 2)];
    let first = s.append(&a, ExpectedRevision::NoStream, batch.clone()).await.unwrap();
    let again = s.append(&a, ExpectedRevision::NoStream, batch.clone()).await.unwrap();
    assert!(!again.written);
    assert_eq!(again.events, first.events);
    assert_eq!(again.next_expected_revision, first.next_expected_revision);
    // A retry of only the first event also matches.
    let part = s.append(&a, ExpectedRevision::Any, batch[..1].to_vec()).await.unwrap();
    assert_eq!(part.events, first.events[..1]);
    assert_eq!(s.head().await.unwrap(), first.events[1].position);

    let mut changed = batch[0].clone();
    changed.data = json!({ "n": 99 });
    let conflict = AppendError::IdempotencyConflict {
        event_id: changed.event_id,
    };
    assert_eq!(
        s.append(&a, ExpectedRevision::Any, vec![changed]).await,
        Err(conflict.clone())
    );
    assert_eq!(
        s.append(&sid("t", "other"), ExpectedRevision::Any, batch[..1].to_vec())
            .await,
        Err(conflict)
    );
    let mixed = vec![batch[0].clone(), ev("C", 3)];
    assert!(matches!(
        s.append(&a, ExpectedRevision::Any, mixed).await,
        Err(AppendError::IdempotencyConflict { .. })
    ));
    let out_of_order = vec![batch[1].clone(), batch[0].clone()];
    assert!(matches!(
        s.append(&a, ExpectedRevision::Any, out_of_order).await,
        Err(AppendError::IdempotencyConflict { .. })
    ));
    let dup = ev("D", 4);
    assert_eq!(
        s.append(&a, ExpectedRevision::Any, vec![dup.clone(), dup.clone()])
            .await,
        Err(AppendError::DuplicateEventId { event_id: dup.event_id })
    );
    // The same id in another tenant is another event.
    let other = s
        .append(&sid("u", "token-x"), ExpectedRevision::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(other.written);
    assert_eq!(s.read_all(Position::START, 100, None).await.unwrap().len(), 4);
}

/// Idempotency is durable: a retry after a restart writes nothing.
pub async fn idempotency_survives_restart<H: Harness>(h: &H) {
    let s = h.open().await;
    let a = sid("t", "token-r");
    let batch = vec![ev("A", 1), ev("B", 2)];
    let first = s.append(&a, ExpectedRevision::NoStream, batch.clone()).await.unwrap();
    let s = h.restart(s).await;
    let again = s.append(&a, ExpectedRevision::NoStream, batch.clone()).await.unwrap();
    assert!(!again.written);
    assert_eq!(again.events, first.events);
    let mut changed = batch[1].clone();
    changed.event_type = "Z".into();
    assert!(matches!(
        s.append(&a, ExpectedRevision::Any, vec![changed]).await,
        Err(AppendError::IdempotencyConflict { .. })
    ));
    assert_eq!(s.read_all(Position::START, 100, None).await.unwrap().len(), 2);
}

async fn concurrent_writers<S: EventStore + Clone>(s: &S, tasks: u64, per_task: u64) -> Vec<AppendResult> {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..per_task {
                    let stream = sid("t", &format!("w-{}", (t + i) % 7));
                    out.push(
                        s.append(&stream, ExpectedRevision::Any, vec![ev("W", t * 1000 + i)])
                            .await
                            .unwrap(),
                    );
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// Under concurrent writers, `$all` is strictly ordered, `recorded_at` never
/// goes back, and every stream's revisions are 0..n without a hole.
pub async fn ordering_under_concurrency<H: Harness>(h: &H) {
    let s = h.open().await;
    let results = concurrent_writers(&s, 16, 25).await;
    assert_eq!(results.len(), 400);
    let all = s.read_all(Position::START, 10_000, None).await.unwrap();
    assert_eq!(all.len(), 400);
    for w in all.windows(2) {
        assert!(w[0].position < w[1].position);
        assert!(w[0].recorded_at <= w[1].recorded_at);
    }
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &all {
        per_stream.entry(e.stream.clone()).or_default().push(e.revision);
    }
    for (name, revs) in per_stream {
        assert_eq!(revs, (0..revs.len() as u64).collect::<Vec<_>>(), "stream {name}");
    }
    let acked: HashSet<Position> = results
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.position))
        .collect();
    assert_eq!(acked, all.iter().map(|e| e.position).collect::<HashSet<_>>());
}

/// A subscription started while writers are busy delivers history, then live
/// events, with no gap and no duplicate at the hand-over.
pub async fn subscription_hand_over<H: Harness>(h: &H) {
    let s = h.open().await;
    concurrent_writers(&s, 4, 50).await; // 200 events of history
    let writers = {
        let s = s.clone();
        tokio::spawn(async move { concurrent_writers(&s, 8, 50).await })
    };
    tokio::task::yield_now().await;
    let mut sub = s.subscribe_all(Position::START).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 600 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(30), sub.next())
            .await
            .expect("a live event should arrive")
            .unwrap();
        got.push(e.position);
    }
    writers.await.unwrap();
    let all: Vec<Position> = s
        .read_all(Position::START, 10_000, None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(got, all, "the subscription must deliver exactly $all, in order");
    assert_eq!(sub.checkpoint(), *all.last().unwrap());
    // And it stays live: one more append arrives.
    let r = s
        .append(&sid("t", "late"), ExpectedRevision::Any, vec![ev("L", 0)])
        .await
        .unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.position, r.events[0].position);
    assert!(sub.is_live());
}

/// A subscription from a checkpoint delivers only what came after it.
pub async fn subscription_from_checkpoint<H: Harness>(h: &H) {
    let s = h.open().await;
    let mut positions = Vec::new();
    for i in 0..10 {
        let r = s
            .append(&sid("t", "c"), ExpectedRevision::Any, vec![ev("C", i)])
            .await
            .unwrap();
        positions.push(r.events[0].position);
    }
    let mut sub = s.subscribe_all(positions[6]).await.unwrap();
    for p in &positions[7..] {
        assert_eq!(sub.next().await.unwrap().position, *p);
    }
    let r = s
        .append(&sid("t", "c"), ExpectedRevision::Any, vec![ev("C", 10)])
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().position, r.events[0].position);
}

/// What was acknowledged before a restart reads back the same after it, and
/// positions and `recorded_at` keep increasing.
pub async fn reads_after_restart<H: Harness>(h: &H) {
    let s = h.open().await;
    concurrent_writers(&s, 8, 10).await;
    let before = s.read_all(Position::START, 1000, None).await.unwrap();
    let s = h.restart(s).await;
    let after = s.read_all(Position::START, 1000, None).await.unwrap();
    assert_eq!(before, after);
    assert_eq!(s.head().await.unwrap(), before.last().unwrap().position);
    let r = s
        .append(&sid("t", "w-0"), ExpectedRevision::Any, vec![ev("W", 0)])
        .await
        .unwrap();
    assert!(r.events[0].position > before.last().unwrap().position);
    let last = s.read_all(r.events[0].position, 1, None).await.unwrap();
    assert!(last[0].recorded_at >= before.last().unwrap().recorded_at);
    let w0 = s.read_stream(&sid("t", "w-0"), 0, 1000).await.unwrap().unwrap();
    assert_eq!(w0.last().unwrap().revision, w0.len() as u64 - 1);
}

/// The same stream name in two tenants is two streams; `read_all` filtered
/// by tenant sees only its own.
pub async fn tenants_are_isolated<H: Harness>(h: &H) {
    let s = h.open().await;
    s.append(&sid("a", "token-1"), ExpectedRevision::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    s.append(
        &sid("b", "token-1"),
        ExpectedRevision::NoStream,
        vec![ev("B", 1), ev("B", 2)],
    )
    .await
    .unwrap();
    assert_eq!(
        s.read_stream(&sid("a", "token-1"), 0, 10).await.unwrap().unwrap().len(),
        1
    );
    assert_eq!(
        s.read_stream(&sid("b", "token-1"), 0, 10).await.unwrap().unwrap().len(),
        2
    );
    assert!(s.read_stream(&sid("c", "token-1"), 0, 10).await.unwrap().is_none());
    let b = s.read_all(Position::START, 10, Some("b")).await.unwrap();
    assert_eq!(b.len(), 2);
    assert!(b.iter().all(|e| e.tenant == "b"));
    assert_eq!(s.read_all(b[1].position, 10, Some("b")).await.unwrap().len(), 1);
    assert_eq!(s.read_all(Position::START, 10, Some("a")).await.unwrap().len(), 1);
    assert_eq!(s.read_all(Position::START, 10, Some("zzz")).await.unwrap().len(), 0);
}

struct Recorder(std::sync::Mutex<Vec<Position>>);

impl CommitHook for Recorder {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        self.0.lock().unwrap().extend(events.iter().map(|e| e.position));
    }
}

/// Commit hooks see every committed event, in order, before the append that
/// wrote it returns; idempotent retries and refused appends reach no hook.
pub async fn commit_hooks_run_before_acknowledgement<H: Harness>(h: &H) {
    let s = h.open().await;
    let rec = Arc::new(Recorder(Default::default()));
    s.add_commit_hook(rec.clone());
    let batch = vec![ev("A", 0)];
    let r = s
        .append(&sid("t", "h"), ExpectedRevision::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(*rec.0.lock().unwrap(), vec![r.events[0].position]);
    s.append(&sid("t", "h"), ExpectedRevision::NoStream, batch)
        .await
        .unwrap();
    let _ = s
        .append(&sid("t", "h"), ExpectedRevision::NoStream, vec![ev("B", 0)])
        .await;
    assert_eq!(rec.0.lock().unwrap().len(), 1);
    concurrent_writers(&s, 8, 10).await;
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 81);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

/// After `close`, appends are refused and nothing is written.
pub async fn close_refuses_appends<H: Harness>(h: &H) {
    let s = h.open().await;
    s.append(&sid("t", "x"), ExpectedRevision::Any, vec![ev("A", 0)])
        .await
        .unwrap();
    s.close().await;
    assert_eq!(
        s.append(&sid("t", "x"), ExpectedRevision::Any, vec![ev("A", 1)]).await,
        Err(AppendError::Closed)
    );
    assert_eq!(s.read_all(Position::START, 10, None).await.unwrap().len(), 1);
}

/// A guard whose state comes from the commit hook: after a committed `Cut`,
/// every `Mint` is refused.
#[derive(Default)]
struct CutGuard(std::sync::atomic::AtomicBool);

impl CommitHook for CutGuard {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        if events.iter().any(|e| e.event_type == "Cut") {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl AppendGuard for CutGuard {
    fn is_barrier(&self, event_type: &str) -> bool {
        event_type == "Cut"
    }
    fn check(&self, _stream: &StreamId, events: &[NewEvent]) -> Result<(), Rejection> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) && events.iter().any(|e| e.event_type == "Mint") {
            return Err(Rejection {
                kind: "cut".into(),
                detail: "minting is cut off".into(),
                extra: Default::default(),
            });
        }
        Ok(())
    }
}

/// The guard sees every event committed before an append and nothing after:
/// under concurrent appends, no `Mint` lands after the `Cut`, every refused
/// `Mint` came after it, and a retry of a committed `Mint` is not refused.
pub async fn guard_is_serialized_with_the_log<H: Harness>(h: &H) {
    let s = h.open().await;
    let guard = Arc::new(CutGuard::default());
    s.add_commit_hook(guard.clone());
    s.set_guard(guard.clone());
    let early = ev("Mint", 0);
    s.append(&sid("t", "m-early"), ExpectedRevision::Any, vec![early.clone()])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let kind = if i == 20 { "Cut" } else { "Mint" };
                let r = s
                    .append(&sid("t", &format!("m-{i}")), ExpectedRevision::Any, vec![ev(kind, i)])
                    .await;
                (kind, r)
            })
        })
        .collect();
    let mut cut_at = None;
    let mut minted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            ("Cut", r) => cut_at = Some(r.unwrap().events[0].position),
            (_, Ok(r)) => minted.push(r.events[0].position),
            (_, Err(AppendError::Rejected(rej))) => {
                assert_eq!(rej.kind, "cut");
                refused += 1;
            }
            (_, Err(e)) => panic!("unexpected {e:?}"),
        }
    }
    let cut_at = cut_at.unwrap();
    assert!(minted.iter().all(|p| *p < cut_at), "a Mint was recorded after the Cut");
    assert_eq!(minted.len() + refused, 63);
    let all = s.read_all(Position::START, 1000, None).await.unwrap();
    assert_eq!(all.len(), 1 + 1 + minted.len());
    assert!(
        all.iter()
            .filter(|e| e.event_type == "Mint")
            .all(|e| e.position < cut_at)
    );
    // After the cut: refused, but a retry of a committed Mint still answers.
    assert!(matches!(
        s.append(&sid("t", "late"), ExpectedRevision::Any, vec![ev("Mint", 99)])
            .await,
        Err(AppendError::Rejected(_))
    ));
    let retry = s
        .append(&sid("t", "m-early"), ExpectedRevision::Any, vec![early])
        .await
        .unwrap();
    assert!(!retry.written);
}
