//! Each pipeline on a fixed fixture export, against values worked out by
//! hand from the events listed below.
//!
//! The fixture is written in the layout and with the column types of
//! `tokenledger export`: `events/date=YYYY-MM-DD/part-0.parquet` per UTC day
//! of `recorded_at`, `anomalies.parquet`, `cutoffs.parquet`. (CI also runs
//! every pipeline on a real export of a seeded simulation, which checks the
//! schema against the server's.)
//!
//! The story, all times UTC:
//!
//! | pos | recorded | event |
//! |---|---|---|
//! | 1 | 03-01 10:00 | t1 issued: web → api://orders, alice, kid k1, expires 11:00 |
//! | 2 | 03-01 10:05 | t2 issued: web → api://orders, bob, expires 10:35 |
//! | 3 | 03-01 10:10 | t3 issued: batch → api://reports, svc-batch, expires 03-02 10:10 |
//! | 4, 5 | 10:01, 10:03 | t1 used, accepted (api://orders) |
//! | 6 | 10:20 | t3 used, accepted (api://reports) |
//! | 7 | 10:21 | a forged token refused at api://orders: no token, no client |
//! | 8 | 10:30 | edge exchanges t1 into t4 (api://payments) |
//! | 9 | 10:30 | t4 issued: edge → api://payments, alice, parent t1, expires 11:30 |
//! | 10 | 10:40 | t4 used, accepted |
//! | 11 | 10:50 | t1 revoked (so t4 too, as exchanged from it) |
//! | 12 | 10:55 | t4 used, rejected (revoked) |
//! | 13 | 03-02 09:00 | t5 issued: web → api://orders, carol, expires 09:30 |
//! | 14 | 09:10 | t6 issued: web → api://orders, alice, expires 10:00 |
//! | 15 | 09:20 | every token of subject alice revoked (t6; t1 and t4 were already) |
//! | 16 | 09:30 | t7 issued: web → api://orders, alice, expires 12:00 (after the selector) |
//! | 17 | 09:41 | mint refused for web / dave by cutoff c1 |
//! | 18 | 09:42 | mint refused for web / erin by cutoff c1 |
//! | 19 | 09:43 | exchange refused for edge / alice into api://payments (scope) |
//! | 20 | 09:50 | t7 used, accepted |
//! | 21 | 11:00 | t8 imported: aws → aws:123, source time 2020-09-14 00:00, expired 01:00 |
//! | 22 | 11:05 | t9 issued: batch → api://reports, kid k2, expires 03-03 |
//! | 23 | 11:06 | key k2 revoked (so t9) |
//!
//! The export's "now" (`as_of`) is 03-02 11:06, its latest event.
//! Cutoffs: c1 (client web, engaged 09:40, until 10:40, released 10:10 by
//! soc) and c2 (subject mallory, engaged 10:30, until 10:45, not released).

use chrono::{DateTime, NaiveDate, Utc};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use tokenledger_pipelines::input::{ANOMALY_COLUMNS, CUTOFF_COLUMNS, EVENT_COLUMNS, Export, Kind, utc_micros};
use tokenledger_pipelines::{OutputFormat, compute, run};

fn t(s: &str) -> i64 {
    let s = if s.len() == 16 {
        format!("{s}:00Z")
    } else {
        format!("{s}Z")
    };
    DateTime::parse_from_rfc3339(&s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
        .timestamp_micros()
}

/// One row: its fields by column name (times as `YYYY-MM-DDTHH:MM`).
type Row = BTreeMap<&'static str, String>;

fn row(fields: &[(&'static str, &str)]) -> Row {
    fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// A frame with exactly `columns` (in the export's types) from `rows`;
/// absent fields are null.
fn frame(columns: &[(&'static str, Kind)], rows: &[Row]) -> DataFrame {
    let cols: Vec<Column> = columns
        .iter()
        .map(|(name, kind)| {
            let values = rows.iter().map(|r| r.get(name));
            match kind {
                Kind::Text => Series::new((*name).into(), values.map(|v| v.cloned()).collect::<Vec<_>>()),
                Kind::Position => Series::new(
                    (*name).into(),
                    values.map(|v| v.map(|v| v.parse::<u64>().unwrap())).collect::<Vec<_>>(),
                ),
                Kind::Time => Series::new((*name).into(), values.map(|v| v.map(|v| t(v))).collect::<Vec<_>>())
                    .cast(&utc_micros())
                    .unwrap(),
            }
            .into()
        })
        .collect();
    DataFrame::new_infer_height(cols).unwrap()
}

fn write(path: &Path, df: &mut DataFrame) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(df)
        .unwrap();
}

fn ev(pos: u32, at: &str, event_type: &str, fields: &[(&'static str, &str)]) -> Row {
    let mut r = row(fields);
    r.insert("position", pos.to_string());
    r.insert("recorded_at", at.to_owned());
    r.insert("event_type", event_type.to_owned());
    r
}

#[allow(clippy::too_many_arguments)] // one argument per column of the story above
fn issued(
    pos: u32,
    at: &str,
    id: &str,
    client: &str,
    aud: &str,
    sub: &str,
    exp: &str,
    more: &[(&'static str, &str)],
) -> Row {
    let mut r = ev(
        pos,
        at,
        "TokenIssued",
        &[
            ("token_id", id),
            ("client_id", client),
            ("audience", aud),
            ("subject", sub),
            ("issuer", "tokenledger"),
            ("format", "v4.public"),
            ("kid", "k1"),
            ("issued_at", at),
            ("expires_at", exp),
        ],
    );
    for (k, v) in more {
        r.insert(k, (*v).to_owned());
    }
    r
}

fn used(pos: u32, at: &str, id: &str, client: &str, aud: &str, sub: &str, outcome: &str) -> Row {
    ev(
        pos,
        at,
        "TokenUsed",
        &[
            ("token_id", id),
            ("client_id", client),
            ("audience", aud),
            ("subject", sub),
            ("outcome", outcome),
        ],
    )
}

#[allow(clippy::too_many_arguments)] // one argument per column of the story above
fn refused(
    pos: u32,
    at: &str,
    path: &str,
    client: &str,
    sub: &str,
    aud: &str,
    reason: &str,
    cutoff: Option<&str>,
) -> Row {
    let mut r = ev(
        pos,
        at,
        "GrantRefused",
        &[
            ("grant_path", path),
            ("client_id", client),
            ("subject", sub),
            ("audience", aud),
            ("reason", reason),
        ],
    );
    if let Some(c) = cutoff {
        r.insert("cutoff_id", c.to_owned());
    }
    r
}

fn events() -> Vec<Row> {
    let (d1, d2) = ("2026-03-01T", "2026-03-02T");
    let a = |d: &str, hm: &str| format!("{d}{hm}");
    vec![
        issued(
            1,
            &a(d1, "10:00"),
            "t1",
            "web",
            "api://orders",
            "alice",
            &a(d1, "11:00"),
            &[],
        ),
        issued(
            2,
            &a(d1, "10:05"),
            "t2",
            "web",
            "api://orders",
            "bob",
            &a(d1, "10:35"),
            &[],
        ),
        issued(
            3,
            &a(d1, "10:10"),
            "t3",
            "batch",
            "api://reports",
            "svc-batch",
            &a(d2, "10:10"),
            &[],
        ),
        used(4, &a(d1, "10:01"), "t1", "web", "api://orders", "alice", "accepted"),
        used(5, &a(d1, "10:03"), "t1", "web", "api://orders", "alice", "accepted"),
        used(
            6,
            &a(d1, "10:20"),
            "t3",
            "batch",
            "api://reports",
            "svc-batch",
            "accepted",
        ),
        ev(
            7,
            &a(d1, "10:21"),
            "TokenUsed",
            &[
                ("audience", "api://orders"),
                ("outcome", "rejected"),
                ("reason", "bad_signature"),
            ],
        ),
        ev(
            8,
            &a(d1, "10:30"),
            "TokenExchanged",
            &[
                ("token_id", "t4"),
                ("parent_token_id", "t1"),
                ("client_id", "edge"),
                ("audience", "api://payments"),
            ],
        ),
        issued(
            9,
            &a(d1, "10:30"),
            "t4",
            "edge",
            "api://payments",
            "alice",
            &a(d1, "11:30"),
            &[("parent_token_id", "t1")],
        ),
        used(10, &a(d1, "10:40"), "t4", "edge", "api://payments", "alice", "accepted"),
        ev(
            11,
            &a(d1, "10:50"),
            "TokenRevoked",
            &[("token_id", "t1"), ("reason", "compromised")],
        ),
        used(12, &a(d1, "10:55"), "t4", "edge", "api://payments", "alice", "rejected"),
        issued(
            13,
            &a(d2, "09:00"),
            "t5",
            "web",
            "api://orders",
            "carol",
            &a(d2, "09:30"),
            &[],
        ),
        issued(
            14,
            &a(d2, "09:10"),
            "t6",
            "web",
            "api://orders",
            "alice",
            &a(d2, "10:00"),
            &[],
        ),
        ev(
            15,
            &a(d2, "09:20"),
            "TokenRevoked",
            &[
                ("selector_scope", "subject"),
                ("selector_key", "alice"),
                ("reason", "offboarded"),
            ],
        ),
        issued(
            16,
            &a(d2, "09:30"),
            "t7",
            "web",
            "api://orders",
            "alice",
            &a(d2, "12:00"),
            &[],
        ),
        refused(
            17,
            &a(d2, "09:41"),
            "mint",
            "web",
            "dave",
            "api://orders",
            "cutoff",
            Some("c1"),
        ),
        refused(
            18,
            &a(d2, "09:42"),
            "mint",
            "web",
            "erin",
            "api://orders",
            "cutoff",
            Some("c1"),
        ),
        refused(
            19,
            &a(d2, "09:43"),
            "exchange",
            "edge",
            "alice",
            "api://payments",
            "scope",
            None,
        ),
        used(20, &a(d2, "09:50"), "t7", "web", "api://orders", "alice", "accepted"),
        issued(
            21,
            &a(d2, "11:00"),
            "t8",
            "aws",
            "aws:123",
            "arn:aws:iam::123:role/ci",
            "2020-09-14T01:00",
            &[
                ("format", "external"),
                ("issued_at", "2020-09-14T00:00"),
                ("source_time", "2020-09-14T00:00"),
            ],
        ),
        issued(
            22,
            &a(d2, "11:05"),
            "t9",
            "batch",
            "api://reports",
            "svc-batch",
            "2026-03-03T11:05",
            &[("kid", "k2")],
        ),
        ev(23, &a(d2, "11:06"), "SigningKeyRevoked", &[("kid", "k2")]),
    ]
}

fn anomalies() -> Vec<Row> {
    vec![
        row(&[
            ("anomaly_id", "a1"),
            ("kind", "use_after_revocation"),
            ("severity", "high"),
            ("detected_at", "2026-03-01T10:55"),
            ("subject", "alice"),
            ("client_id", "edge"),
            ("token_id", "t4"),
            ("ip", "192.0.2.7"),
        ]),
        row(&[
            ("anomaly_id", "a2"),
            ("kind", "mint_burst"),
            ("severity", "high"),
            ("detected_at", "2026-03-02T09:39"),
            ("client_id", "web"),
        ]),
        row(&[
            ("anomaly_id", "a3"),
            ("kind", "mint_burst"),
            ("severity", "high"),
            ("detected_at", "2026-03-02T09:40"),
            ("client_id", "web"),
        ]),
        row(&[
            ("anomaly_id", "a4"),
            ("kind", "concurrent_use"),
            ("severity", "medium"),
            ("detected_at", "2026-03-02T10:29"),
            ("subject", "mallory"),
            ("token_id", "t99"),
            ("ip", "198.51.100.4"),
        ]),
    ]
}

fn cutoffs() -> Vec<Row> {
    vec![
        row(&[
            ("cutoff_id", "c1"),
            ("scope", "client"),
            ("key", "web"),
            ("rule_id", "mint-burst-client"),
            ("mode", "enforce"),
            ("reason", "mint burst"),
            ("engaged_at", "2026-03-02T09:40"),
            ("until", "2026-03-02T10:40"),
            ("released_at", "2026-03-02T10:10"),
            ("released_by", "soc"),
        ]),
        row(&[
            ("cutoff_id", "c2"),
            ("scope", "subject"),
            ("key", "mallory"),
            ("rule_id", "subject-token-misuse"),
            ("mode", "enforce"),
            ("reason", "token misuse"),
            ("engaged_at", "2026-03-02T10:30"),
            ("until", "2026-03-02T10:45"),
        ]),
    ]
}

/// Writes the fixture export into `dir`, partitioned as the exporter does.
fn fixture(dir: &Path) {
    let mut by_day: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in events() {
        by_day.entry(r["recorded_at"][..10].to_owned()).or_default().push(r);
    }
    for (day, rows) in by_day {
        write(
            &dir.join("events").join(format!("date={day}")).join("part-0.parquet"),
            &mut frame(EVENT_COLUMNS, &rows),
        );
    }
    write(
        &dir.join("anomalies.parquet"),
        &mut frame(ANOMALY_COLUMNS, &anomalies()),
    );
    write(&dir.join("cutoffs.parquet"), &mut frame(CUTOFF_COLUMNS, &cutoffs()));
}

/// A cell as text: `-` for null, dates `YYYY-MM-DD`, times `MM-DD HH:MM`
/// (`YYYY-MM-DD HH:MM` outside 2026), integers as Rust prints them, floats
/// rounded to 3 decimals.
fn cell(v: AnyValue) -> String {
    match v {
        AnyValue::Null => "-".into(),
        AnyValue::String(s) => s.into(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::UInt32(n) => n.to_string(),
        AnyValue::UInt64(n) => n.to_string(),
        // Rounded to the millisecond: quantiles interpolate in binary floating point.
        AnyValue::Float64(f) => ((f * 1000.0).round() / 1000.0).to_string(),
        AnyValue::Boolean(b) => b.to_string(),
        AnyValue::Date(d) => (NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Days::new(d as u64)).to_string(),
        AnyValue::Datetime(us, TimeUnit::Microseconds, _) | AnyValue::DatetimeOwned(us, TimeUnit::Microseconds, _) => {
            let t = DateTime::from_timestamp_micros(us).unwrap();
            let full = t.format("%Y-%m-%d %H:%M").to_string();
            full.strip_prefix("2026-").map(str::to_owned).unwrap_or(full)
        }
        other => panic!("unexpected cell {other:?}"),
    }
}

/// The frame's column names, in order.
fn names(df: &DataFrame) -> Vec<&str> {
    df.get_column_names().into_iter().map(|n| n.as_str()).collect()
}

/// The frame's rows, each as its cells joined by `|`, columns in `columns` order.
fn rows(df: &DataFrame, columns: &[&str]) -> Vec<String> {
    let cols: Vec<&Column> = columns
        .iter()
        .map(|c| df.column(c).unwrap_or_else(|e| panic!("{c}: {e}")))
        .collect();
    (0..df.height())
        .map(|i| {
            cols.iter()
                .map(|c| cell(c.get(i).unwrap()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn tables(name: &str) -> BTreeMap<&'static str, DataFrame> {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let export = Export::open(dir.path()).unwrap();
    compute(name, &export).unwrap().into_iter().collect()
}

#[test]
fn daily_usage_counts_per_day_client_and_audience() {
    let t = tables("daily-usage");
    let df = &t["daily_usage"];
    assert_eq!(
        names(df),
        [
            "date",
            "client_id",
            "audience",
            "issued",
            "exchanged",
            "uses_accepted",
            "uses_rejected",
            "grants_refused",
            "tokens_used"
        ]
    );
    // date|client|audience|issued|exchanged|accepted|rejected|refused|tokens used
    assert_eq!(
        rows(df, &names(df)),
        [
            // t8 counts on its source day, not on the day it was imported.
            "2020-09-14|aws|aws:123|1|0|0|0|0|0",
            "2026-03-01|batch|api://reports|1|0|1|0|0|1",
            // t4's TokenIssued comes from the exchange: counted once, as exchanged.
            "2026-03-01|edge|api://payments|0|1|1|1|0|1",
            "2026-03-01|web|api://orders|2|0|2|0|0|1",
            // The forged token: refused at api://orders, attributed to nobody.
            "2026-03-01|-|api://orders|0|0|0|1|0|0",
            "2026-03-02|batch|api://reports|1|0|0|0|0|0",
            "2026-03-02|edge|api://payments|0|0|0|0|1|0",
            "2026-03-02|web|api://orders|3|0|1|0|2|1",
        ]
    );
}

#[test]
fn token_lifetimes_follow_uses_revocations_and_expiry() {
    let t = tables("token-lifetimes");
    let tokens = &t["tokens"];
    assert_eq!(
        rows(
            tokens,
            &[
                "token_id",
                "origin",
                "uses_accepted",
                "uses_rejected",
                "seconds_to_first_use",
                "revoked_at",
                "revoked_by",
                "status"
            ]
        ),
        [
            "t8|import|0|0|-|-|-|expired_unused",
            // Revoked directly at 10:50 on day 1; the selector of day 2 is later.
            "t1|mint|2|0|60|03-01 10:50|token|revoked",
            "t2|mint|0|0|-|-|-|expired_unused",
            "t3|mint|1|0|600|-|-|used",
            // Exchanged from t1: revoked with it.
            "t4|exchange|1|1|600|03-01 10:50|ancestor|revoked",
            "t5|mint|0|0|-|-|-|expired_unused",
            // Issued before the subject selector on alice.
            "t6|mint|0|0|-|03-02 09:20|subject|revoked",
            // Issued after it: untouched; first use 20 minutes after issue.
            "t7|mint|1|0|1200|-|-|used",
            // Signed with k2, issued before k2 was revoked.
            "t9|mint|0|0|-|03-02 11:06|kid|revoked",
        ]
    );
    let summary = &t["token_lifetimes"];
    assert_eq!(
        rows(summary, &names(summary)),
        [
            // client|audience|issued|used|revoked|expired_unused|active_unused|mean ttl|p50|p90|max
            "aws|aws:123|1|0|0|1|0|3600|-|-|-",
            // t3 (ttl 86400 s, used after 600 s), t9 (ttl 86400 s, revoked).
            "batch|api://reports|2|1|1|0|0|86400|600|600|600",
            "edge|api://payments|1|1|1|0|0|3600|600|600|600",
            // t1 3600, t2 1800, t5 1800, t6 3000, t7 9000 s: mean 3840 s.
            // First uses 60 and 1200 s: p50 630, p90 60 + 0.9 × 1140 = 1086.
            "web|api://orders|5|2|2|2|0|3840|630|1086|1200",
        ]
    );
}

#[test]
fn exchange_graph_links_the_subject_tokens_client_and_audience_to_the_new_one() {
    let t = tables("exchange-graph");
    let df = &t["exchange_edges"];
    assert_eq!(
        rows(df, &names(df)),
        ["web|api://orders|edge|api://payments|1|1|03-01 10:30|03-01 10:30"]
    );
    assert_eq!(
        names(df),
        [
            "from_client_id",
            "from_audience",
            "client_id",
            "audience",
            "exchanges",
            "subjects",
            "first_at",
            "last_at"
        ]
    );
}

#[test]
fn anomalies_daily_counts_by_kind_and_severity() {
    let t = tables("anomalies-daily");
    let df = &t["anomalies_daily"];
    assert_eq!(
        rows(df, &names(df)),
        [
            // date|kind|severity|anomalies|subjects|clients|tokens|ips
            "2026-03-01|use_after_revocation|high|1|1|1|1|1",
            "2026-03-02|concurrent_use|medium|1|1|0|1|1",
            "2026-03-02|mint_burst|high|2|0|1|0|0",
        ]
    );
}

#[test]
fn cutoff_audit_says_what_each_cutoff_blocked_and_for_how_long() {
    let t = tables("cutoff-audit");
    let audit = &t["cutoff_audit"];
    assert_eq!(
        rows(
            audit,
            &[
                "cutoff_id",
                "scope",
                "key",
                "rule_id",
                "ended_at",
                "seconds_in_force",
                "blocked",
                "blocked_mint",
                "blocked_exchange",
                "blocked_clients",
                "blocked_subjects",
                "first_blocked_at",
                "last_blocked_at"
            ]
        ),
        [
            // Released by the SOC after 30 minutes; it refused two mints.
            "c1|client|web|mint-burst-client|03-02 10:10|1800|2|2|0|1|2|03-02 09:41|03-02 09:42",
            // Lapsed at its `until` (before the export's 11:06); blocked nothing.
            "c2|subject|mallory|subject-token-misuse|03-02 10:45|900|0|0|0|0|0|-|-",
        ]
    );
    let daily = &t["cutoffs_daily"];
    assert_eq!(
        rows(daily, &names(daily)),
        // date|engaged|released|refused by a cutoff|refused otherwise
        ["2026-03-02|2|1|2|1"]
    );
}

#[test]
fn run_writes_every_table_as_parquet_or_csv() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("export"), dir.path().join("out"));
    fixture(&input);
    let written = run("all", &input, &out, OutputFormat::Parquet).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|(p, n)| format!("{}:{n}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert_eq!(
        names,
        [
            "daily_usage.parquet:8",
            "tokens.parquet:9",
            "token_lifetimes.parquet:4",
            "exchange_edges.parquet:1",
            "anomalies_daily.parquet:3",
            "cutoff_audit.parquet:2",
            "cutoffs_daily.parquet:1"
        ]
    );
    let back = ParquetReader::new(std::fs::File::open(out.join("daily_usage.parquet")).unwrap())
        .finish()
        .unwrap();
    assert_eq!(back.height(), 8);
    assert_eq!(back.column("date").unwrap().dtype(), &DataType::Date);

    run("cutoff-audit", &input, &out, OutputFormat::Csv).unwrap();
    let csv = std::fs::read_to_string(out.join("cutoffs_daily.csv")).unwrap();
    assert_eq!(
        csv,
        "date,engaged,released,refused_by_cutoff,refused_other\n2026-03-02,2,1,2,1\n"
    );
    let audit = std::fs::read_to_string(out.join("cutoff_audit.csv")).unwrap();
    let c1 = audit.lines().nth(1).unwrap();
    assert!(
        c1.starts_with("c1,client,web,mint-burst-client,enforce,mint burst,2026-03-02T09:40:00.000000Z,"),
        "{c1}"
    );
    assert!(c1.contains(",2026-03-02T10:10:00.000000Z,1800.0,2,2,0,1,2,"), "{c1}");
}

#[test]
fn bad_input_is_named_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("export"), dir.path().join("out"));
    let e = run("all", &input, &out, OutputFormat::Parquet).unwrap_err();
    assert!(e.to_string().contains("not a tokenledger export"), "{e}");

    fixture(&input);
    let e = run("daily-usages", &input, &out, OutputFormat::Parquet).unwrap_err();
    assert!(e.to_string().contains("unknown pipeline \"daily-usages\""), "{e}");

    std::fs::remove_file(input.join("cutoffs.parquet")).unwrap();
    let e = run("all", &input, &out, OutputFormat::Parquet).unwrap_err();
    assert!(e.to_string().contains("cutoffs.parquet: missing"), "{e}");

    // A damaged file is named.
    fixture(&input);
    std::fs::write(input.join("anomalies.parquet"), b"not parquet").unwrap();
    let e = run("all", &input, &out, OutputFormat::Parquet).unwrap_err();
    assert!(e.to_string().contains("anomalies.parquet: "), "{e}");

    // A partition copied since the export (day 2: 11 more events): the
    // manifest's counts disagree.
    fixture(&input);
    std::fs::write(
        input.join("manifest.json"),
        r#"{"events": {"rows": 23, "position": 23}, "anomalies": {"rows": 4, "position": 23}}"#,
    )
    .unwrap();
    run("all", &input, &out.join("ok"), OutputFormat::Parquet).expect("counts agree");
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::create_dir_all(input.join("events/date=2026-03-03")).unwrap();
    std::fs::copy(
        input.join("events/date=2026-03-02/part-0.parquet"),
        input.join("events/date=2026-03-03/part-0.parquet"),
    )
    .unwrap();
    let e = run("all", &input, &out, OutputFormat::Parquet).unwrap_err();
    assert!(
        e.to_string()
            .contains("events: the files hold 34 rows, manifest.json says 23"),
        "{e}"
    );
    std::fs::remove_dir_all(input.join("events/date=2026-03-03")).unwrap();
    std::fs::remove_file(input.join("manifest.json")).unwrap();

    // One level too high (`demo --export` writes one export per tenant): the
    // error names the export inside.
    let e = run("all", dir.path(), &out, OutputFormat::Parquet).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("exports found inside it: {}", input.display())),
        "{e}"
    );

    // An events partition whose `recorded_at` is text, not UTC microseconds.
    fixture(&input);
    let mut bad = df!("position" => [1u64], "recorded_at" => ["2026-03-01T10:00:00Z"]).unwrap();
    write(&input.join("events/date=2026-03-03/part-0.parquet"), &mut bad);
    let e = run("all", &input, &out, OutputFormat::Parquet).unwrap_err();
    assert!(e.to_string().contains("events"), "{e}");
    assert!(!out.exists(), "nothing was written");
}
