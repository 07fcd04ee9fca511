//! "A rebuild from position 0 reproduces the views exactly" (DESIGN.md
//! "Projections"), checked as a property: random histories of issuances
//! (some exchanged from earlier tokens), uses, revocations by id and by
//! selector, key rotations, cutoffs and principals, with event time moving
//! on so that tokens are pruned, appended to a [`MemoryStore`] (the model).
//!
//! The live side is the server's own wiring ([`AppState::catch_up_views`]:
//! the projections as the store's commit hook), snapshotted and restarted
//! at random points: a graceful restart writes the final snapshot, a crash
//! does not (the last periodic one is used), and the restarted state is
//! restored from the snapshot and caught up from its checkpoint. Its
//! canonical JSON must equal, byte for byte, an offline fold of the log
//! from position 0, and `rebuild --verify` over the same log must agree
//! with the snapshot it left.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use tokenledger_domain::clock::ManualClock;
use tokenledger_server::config::{ServeArgs, Settings};
use tokenledger_server::metrics::Metrics;
use tokenledger_server::projections::{
    self, Projections, RebuildArgs, SnapshotPolicy, Verified, read_snapshot, snapshot_path,
};
use tokenledger_server::state::AppState;
use tokenledger_store::{EventStore, ExpectedRevision, MemoryStore, NewEvent, Position, StreamId};

const TENANTS: [&str; 2] = ["acme", "globex"];
const SUBJECTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const CLIENTS: [&str; 3] = ["web", "cli", "batch"];
const SCOPES: [&str; 3] = ["read", "read write", "admin"];

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 5, 6, 7, 8, 9).unwrap()
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One step of a history.
#[derive(Debug, Clone)]
enum Op {
    /// Event time moves on by this many seconds.
    Advance(i64),
    /// A token; `parent`: exchanged from an earlier token (by index).
    Issue {
        tenant: usize,
        subject: usize,
        client: usize,
        scope: usize,
        ttl: i64,
        parent: Option<usize>,
    },
    /// A validator reports a use (folded by the anomaly detectors).
    Use {
        tenant: usize,
        token: usize,
        /// Which of three networks and devices it came from (anomalies:
        /// concurrent use, new device); `revoked`: refused as revoked.
        from: usize,
        revoked: bool,
    },
    /// The tenant's detector thresholds change (a small mint-burst
    /// threshold, so bursts happen).
    Detectors { tenant: usize, burst: usize },
    /// A revocation by id (of an earlier token, or an unknown id).
    RevokeId { tenant: usize, token: usize, unknown: bool },
    /// A revocation by selector.
    RevokeSelector { tenant: usize, scope: usize, key: usize },
    /// A signing-key event: 0 added, 1 activated, 2 retired, 3 revoked.
    Key { tenant: usize, kid: usize, step: u8 },
    /// A cutoff engaged (`release` false) or released.
    Cutoff {
        tenant: usize,
        id: usize,
        release: bool,
        subject: usize,
        enforce: bool,
    },
    /// A principal created in the tenant.
    Principal { tenant: usize, n: usize },
    /// A periodic snapshot.
    Snapshot,
    /// A restart: graceful (final snapshot first) or a crash.
    Restart { graceful: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i64..900).prop_map(Op::Advance),
        6 => (0..2usize, 0..4usize, 0..3usize, 0..3usize, 30i64..1500, prop::option::weighted(0.35, 0..40usize))
            .prop_map(|(tenant, subject, client, scope, ttl, parent)| Op::Issue { tenant, subject, client, scope, ttl, parent }),
        2 => (0..2usize, 0..40usize, 0..3usize, prop::bool::weighted(0.2))
            .prop_map(|(tenant, token, from, revoked)| Op::Use { tenant, token, from, revoked }),
        1 => (0..2usize, 1..4usize).prop_map(|(tenant, burst)| Op::Detectors { tenant, burst }),
        2 => (0..2usize, 0..40usize, prop::bool::weighted(0.1))
            .prop_map(|(tenant, token, unknown)| Op::RevokeId { tenant, token, unknown }),
        1 => (0..2usize, 0..3usize, 0..4usize).prop_map(|(tenant, scope, key)| Op::RevokeSelector { tenant, scope, key }),
        2 => (0..2usize, 0..3usize, 0..4u8).prop_map(|(tenant, kid, step)| Op::Key { tenant, kid, step }),
        1 => (0..2usize, 0..3usize, any::<bool>(), 0..4usize, any::<bool>())
            .prop_map(|(tenant, id, release, subject, enforce)| Op::Cutoff { tenant, id, release, subject, enforce }),
        1 => (0..2usize, 0..5usize).prop_map(|(tenant, n)| Op::Principal { tenant, n }),
        1 => Just(Op::Snapshot),
        1 => any::<bool>().prop_map(|graceful| Op::Restart { graceful }),
    ]
}

/// The live server state over the model store.
struct Live {
    store: MemoryStore,
    state: AppState,
}

async fn start(store: MemoryStore, clock: Arc<ManualClock>, dir: &Path) -> Live {
    let settings = Arc::new(Settings::resolve(ServeArgs::default()).unwrap());
    let dyn_store: Arc<dyn EventStore> = Arc::new(store.clone());
    let kek = tokenledger_tokens::seal::Kek::from_bytes([7; 32]);
    let state = AppState::new(
        dyn_store,
        settings,
        clock,
        "rebuild-test-bootstrap-secret-0123456789",
        kek,
    );
    state.projections.enable_snapshots(SnapshotPolicy {
        path: snapshot_path(dir),
        every_events: 0,
        every_seconds: 0,
    });
    state.catch_up_views().await.unwrap();
    Live { store, state }
}

/// The offline fold of the whole log from position 0: the rebuild.
async fn offline(store: &MemoryStore) -> String {
    let p = Projections::new(Arc::default(), Arc::default(), Arc::new(Metrics::default()));
    let mut from = Position::START.next();
    loop {
        let page = store.read_all(from, 100, None).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.position.next();
        for e in &page {
            p.fold_one(e);
        }
    }
    p.canonical(None).to_string()
}

async fn append(store: &MemoryStore, tenant: &str, stream: &str, ty: &str, data: Value) {
    let ev = NewEvent::new(uuid::Uuid::new_v4(), ty, data, json!({}));
    // The guard may refuse (an exchange from a revoked token): the model is
    // what was committed.
    let _ = store
        .append(&StreamId::new(tenant, stream), ExpectedRevision::Any, vec![ev])
        .await;
}

/// Runs a history; returns (live canonical, offline canonical) at the end.
async fn run(ops: Vec<Op>, dir: &Path) -> (String, String) {
    let clock = Arc::new(ManualClock::new(t0()));
    let mut now = t0();
    let mut live = start(MemoryStore::with_clock(clock.clone()), clock.clone(), dir).await;
    let mut issued: Vec<(usize, String)> = Vec::new();
    let mut seq = 0usize;
    for op in ops {
        seq += 1;
        match op {
            Op::Advance(s) => {
                now += chrono::Duration::seconds(s);
                clock.set(now);
            }
            Op::Issue {
                tenant,
                subject,
                client,
                scope,
                ttl,
                parent,
            } => {
                let id = format!("tok-{seq}");
                let parent = parent
                    .filter(|_| !issued.is_empty())
                    .map(|p| issued[p % issued.len()].clone())
                    .filter(|(t, _)| *t == tenant)
                    .map(|(_, id)| id);
                let data = json!({
                    "token_id": id, "tenant": TENANTS[tenant], "issuer": "tokenledger",
                    "subject": SUBJECTS[subject], "client_id": CLIENTS[client], "audience": "api://orders",
                    "scope": SCOPES[scope], "issued_at": iso(now), "expires_at": iso(now + chrono::Duration::seconds(ttl)),
                    "not_before": iso(now), "format": "v4.public", "kid": "k4.pid.k0",
                    "parent_token_id": parent,
                });
                let mut data = data;
                if data["parent_token_id"].is_null() {
                    data.as_object_mut().unwrap().remove("parent_token_id");
                }
                append(
                    &live.store,
                    TENANTS[tenant],
                    &format!("token-{id}"),
                    "TokenIssued",
                    data,
                )
                .await;
                issued.push((tenant, id));
            }
            Op::Use {
                tenant,
                token,
                from,
                revoked,
            } => {
                let id = issued
                    .get(token % issued.len().max(1))
                    .map_or("none".into(), |x| x.1.clone());
                let ctx = json!({"ip": format!("198.51.{from}.7"), "device_id": format!("dev-{from}")});
                let data = if revoked {
                    json!({"validator": "gw", "audience": "api://orders", "outcome": "rejected",
                        "reason": "revoked", "at": iso(now), "token_id": id, "context": ctx})
                } else {
                    json!({"validator": "gw", "audience": "api://orders", "outcome": "accepted",
                        "at": iso(now), "token_id": id, "context": ctx})
                };
                append(&live.store, TENANTS[tenant], "uses-gw", "TokenUsed", data).await;
            }
            Op::Detectors { tenant, burst } => {
                let data = json!({"tenant": TENANTS[tenant],
                    "thresholds": {"mint_burst_per_subject": burst, "realert_seconds": 60}});
                append(
                    &live.store,
                    TENANTS[tenant],
                    "detector-config",
                    "DetectorConfigChanged",
                    data,
                )
                .await;
            }
            Op::RevokeId { tenant, token, unknown } => {
                let id = match issued.get(token % issued.len().max(1)) {
                    Some((_, id)) if !unknown => id.clone(),
                    _ => format!("unknown-{token}"),
                };
                let data = json!({"token_id": id, "reason": "test", "by": "admin"});
                append(
                    &live.store,
                    TENANTS[tenant],
                    &format!("token-{id}"),
                    "TokenRevoked",
                    data,
                )
                .await;
            }
            Op::RevokeSelector { tenant, scope, key } => {
                let (scope, key) = match scope {
                    0 => ("subject", SUBJECTS[key]),
                    1 => ("client", CLIENTS[key % CLIENTS.len()]),
                    _ => ("issuer", "tokenledger"),
                };
                let data = json!({"selector": {"scope": scope, "key": key}, "reason": "test", "by": "soc"});
                append(&live.store, TENANTS[tenant], "revocations", "TokenRevoked", data).await;
            }
            Op::Key { tenant, kid, step } => {
                let kid = format!("k4.pid.k{kid}");
                let (ty, data) = match step {
                    0 => (
                        "SigningKeyAdded",
                        json!({"kid": kid, "purpose": "public", "algorithm": "Ed25519",
                            "not_before": iso(now), "not_after": iso(now + chrono::Duration::days(30)),
                            "public_key": "k4.public.AAAA", "sealed_secret": "c2VhbGVk"}),
                    ),
                    1 => ("SigningKeyActivated", json!({"kid": kid, "purpose": "public"})),
                    2 => (
                        "SigningKeyRetired",
                        json!({"kid": kid, "purpose": "public", "verify_until": iso(now + chrono::Duration::days(1))}),
                    ),
                    _ => (
                        "SigningKeyRevoked",
                        json!({"kid": kid, "purpose": "public", "reason": "test"}),
                    ),
                };
                append(&live.store, TENANTS[tenant], "keys", ty, data).await;
            }
            Op::Cutoff {
                tenant,
                id,
                release,
                subject,
                enforce,
            } => {
                let (ty, data) = if release {
                    (
                        "MintingCutoffReleased",
                        json!({"cutoff_id": format!("cut-{id}"), "reason": "ok", "by": "soc"}),
                    )
                } else {
                    (
                        "MintingCutoffEngaged",
                        json!({"cutoff_id": format!("cut-{id}"), "scope": "subject", "key": SUBJECTS[subject],
                            "rule_id": "manual", "reason": "test", "evidence": {"positions": [1]},
                            "until": iso(now + chrono::Duration::hours(1)),
                            "mode": if enforce { "enforce" } else { "dry_run" }}),
                    )
                };
                append(&live.store, TENANTS[tenant], &format!("cutoff-{id}"), ty, data).await;
            }
            Op::Principal { tenant, n } => {
                let data = json!({"name": format!("p{n}"), "role": "validator", "tenant": TENANTS[tenant],
                    "secret_id": format!("s{seq}"), "secret_hash": format!("{:064x}", seq), "by": "admin"});
                append(&live.store, TENANTS[tenant], "principals", "PrincipalCreated", data).await;
            }
            Op::Snapshot => {
                live.state.projections.write_snapshot_now().unwrap();
            }
            Op::Restart { graceful } => {
                if graceful {
                    live.state.projections.shutdown();
                }
                live.store.close().await;
                let store = live.store.restarted();
                drop(live);
                live = start(store, clock.clone(), dir).await;
                assert_eq!(
                    live.state.projections.canonical(None).to_string(),
                    offline(&live.store).await,
                    "right after a restart"
                );
            }
        }
    }
    let got = live.state.projections.canonical(None).to_string();
    let want = offline(&live.store).await;
    // The other way round: what the live state snapshots, a rebuild verifies.
    live.state.projections.shutdown();
    let store: Arc<dyn EventStore> = Arc::new(live.store.clone());
    let args = RebuildArgs {
        data_dir: dir.to_owned(),
        verify: true,
        dump: None,
        tenant: None,
    };
    let report = projections::rebuild_on(&store, &snapshot_path(dir), &args)
        .await
        .unwrap();
    assert!(
        matches!(report.verified, Some(Verified::Equal { .. })),
        "rebuild --verify: {:?}",
        report.verified
    );
    (got, want)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn rebuild_equals_live_across_snapshots_and_restarts(ops in prop::collection::vec(op(), 1..70)) {
        let dir = tempfile::tempdir().unwrap();
        let (live, rebuilt) = runtime().block_on(run(ops, dir.path()));
        prop_assert_eq!(live, rebuilt);
    }
}

/// Histories long enough that tokens are pruned: the property above is not
/// vacuous.
#[test]
fn a_long_history_prunes_and_still_rebuilds_equal() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = Vec::new();
    for i in 0..60usize {
        ops.push(Op::Issue {
            tenant: i % 2,
            subject: i % 4,
            client: i % 3,
            scope: i % 3,
            ttl: 60,
            parent: (i % 5 == 4).then(|| i - 2),
        });
        if i % 7 == 0 {
            ops.push(Op::RevokeId {
                tenant: i % 2,
                token: i,
                unknown: false,
            });
        }
        if i == 30 {
            ops.push(Op::Snapshot);
        }
        if i == 40 {
            ops.push(Op::Restart { graceful: false });
        }
        ops.push(Op::Advance(120));
        ops.push(Op::Use {
            tenant: i % 2,
            token: i,
            from: i % 3,
            revoked: false,
        });
    }
    let (live, rebuilt) = runtime().block_on(run(ops, dir.path()));
    assert_eq!(live, rebuilt);
    let v: Value = serde_json::from_str(&live).unwrap();
    let kept = v["tenants"]["acme"]["tokens"].as_object().unwrap().len();
    assert!(kept < 30, "expired tokens were pruned: {kept} of 30 kept");
}

/// The periodic writer: after `every_events` events a snapshot appears with
/// a checkpoint at or beyond them, and a restart resumes from it.
#[test]
fn a_snapshot_is_written_every_n_events_and_used_at_restart() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t0()));
        let store = MemoryStore::with_clock(clock.clone());
        let settings = Arc::new(Settings::resolve(ServeArgs::default()).unwrap());
        let dyn_store: Arc<dyn EventStore> = Arc::new(store.clone());
        let kek = tokenledger_tokens::seal::Kek::from_bytes([7; 32]);
        let state = AppState::new(
            dyn_store,
            settings,
            clock.clone(),
            "rebuild-test-bootstrap-secret-0123456789",
            kek,
        );
        state.projections.enable_snapshots(SnapshotPolicy {
            path: snapshot_path(dir.path()),
            every_events: 5,
            every_seconds: 0,
        });
        state.catch_up_views().await.unwrap();
        for i in 0..12 {
            let data = json!({"token_id": format!("unknown-{i}"), "reason": "test"});
            append(&store, "acme", &format!("token-{i}"), "TokenRevoked", data).await;
        }
        let mut checkpoint = 0;
        for _ in 0..200 {
            if let Ok(Some(s)) = read_snapshot(&snapshot_path(dir.path())) {
                checkpoint = s.checkpoint;
                if checkpoint >= 10 {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            checkpoint >= 5,
            "a periodic snapshot was written: checkpoint {checkpoint}"
        );
        store.close().await;
        drop(state);
        let restarted = start(store.restarted(), clock, dir.path()).await;
        assert_eq!(
            restarted.state.metrics.projection_restored_checkpoint.get(),
            checkpoint as i64
        );
        assert_eq!(
            restarted.state.metrics.projection_replayed_events.get(),
            12 - checkpoint as i64
        );
        assert_eq!(
            restarted.state.projections.canonical(None).to_string(),
            offline(&restarted.store).await
        );
    });
}

/// A corrupt snapshot, or one beyond the head of the log, is ignored: the
/// views are replayed from position 0 and are still right.
#[test]
fn an_unusable_snapshot_means_a_full_replay() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t0()));
        let live = start(MemoryStore::with_clock(clock.clone()), clock.clone(), dir.path()).await;
        for i in 0..4 {
            let data = json!({"token_id": format!("unknown-{i}"), "reason": "test"});
            append(&live.store, "acme", &format!("token-{i}"), "TokenRevoked", data).await;
        }
        live.state.projections.shutdown();
        let path = snapshot_path(dir.path());
        let good = std::fs::read(&path).unwrap();

        // Truncated.
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        let r = start(live.store.restarted(), clock.clone(), dir.path()).await;
        assert_eq!(r.state.metrics.projection_restored_checkpoint.get(), 0);
        assert_eq!(r.state.metrics.projection_replayed_events.get(), 4);
        assert_eq!(r.state.projections.canonical(None).to_string(), offline(&r.store).await);

        // Of another log: a fresh store with fewer events than the checkpoint.
        std::fs::write(&path, &good).unwrap();
        let other = MemoryStore::with_clock(clock.clone());
        append(
            &other,
            "acme",
            "token-x",
            "TokenRevoked",
            json!({"token_id": "x", "reason": "t"}),
        )
        .await;
        let r = start(other, clock.clone(), dir.path()).await;
        assert_eq!(
            r.state.metrics.projection_restored_checkpoint.get(),
            0,
            "beyond the head"
        );
        assert_eq!(r.state.projections.canonical(None).to_string(), offline(&r.store).await);

        // An unknown format version.
        let text = String::from_utf8(good.clone()).unwrap().replacen(
            &format!("\"version\":{}", projections::SNAPSHOT_VERSION),
            "\"version\":99",
            1,
        );
        std::fs::write(&path, text).unwrap();
        assert!(read_snapshot(&path).is_err());
        let r = start(live.store.restarted(), clock, dir.path()).await;
        assert_eq!(r.state.metrics.projection_replayed_events.get(), 4);
    });
}
