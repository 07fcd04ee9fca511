//! `tokenledger demo`, the README's main-job command: on a fresh data dir it
//! starts its own server, simulates, and prints the summary and the
//! scorecard without any manual step, then leaves the ledger (stopped
//! cleanly) and the credentials (0600) behind; a second run on the same
//! data dir is refused before it touches anything. With `--export` it also
//! writes each tenant's Parquet export, every table in it.

use std::process::Command;

#[tokio::test]
async fn the_main_job_runs_to_its_summary_and_leaves_the_ledger() {
    let _heavy = crate::harness::heavy().await;
    let profile = tokenledger_testkit::Profile::matching(cfg!(debug_assertions));
    let bin = tokio::task::spawn_blocking(move || tokenledger_testkit::binary(profile))
        .await
        .unwrap();
    let tmp = tempfile::Builder::new().prefix("tl-demo-").tempdir().unwrap();
    let dir = tmp.path().join("demo-data");
    let export = tmp.path().join("parquet");
    let out = Command::new(bin)
        .args(["demo", "--seconds", "15", "--tenants", "1", "--seed", "7", "--data-dir"])
        .arg(&dir)
        .arg("--export")
        .arg(&export)
        .output()
        .expect("running tokenledger demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for part in [
        "== Summary ==",
        "-- tenant sim7-0 --",
        "events appended: ",
        "anomalies by kind: ",
        "cutoffs engaged: ",
        "example SQL — the busiest clients:",
        "== Score against the ground truth",
        "For the analyst commands:",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    // Progress lines while it ran, not silence.
    assert!(
        text.lines().filter(|l| l.trim_start().starts_with("t=")).count() >= 2,
        "{text}"
    );
    // The ledger and the credentials stay; the server stopped cleanly.
    assert!(dir.join("ledger.redb").is_file());
    let creds = dir.join("sim").join("credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(c["tenants"][0]["tenant"], "sim7-0");
    assert!(
        !text.contains(c["tenants"][0]["analyst"].as_str().unwrap()),
        "a secret was printed"
    );

    // The export: every table, the events by UTC day, counts in the manifest.
    let tenant = export.join("sim7-0");
    assert!(
        text.contains(&format!("exported tenant sim7-0 as Parquet to {}", tenant.display())),
        "{text}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tenant.join("manifest.json")).unwrap()).unwrap();
    let mut tables: Vec<&str> = manifest.as_object().unwrap().keys().map(String::as_str).collect();
    tables.sort_unstable();
    assert_eq!(
        tables,
        [
            "active_tokens",
            "anomalies",
            "block_list",
            "cutoffs",
            "events",
            "keys",
            "risk_signals"
        ]
    );
    for t in tables.iter().filter(|t| **t != "events") {
        assert!(tenant.join(format!("{t}.parquet")).is_file(), "{t}.parquet");
    }
    let days: Vec<_> = std::fs::read_dir(tenant.join("events"))
        .unwrap()
        .map(|d| d.unwrap().path().join("part-0.parquet"))
        .collect();
    assert!(!days.is_empty() && days.iter().all(|p| p.is_file()), "{days:?}");
    // The simulation's attacks are in it: anomalies and the cutoffs they engaged.
    for t in ["events", "anomalies", "cutoffs"] {
        assert!(manifest[t]["rows"].as_u64().unwrap() > 0, "{t}: {manifest}");
    }

    // Again on the same data dir: refused, nothing changed.
    let before = std::fs::metadata(dir.join("ledger.redb")).unwrap().len();
    let again = Command::new(tokenledger_testkit::binary(profile))
        .args(["demo", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a ledger"));
    assert_eq!(std::fs::metadata(dir.join("ledger.redb")).unwrap().len(), before);
}

/// A failed `tokenledger export` (here: no server answers) leaves no staging
/// directory behind in the target.
#[test]
fn a_failed_export_leaves_no_debris() {
    let profile = tokenledger_testkit::Profile::matching(cfg!(debug_assertions));
    let tmp = tempfile::Builder::new().prefix("tl-export-").tempdir().unwrap();
    let to = tmp.path().join("export");
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(tokenledger_testkit::binary(profile))
        .args(["export", "--server", &format!("http://127.0.0.1:{port}"), "--to"])
        .arg(&to)
        .env("TOKENLEDGER_CREDENTIAL", "tl_not_a_real_secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let left: Vec<_> = std::fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
