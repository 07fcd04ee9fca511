//! The in-memory store is the model: random histories of appends (with
//! every kind of expected revision, reused event ids and restarts) give the
//! same answers and the same `$all` on the redb backend.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use std::sync::Arc;
use tokenledger_domain::clock::ManualClock;
use tokenledger_store::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: u8,
        tenant: u8,
        expected: ExpectedRevision,
        events: Vec<(Option<usize>, u8)>,
    },
    Restart,
}

fn expected() -> impl Strategy<Value = ExpectedRevision> {
    prop_oneof![
        Just(ExpectedRevision::Any),
        Just(ExpectedRevision::NoStream),
        Just(ExpectedRevision::StreamExists),
        (0u64..4).prop_map(ExpectedRevision::Exact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..4, 0u8..2, expected(), prop::collection::vec((prop::option::weighted(0.3, 0usize..64), 0u8..3), 1..4))
            .prop_map(|(stream, tenant, expected, events)| Op::Append { stream, tenant, expected, events }),
        1 => Just(Op::Restart),
    ]
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let mut o = RedbOptions::new(dir.path().join("l.redb"));
            o.clock = clock.clone();
            RedbStore::open(o).unwrap()
        };
        let mut model = MemoryStore::with_clock(clock.clone());
        let mut real = open();
        // Ids used so far, with the content they were first sent with, so a
        // reuse can repeat the same content (a retry) or change it.
        let mut ids: Vec<Uuid> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Restart => {
                    model.close().await;
                    model = model.restarted();
                    real.close().await;
                    drop(real);
                    real = open();
                }
                Op::Append {
                    stream,
                    tenant,
                    expected,
                    events,
                } => {
                    let sid = StreamId::new(format!("t{tenant}"), format!("s{stream}"));
                    let batch: Vec<NewEvent> = events
                        .iter()
                        .map(|(reuse, payload)| {
                            let id = match reuse {
                                Some(i) if !ids.is_empty() => ids[i % ids.len()],
                                _ => {
                                    let id = Uuid::new_v4();
                                    ids.push(id);
                                    id
                                }
                            };
                            NewEvent::new(id, "E", serde_json::json!({ "p": payload }), serde_json::json!({}))
                        })
                        .collect();
                    let a = model.append(&sid, expected, batch.clone()).await;
                    let b = real.append(&sid, expected, batch).await;
                    prop_assert_eq!(a, b, "step {}", step);
                }
            }
            clock.set(clock_now(&clock) + chrono::Duration::milliseconds(7));
        }
        let a = model.read_all(Position::START, usize::MAX, None).await.unwrap();
        let b = real.read_all(Position::START, usize::MAX, None).await.unwrap();
        prop_assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(&**x, &**y);
        }
        for tenant in ["t0", "t1"] {
            for s in 0..4 {
                let sid = StreamId::new(tenant, format!("s{s}"));
                let x = model.read_stream(&sid, 0, usize::MAX).await.unwrap();
                let y = real.read_stream(&sid, 0, usize::MAX).await.unwrap();
                prop_assert_eq!(x, y);
            }
        }
        real.close().await;
        Ok(())
    })
}

fn clock_now(c: &ManualClock) -> chrono::DateTime<Utc> {
    use tokenledger_domain::clock::Clock;
    c.now()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn redb_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
