//! The simulator against the real binary with the shipped rules
//! (`rules/default.toml`): every scenario kind is injected and detected on a
//! fixed seed, the expected cutoffs are engaged, and the run directory
//! scores.

use std::time::Duration;
use tokenledger_simulator::{ScenarioKind, SimConfig, run, score_run};
use tokenledger_testkit::{Options, Profile, Server};

const BOOTSTRAP: &str = "simulator-test-bootstrap-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_kind_is_injected_and_detected() {
    let rules = format!("{}/../../rules/default.toml", env!("CARGO_MANIFEST_DIR"));
    let opts = Options::new(Profile::matching(cfg!(debug_assertions)), BOOTSTRAP, "tl-sim-")
        .with_args(&["--rules-file", &rules]);
    let server = Server::start(opts).await;
    let out = tempfile::tempdir().unwrap();
    let mut cfg = SimConfig::new(&server.base(), BOOTSTRAP, 11);
    cfg.seconds = 40.0;
    cfg.tenants = 1;
    cfg.rate = 12.0;
    cfg.grace_seconds = 120.0;
    cfg.out = Some(out.path().to_owned());
    let outcome = run(&cfg, &|p| eprintln!("{p}")).await.expect("the run");
    for k in ScenarioKind::ALL {
        assert_eq!(
            outcome.attacks_by_kind[k.as_str()],
            1,
            "{k:?} injected: {:?}",
            outcome.labels.scenarios
        );
    }
    assert!(
        outcome.counters.verified > 0 && outcome.counters.exchanged > 0,
        "{:?}",
        outcome.counters
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.path().join("credentials.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let labels = std::fs::read_to_string(out.path().join("labels.json")).unwrap();
    assert!(!labels.contains("tl_"), "no secret in labels.json");

    // The rules run on their own task: give the cutoffs a moment.
    let mut card = score_run(out.path(), &server.base()).await.expect("score");
    for _ in 0..60 {
        if card.cutoffs_engaged == card.cutoffs_expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        card = score_run(out.path(), &server.base()).await.expect("score");
    }
    eprintln!("{card}");
    assert_eq!(card.recall, Some(1.0), "{card}");
    for (kind, k) in &card.by_kind {
        assert_eq!((k.detected, k.total), (1, 1), "{kind}: {card}");
    }
    assert_eq!(card.cutoffs_engaged, card.cutoffs_expected, "{card}");
    assert_eq!(card.cutoffs_expected, 4);
    let json = serde_json::to_string(&card).unwrap();
    let back: tokenledger_simulator::Scorecard = serde_json::from_str(&json).unwrap();
    assert_eq!(back, card);
}
