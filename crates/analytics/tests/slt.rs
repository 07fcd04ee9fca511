//! SQL examples as tests: every `tests/slt/*.slt` file (sqllogictest
//! format: query, `----`, expected rows) runs as tenant `acme` over the
//! fixed fixture `tests/fixture/events.jsonl` (two tenants; every value of
//! tenant `globex` carries a marker), once per session time zone: event
//! times are UTC, and the zone must not change which rows match.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqllogictest::{DBOutput, DefaultColumnType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokenledger_analytics::engine::{context_in_zone, read_only};
use tokenledger_analytics::{Analytics, Limits};
use tokenledger_store::{Position, RecordedEvent};

/// The time of the question for `active_tokens` in every test.
pub const NOW: &str = "2026-03-03T09:45:00Z";
/// Every string of the other tenant contains this.
pub const MARKER: &str = "MARKER-7f3a";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The fixture as recorded events: positions from 1 in file order,
/// revisions counted per (tenant, stream), deterministic event ids.
pub fn fixture() -> Vec<Arc<RecordedEvent>> {
    let text = std::fs::read_to_string(fixture_dir().join("fixture/events.jsonl")).expect("fixture");
    let mut revisions: HashMap<(String, String), u64> = HashMap::new();
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line).expect("fixture line");
            let tenant = v["tenant"].as_str().unwrap().to_owned();
            let stream = v["stream"].as_str().unwrap().to_owned();
            let rev = revisions.entry((tenant.clone(), stream.clone())).or_insert(0);
            let revision = *rev;
            *rev += 1;
            Arc::new(RecordedEvent {
                event_id: uuid::Uuid::from_u128(0x1000 + i as u128),
                event_type: v["event_type"].as_str().unwrap().to_owned(),
                tenant,
                stream,
                revision,
                position: Position(i as u64 + 1),
                recorded_at: v["recorded_at"].as_str().unwrap().parse().unwrap(),
                data: v["data"].clone(),
                metadata: v["metadata"].clone(),
            })
        })
        .collect()
}

fn no_kid(_: &str) -> Option<String> {
    None
}

/// The fixture folded into an analytics projection.
pub fn analytics() -> Arc<Analytics> {
    let a = Arc::new(Analytics::new(no_kid, Limits::default(), 2));
    a.apply(&fixture());
    a
}

#[derive(Debug)]
struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

struct Db {
    analytics: Arc<Analytics>,
    zone: &'static str,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) if s.is_empty() => "(empty)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let now: DateTime<Utc> = NOW.parse().unwrap();
        let snap = self.analytics.snapshot("acme", now);
        let ctx = context_in_zone(snap, 256 << 20, self.zone).map_err(|e| Error(e.to_string()))?;
        let run = async {
            let df = ctx.sql_with_options(sql, read_only()).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            Ok::<_, datafusion_error::DataFusionError>((schema, batches))
        };
        let (schema, batches) = run.await.map_err(|e| Error(e.strip_backtrace()))?;
        let json = tokenledger_analytics::encode::to_json(&schema, &batches);
        let rows: Vec<Vec<String>> = json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(cell).collect())
            .collect();
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; schema.fields().len()],
            rows,
        })
    }

    async fn shutdown(&mut self) {}
}

mod datafusion_error {
    pub use tokenledger_analytics::engine::DataFusionError;
}

/// The `.slt` files, sorted.
pub fn slt_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir().join("slt"))
        .expect("tests/slt")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_slt_file_passes_in_every_session_time_zone() {
    let analytics = analytics();
    let files = slt_files();
    assert!(files.len() >= 3, "expected the example files, found {files:?}");
    for zone in ["+00:00", "+05:30", "-08:00", "America/New_York", "Asia/Kolkata"] {
        for file in &files {
            let a = analytics.clone();
            let mut runner = sqllogictest::Runner::new(move || {
                let a = a.clone();
                async move { Ok(Db { analytics: a, zone }) }
            });
            if let Err(e) = runner.run_file_async(file).await {
                panic!("{} in time zone {zone}: {e}", file.display());
            }
        }
    }
}

#[tokio::test]
async fn no_answer_and_no_error_of_tenant_acme_mentions_the_other_tenant() {
    let analytics = analytics();
    let hostile = [
        "SELECT * FROM events",
        "SELECT * FROM active_tokens",
        "SELECT * FROM block_list",
        "SELECT * FROM keys",
        "SELECT * FROM cutoffs",
        "SELECT e.*, a.* FROM events e FULL OUTER JOIN active_tokens a ON true",
        "SELECT * FROM events WHERE position IN (SELECT position FROM events)",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM datafusion.information_schema.columns",
        "SHOW TABLES",
        "SELECT * FROM 'crates/analytics/tests/fixture/events.jsonl'",
        "SELECT * FROM read_csv('crates/analytics/tests/fixture/events.jsonl')",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION 'crates/analytics/tests/fixture/events.jsonl'",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "SELECT * FROM events WHERE subject = 'sub-MARKER-7f3a'",
        "SELECT count(*) FROM events WHERE tenant = 'globex'",
        "SET datafusion.execution.time_zone = 'UTC'",
    ];
    let mut queries: Vec<String> = hostile.iter().map(|s| s.to_string()).collect();
    for file in slt_files() {
        for r in sqllogictest::parse_file::<DefaultColumnType>(&file).unwrap() {
            if let sqllogictest::Record::Query { sql, .. } | sqllogictest::Record::Statement { sql, .. } = r {
                queries.push(sql);
            }
        }
    }
    let now: DateTime<Utc> = NOW.parse().unwrap();
    for sql in &queries {
        let answer = analytics.query(analytics.snapshot("acme", now), sql).await;
        let text = match answer {
            Ok((schema, batches)) => tokenledger_analytics::encode::to_json(&schema, &batches).to_string(),
            Err(e) => e.to_string(),
        };
        assert!(!text.contains(MARKER), "{sql:?} leaked the other tenant: {text}");
        assert!(
            !text.contains("SEALED") && !text.contains("HASH-"),
            "{sql:?} leaked a secret: {text}"
        );
    }
    // The marker is there to be found: tenant globex sees it.
    let (schema, batches) = analytics
        .query(
            analytics.snapshot("globex", now),
            "SELECT subject FROM events WHERE subject IS NOT NULL",
        )
        .await
        .unwrap();
    assert!(
        tokenledger_analytics::encode::to_json(&schema, &batches)
            .to_string()
            .contains(MARKER)
    );
}

#[tokio::test]
async fn ddl_dml_and_statements_are_refused_and_change_nothing() {
    let analytics = analytics();
    let now: DateTime<Utc> = NOW.parse().unwrap();
    for sql in [
        "DELETE FROM events",
        "INSERT INTO events (position) VALUES (1)",
        "DROP TABLE events",
        "CREATE TABLE x AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "SET datafusion.execution.time_zone = '+01:00'",
        "COPY events TO '/tmp/tokenledger-copy.csv'",
    ] {
        let r = analytics.query(analytics.snapshot("acme", now), sql).await;
        assert!(
            matches!(r, Err(tokenledger_analytics::SqlError::Invalid(_))),
            "{sql}: {r:?}"
        );
    }
    let (_, b) = analytics
        .query(analytics.snapshot("acme", now), "SELECT count(*) FROM events")
        .await
        .unwrap();
    assert_eq!(
        tokenledger_analytics::encode::to_json(&b[0].schema(), &b)["rows"],
        serde_json::json!([[20]])
    );
}

#[tokio::test]
async fn row_cap_and_memory_limit_refuse_the_query() {
    let a = Arc::new(Analytics::new(
        no_kid,
        Limits {
            max_rows: 3,
            ..Limits::default()
        },
        1,
    ));
    a.apply(&fixture());
    let now: DateTime<Utc> = NOW.parse().unwrap();
    let r = a.query(a.snapshot("acme", now), "SELECT * FROM events").await;
    assert!(matches!(r, Err(tokenledger_analytics::SqlError::Limit(_))), "{r:?}");
    let r = a.query(a.snapshot("acme", now), "SELECT * FROM events LIMIT 3").await;
    assert_eq!(r.unwrap().1.iter().map(|b| b.num_rows()).sum::<usize>(), 3);

    let small = Arc::new(Analytics::new(
        no_kid,
        Limits {
            memory_bytes: 1024,
            ..Limits::default()
        },
        1,
    ));
    small.apply(&fixture());
    let r = small
        .query(
            small.snapshot("acme", now),
            "SELECT a.position, b.position FROM events a, events b, events c ORDER BY a.stream, b.event_id, c.event_id",
        )
        .await;
    assert!(matches!(r, Err(tokenledger_analytics::SqlError::Limit(_))), "{r:?}");
}
