//! `tokenledger import` against the real binary, on the real samples of
//! `../shared/data/logs/` (DESIGN.md "Time": importers write into a tenant
//! of their own and keep the source's time): every record is mapped or
//! counted by reason, the events land with their `source_time`, importing
//! again writes nothing, and the CloudTrail sample surfaces the stolen
//! instance credential used from a laptop's CLI as an anomaly.

use crate::harness::*;
use reqwest::Method;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use tokenledger_testkit::{Statuses, admin_via_bootstrap};

fn sample(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/logs")).join(name);
    assert!(
        p.is_file(),
        "{} is missing: shared/ must sit beside the checkout",
        p.display()
    );
    p
}

/// Runs `tokenledger import` as `credential`; (exit success, stdout).
fn import(server: &Server, credential: &str, format: &str, file: &PathBuf) -> (bool, String) {
    let out = Command::new(server.bin())
        .args(["import", "--server", &server.base(), "--format", format])
        .arg(file)
        .env("TOKENLEDGER_CREDENTIAL", credential)
        .output()
        .expect("running tokenledger import");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn the_cloudtrail_sample_surfaces_the_stolen_instance_credential() {
    let server = start_server(&[]).await;
    let api = Api::new(server.base());
    let admin = admin_via_bootstrap(
        &api.http,
        &server.base(),
        BOOTSTRAP,
        "admin-aws",
        "imports-aws",
        Statuses::Success,
    )
    .await;
    let file = sample("otrf_aws_ec2_proxy_s3_exfiltration_cloudtrail.json");
    let (ok, out) = import(&server, &admin, "cloudtrail", &file);
    assert!(ok, "{out}");
    assert!(out.contains("103 records read, 103 mapped, 0 skipped"), "{out}");
    assert!(out.contains("event        5  TokenIssued"), "{out}");
    assert!(out.contains("event       98  TokenUsed"), "{out}");
    assert!(out.contains("appended 103 events (0 already recorded)"), "{out}");

    // Exactly one anomaly: the instance credential of i-0317f6c6b66ae9c40,
    // first used from the attacker's laptop, at the record's own time.
    let an = api.expect(Method::GET, "/v1/anomalies", &admin, None, &[200]).await;
    let list = an["anomalies"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{an}");
    let a = &list[0];
    assert_eq!(a["kind"], "new_device");
    assert_eq!(a["token_id"], "ASIA5FLZVX4OPVKKVBMX");
    assert_eq!(
        a["subject"],
        "arn:aws:sts::123456789123:assumed-role/MordorNginxStack-BankingWAFRole-9S3E0UAE1MM0/i-0317f6c6b66ae9c40"
    );
    assert_eq!(a["detected_at"], "2020-09-14T01:00:33Z");
    assert!(a["detail"].as_str().unwrap().contains("aws-cli/1.18.136"), "{a}");
    assert!(out.contains("new_device [low]"), "{out}");

    // Each event carries the record's time; the ledger's own time is now.
    let log: Vec<Value> = api.read_all(&admin).await;
    let issued: Vec<&Value> = log.iter().filter(|e| e["event_type"] == "TokenIssued").collect();
    assert_eq!(issued.len(), 5);
    let stolen = issued
        .iter()
        .find(|e| e["data"]["token_id"] == "ASIA5FLZVX4OPVKKVBMX")
        .unwrap();
    assert_eq!(stolen["metadata"]["source_time"], "2020-09-14T00:48:30Z");
    assert_eq!(stolen["data"]["context"]["device_id"], "i-0317f6c6b66ae9c40");
    assert_eq!(stolen["data"]["tenant"], "imports-aws");
    assert!(stolen["recorded_at"].as_str().unwrap() > "2026");

    // Again: nothing new.
    let (ok, out) = import(&server, &admin, "cloudtrail", &file);
    assert!(ok, "{out}");
    assert!(out.contains("appended 0 events (103 already recorded)"), "{out}");
    assert_eq!(api.read_all(&admin).await.len(), log.len());
}

#[tokio::test]
async fn the_zeek_sample_skips_protocol_steps_and_stubs_by_reason() {
    let server = start_server(&[]).await;
    let api = Api::new(server.base());
    let admin = admin_via_bootstrap(
        &api.http,
        &server.base(),
        BOOTSTRAP,
        "admin-krb",
        "imports-krb",
        Statuses::Success,
    )
    .await;
    let before = api.read_all(&admin).await.len();
    let file = sample("otrf_apt29_zeek_kerberos.ndjson");
    let (ok, out) = import(&server, &admin, "zeek-kerberos", &file);
    assert!(ok, "{out}");
    assert!(out.contains("121 records read, 74 mapped, 47 skipped"), "{out}");
    assert!(out.contains("skipped     32  no_kerberos_fields"), "{out}");
    assert!(out.contains("skipped     15  preauth_required_protocol_step"), "{out}");
    assert!(out.contains("appended 74 events (0 already recorded)"), "{out}");
    let log = api.read_all(&admin).await;
    assert_eq!(log.len(), before + 74);
    let refused = log
        .iter()
        .filter(|e| e["event_type"] == "TokenUsed" && e["data"]["outcome"] == "rejected")
        .count();
    assert_eq!(refused, 18);

    // Only an admin imports: an analyst's credential is refused and nothing
    // is written.
    let analyst = tokenledger_testkit::create_principal(
        &api.http,
        &server.base(),
        &admin,
        &serde_json::json!({"name": "ana", "role": "analyst"}),
        Statuses::Success,
    )
    .await;
    let n = api.read_all(&admin).await.len();
    let (ok, out) = import(&server, &analyst, "zeek-kerberos", &file);
    assert!(!ok, "{out}");
    assert!(out.contains("403"), "{out}");
    assert_eq!(api.read_all(&admin).await.len(), n);
}
