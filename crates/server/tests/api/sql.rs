//! `POST /v1/sql` and `GET /v1/export/{table}` through HTTP (DESIGN.md
//! "Roles", "Errors", "Wire shapes": SQL): who may ask, in which order the
//! checks run, that DDL, DML and statements are refused and change nothing,
//! what the answers hold as JSON and as an Arrow IPC stream, the row cap —
//! and that a tenant's analyst never sees anything of another tenant: not
//! in rows, not in errors, not in plans, not in exports.

use crate::support::*;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tokenledger_analytics::arrow::array::{AsArray, RecordBatch};
use tokenledger_analytics::arrow::datatypes::{SchemaRef, UInt64Type};
use tokenledger_analytics::arrow::ipc::reader::StreamReader;
use tokenledger_analytics::encode::to_json;
use tokenledger_server::config::ServeArgs;
use tower::ServiceExt;

/// The media type of an Arrow IPC stream.
const ARROW: &str = "application/vnd.apache.arrow.stream";

/// Tenant B: every string planted in it contains [`MARK`] (its name too).
const TB: &str = "zzmarkerb-corp";
/// The marker, lower case (principal names must be); answers are searched
/// case-insensitively.
const MARK: &str = "zzmarkerb";

/// `POST /v1/sql` as `who`, JSON answer.
async fn sql(app: &TestApp, who: &str, q: &str) -> Answer {
    app.call("POST", "/v1/sql", Some(who), Some(json!({"sql": q}))).await
}

/// A request whose answer is kept as raw bytes (an Arrow stream is not text).
async fn raw(
    app: &TestApp,
    method: &str,
    path: &str,
    who: Option<&str>,
    accept: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = who {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(a) = accept {
        b = b.header(header::ACCEPT, a);
    }
    let req = match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap())),
        None => b.body(Body::empty()),
    }
    .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

/// `POST /v1/sql` as `who` with `Accept: application/vnd.apache.arrow.stream`.
async fn sql_arrow(app: &TestApp, who: &str, q: &str) -> (StatusCode, HeaderMap, Bytes) {
    raw(app, "POST", "/v1/sql", Some(who), Some(ARROW), Some(json!({"sql": q}))).await
}

/// Decodes an Arrow IPC stream.
#[track_caller]
fn decode(bytes: &[u8]) -> (SchemaRef, Vec<RecordBatch>) {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).expect("an Arrow IPC stream");
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().expect("Arrow IPC batches");
    (schema, batches)
}

fn content_type(h: &HeaderMap) -> Option<&str> {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// The `rows` of a 200 JSON answer.
#[track_caller]
fn rows(a: &Answer) -> &Vec<Value> {
    assert_eq!(a.0, StatusCode::OK, "{}", a.2);
    a.2["rows"].as_array().unwrap_or_else(|| panic!("no rows in {}", a.2))
}

/// Expects a 200 JSON answer whose single row is a single count.
#[track_caller]
fn single_count(a: &Answer) -> u64 {
    let r = rows(a);
    assert_eq!(r.len(), 1, "{}", a.2);
    r[0][0].as_u64().unwrap_or_else(|| panic!("not a count: {}", a.2))
}

/// Tenant acme: an analyst, an issuer that minted three tokens, a soc that
/// revoked the first, a validator that verified the second.
struct Acme {
    app: TestApp,
    analyst: String,
    issuer: String,
    token_ids: Vec<String>,
}

async fn acme() -> Acme {
    acme_with(ServeArgs::default()).await
}

async fn acme_with(args: ServeArgs) -> Acme {
    let app = TestApp::with_args(args).await;
    let analyst = app.principal("an", "analyst", "acme").await;
    let issuer = app.minter("iss", "acme").await;
    let gw = app.principal("gw", "validator", "acme").await;
    let soc = app.principal("soc", "soc", "acme").await;
    let mut tokens = Vec::new();
    let mut token_ids = Vec::new();
    for subject in ["alice", "bob", "carol"] {
        let m = app.mint_ok(&issuer, subject).await;
        tokens.push(m["token"].as_str().unwrap().to_owned());
        token_ids.push(m["token_id"].as_str().unwrap().to_owned());
    }
    let (st, _, r) = app
        .call(
            "POST",
            "/v1/revocations",
            Some(&soc),
            Some(json!({"token_id": token_ids[0], "reason": "laptop stolen"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let (st, _, v) = app
        .call(
            "POST",
            "/v1/tokens/verify",
            Some(&gw),
            Some(json!({"token": tokens[1], "audience": "api://orders",
                        "context": {"ip": "203.0.113.9", "user_agent": "curl/8", "device_id": "dev-1"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["active"], true, "{v}");
    Acme {
        app,
        analyst,
        issuer,
        token_ids,
    }
}

// ---------------------------------------------------------------------------
// Who may ask, and in which order the checks run.

#[tokio::test]
async fn sql_and_export_answer_analysts_and_admins_and_refuse_every_other_role() {
    let w = acme().await;
    let app = &w.app;
    let admin = app.admin("acme").await;
    for who in [&w.analyst, &admin] {
        let a = sql(app, who, "SELECT count(*) FROM events").await;
        assert!(single_count(&a) > 0, "{}", a.2);
        let (st, h, _) = raw(app, "GET", "/v1/export/events", Some(who), None, None).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(content_type(&h), Some(ARROW));
    }
    let validator = app.principal("val", "validator", "acme").await;
    let soc = app.principal("soc2", "soc", "acme").await;
    for who in [w.issuer.as_str(), validator.as_str(), soc.as_str(), BOOT] {
        let a = sql(app, who, "SELECT count(*) FROM events").await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        let a = app.call("GET", "/v1/export/events", Some(who), None).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    assert_unauthenticated(
        &app.call("POST", "/v1/sql", None, Some(json!({"sql": "SELECT 1"})))
            .await,
    );
    assert_unauthenticated(&app.call("GET", "/v1/export/events", None, None).await);
    assert_unauthenticated(
        &app.call(
            "POST",
            "/v1/sql",
            Some("tl_nobody_nothing"),
            Some(json!({"sql": "SELECT 1"})),
        )
        .await,
    );
}

#[tokio::test]
async fn the_body_is_checked_after_the_credential_and_the_role() {
    let w = acme().await;
    let app = &w.app;
    let bad_bodies: [&str; 7] = [
        "{not json",
        "",
        r#"{"sql": "SELECT 1", "sql": "SELECT 2"}"#,
        r#"{"sql": "SELECT 1", "limit": 10}"#,
        r#"{"sql": 1}"#,
        r#"{}"#,
        r#"["SELECT 1"]"#,
    ];
    for body in bad_bodies {
        let send = async |who: Option<&str>| {
            app.send("POST", "/v1/sql", who, Some("application/json"), body.to_owned())
                .await
        };
        assert_unauthenticated(&send(None).await);
        assert_problem(&send(Some(&w.issuer)).await, StatusCode::FORBIDDEN, "role-not-allowed");
        assert_problem(&send(Some(BOOT)).await, StatusCode::FORBIDDEN, "role-not-allowed");
        let a = send(Some(&w.analyst)).await;
        assert_eq!(a.0, StatusCode::BAD_REQUEST, "{body:?}: {}", a.2);
        let kind = a.2["type"].as_str().unwrap_or_default();
        assert!(
            kind == format!("{PROBLEM}malformed-json") || kind == format!("{PROBLEM}invalid-body"),
            "{body:?}: {}",
            a.2
        );
        assert_problem(&a, StatusCode::BAD_REQUEST, kind.trim_start_matches(PROBLEM));
    }
    for (body, kind) in [
        ("{not json", "malformed-json"),
        (r#"{"sql": "SELECT 1", "limit": 10}"#, "invalid-body"),
        (r#"{"sql": 1}"#, "invalid-body"),
        (r#"{"sql": null}"#, "invalid-body"),
    ] {
        let a = app
            .send(
                "POST",
                "/v1/sql",
                Some(&w.analyst),
                Some("application/json"),
                body.to_owned(),
            )
            .await;
        assert_problem(&a, StatusCode::BAD_REQUEST, kind);
    }
}

// ---------------------------------------------------------------------------
// Read-only.

#[tokio::test]
async fn ddl_dml_and_statements_are_refused_with_datafusions_message_and_change_nothing() {
    let w = acme().await;
    let app = &w.app;
    let count = "SELECT count(*) FROM events";
    let before = single_count(&sql(app, &w.analyst, count).await);
    let log_before = app.log_len().await;
    let admin = app.admin("acme").await;
    let cases: [(&str, &[&str]); 15] = [
        ("DELETE FROM events", &["DML not supported"]),
        ("DELETE FROM events WHERE true", &["DML not supported"]),
        ("INSERT INTO events (position) VALUES (1)", &["DML not supported"]),
        ("INSERT INTO events SELECT * FROM events", &["DML not supported"]),
        ("UPDATE events SET subject = 'x'", &["DML not supported"]),
        ("DROP TABLE events", &["DDL not supported"]),
        ("DROP TABLE IF EXISTS active_tokens", &["DDL not supported"]),
        ("CREATE TABLE x AS SELECT 1", &["DDL not supported"]),
        ("CREATE TABLE x (a INT)", &["DDL not supported"]),
        ("CREATE VIEW v AS SELECT * FROM events", &["DDL not supported"]),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            &["DDL not supported"],
        ),
        (
            "SET datafusion.execution.time_zone = '+01:00'",
            &["Statement not supported"],
        ),
        ("SET datafusion.execution.batch_size = 1", &["Statement not supported"]),
        (
            "COPY events TO '/tmp/tokenledger-sql-test-copy.csv'",
            &["DML not supported"],
        ),
        // Refused while planning: no Parquet writer is registered.
        (
            "COPY (SELECT * FROM events) TO '/tmp/tokenledger-sql-test-copy.parquet'",
            &["DML not supported", "no registered file format"],
        ),
    ];
    for (q, messages) in cases {
        for who in [&w.analyst, &admin] {
            let a = sql(app, who, q).await;
            assert_problem(&a, StatusCode::BAD_REQUEST, "sql-error");
            let detail = a.2["detail"].as_str().unwrap();
            assert!(
                messages.iter().any(|m| detail.contains(m)),
                "{q}: detail {detail:?} should carry one of {messages:?}"
            );
        }
        let (st, h, b) = sql_arrow(app, &w.analyst, q).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q} with Accept: arrow");
        assert_eq!(content_type(&h), Some("application/problem+json"), "{q}");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], format!("{PROBLEM}sql-error"), "{v}");
    }
    for path in [
        "/tmp/tokenledger-sql-test-copy.csv",
        "/tmp/tokenledger-sql-test-copy.parquet",
    ] {
        assert!(!Path::new(path).exists(), "COPY wrote {path}");
    }
    assert_eq!(app.log_len().await, log_before, "a refused query appended something");
    assert_eq!(single_count(&sql(app, &w.analyst, count).await), before);
    for table in ["events", "active_tokens", "block_list", "keys"] {
        let a = sql(app, &w.analyst, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(a.0, StatusCode::OK, "{table} still there: {}", a.2);
    }
    // Syntax errors and unknown names are the same kind, with DataFusion's words.
    for (q, message) in [
        ("SELEC 1", "SELEC"),
        ("SELECT * FROM nope", "nope"),
        ("SELECT no_such_column FROM events", "no_such_column"),
        ("SELECT * FROM events WHERE tenant = 'acme'", "tenant"),
    ] {
        let a = sql(app, &w.analyst, q).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "sql-error");
        let detail = a.2["detail"].as_str().unwrap();
        assert!(detail.contains(message), "{q}: {detail:?}");
    }
}

// ---------------------------------------------------------------------------
// What the answers hold.

#[tokio::test]
async fn active_tokens_and_block_list_follow_minting_and_revocation() {
    let w = acme().await;
    let app = &w.app;
    let a = sql(app, &w.analyst, "SELECT count(*) FROM active_tokens").await;
    assert_eq!(a.0, StatusCode::OK, "{}", a.2);
    assert_eq!(a.2, json!({"columns": ["count(*)"], "rows": [[2]]}));
    assert_eq!(
        content_type(&a.1),
        Some("application/json"),
        "a JSON answer without an Accept header"
    );

    let a = sql(app, &w.analyst, "SELECT kind, token_id FROM block_list").await;
    assert_eq!(
        a.2,
        json!({"columns": ["kind", "token_id"], "rows": [["token", w.token_ids[0]]]})
    );

    let a = sql(
        app,
        &w.analyst,
        "SELECT token_id, subject FROM active_tokens ORDER BY position",
    )
    .await;
    assert_eq!(
        a.2["rows"],
        json!([[w.token_ids[1], "bob"], [w.token_ids[2], "carol"]]),
        "{}",
        a.2
    );

    // The events behind them.
    let a = sql(
        app,
        &w.analyst,
        "SELECT event_type, count(*) AS n FROM events WHERE event_type IN ('TokenIssued', 'TokenRevoked', 'TokenUsed') \
         GROUP BY event_type ORDER BY event_type",
    )
    .await;
    assert_eq!(
        a.2,
        json!({"columns": ["event_type", "n"], "rows": [["TokenIssued", 3], ["TokenRevoked", 1], ["TokenUsed", 1]]})
    );
    let a = sql(
        app,
        &w.analyst,
        "SELECT validator, outcome, token_id, subject, ip, user_agent, device_id FROM events WHERE event_type = 'TokenUsed'",
    )
    .await;
    assert_eq!(
        a.2["rows"],
        json!([[
            "gw",
            "accepted",
            w.token_ids[1],
            "bob",
            "203.0.113.9",
            "curl/8",
            "dev-1"
        ]])
    );

    // Time of the question: once the tokens expire, nothing is active.
    w.app.clock.set(w.app.now() + chrono::Duration::seconds(301));
    let a = sql(app, &w.analyst, "SELECT count(*) FROM active_tokens").await;
    assert_eq!(a.2["rows"], json!([[0]]), "{}", a.2);

    // The answer names the position it was taken at: the head of the log.
    let pos: u64 = a.1["tokenledger-position"].to_str().unwrap().parse().unwrap();
    assert_eq!(pos, app.log_len().await as u64);
}

#[tokio::test]
async fn an_arrow_accept_header_gets_an_ipc_stream_with_the_same_rows_as_the_json_answer() {
    let w = acme().await;
    let app = &w.app;
    let queries = [
        "SELECT count(*) FROM active_tokens",
        "SELECT * FROM active_tokens ORDER BY position",
        "SELECT * FROM block_list",
        "SELECT * FROM keys",
        "SELECT * FROM events ORDER BY position",
        "SELECT event_type, count(*) AS n, min(recorded_at) AS first FROM events GROUP BY event_type ORDER BY event_type",
        "SELECT * FROM events WHERE false",
    ];
    for q in queries {
        let json_answer = sql(app, &w.analyst, q).await;
        assert_eq!(json_answer.0, StatusCode::OK, "{q}: {}", json_answer.2);
        for accept in [
            ARROW,
            "application/vnd.apache.arrow.stream; q=1",
            "application/json;q=0.5, application/vnd.apache.arrow.stream",
        ] {
            let (st, h, bytes) = raw(
                app,
                "POST",
                "/v1/sql",
                Some(&w.analyst),
                Some(accept),
                Some(json!({"sql": q})),
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{q}");
            assert_eq!(content_type(&h), Some(ARROW), "{q} with Accept {accept:?}");
            assert!(h.get("tokenledger-position").is_some());
            let (schema, batches) = decode(&bytes);
            assert_eq!(
                to_json(&schema, &batches),
                json_answer.2,
                "{q}: Arrow and JSON disagree"
            );
        }
    }
    // The schema travels with the stream even when there are no rows.
    let (_, _, bytes) = sql_arrow(
        app,
        &w.analyst,
        "SELECT position, recorded_at, subject FROM events WHERE false",
    )
    .await;
    let (schema, batches) = decode(&bytes);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["position", "recorded_at", "subject"]);
    // The count of active tokens, read as a number from the stream.
    let (_, _, bytes) = sql_arrow(app, &w.analyst, "SELECT count(*) FROM active_tokens").await;
    let (_, batches) = decode(&bytes);
    let total: i64 = batches
        .iter()
        .map(|b| {
            b.column(0)
                .as_primitive::<tokenledger_analytics::arrow::datatypes::Int64Type>()
                .value(0)
        })
        .sum();
    assert_eq!(total, 2);
    // Other Accept values get JSON.
    for accept in [
        "application/json",
        "*/*",
        "text/csv",
        "application/vnd.apache.arrow.file",
    ] {
        let (st, h, bytes) = raw(
            app,
            "POST",
            "/v1/sql",
            Some(&w.analyst),
            Some(accept),
            Some(json!({"sql": "SELECT count(*) FROM active_tokens"})),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(content_type(&h), Some("application/json"), "Accept {accept:?}");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["rows"], json!([[2]]));
    }
}

// ---------------------------------------------------------------------------
// Export.

#[tokio::test]
async fn export_streams_exactly_the_tenants_rows_and_knows_its_tables() {
    let w = acme().await;
    let app = &w.app;
    let b = plant_tenant_b(app).await;
    let (st, h, bytes) = raw(app, "GET", "/v1/export/events", Some(&w.analyst), None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(content_type(&h), Some(ARROW));
    let pos: u64 = h["tokenledger-position"].to_str().unwrap().parse().unwrap();
    assert_eq!(pos, app.log_len().await as u64);
    let (schema, batches) = decode(&bytes);
    let idx = schema.index_of("position").unwrap();
    let positions: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.column(idx).as_primitive::<UInt64Type>().values().to_vec())
        .collect();
    let expected: Vec<u64> = app.log("acme").await.iter().map(|e| e.position.0).collect();
    assert!(expected.len() > 10);
    assert_eq!(positions, expected, "the export holds exactly acme's events, in order");
    let ids_idx = schema.index_of("event_id").unwrap();
    let ids: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let a = b.column(ids_idx).as_string::<i32>();
            a.iter().map(|v| v.unwrap_or_default().to_owned()).collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = app.log("acme").await.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(ids, expected);
    assert!(!String::from_utf8_lossy(&bytes).to_lowercase().contains(MARK));
    // The same table through SQL.
    let a = sql(app, &w.analyst, "SELECT * FROM events ORDER BY position").await;
    assert_eq!(to_json(&schema, &batches), a.2);

    // Tenant B's export holds B's events and no others.
    let (st, _, bytes) = raw(app, "GET", "/v1/export/events", Some(&b), None, None).await;
    assert_eq!(st, StatusCode::OK);
    let (schema, batches) = decode(&bytes);
    let idx = schema.index_of("position").unwrap();
    let positions: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.column(idx).as_primitive::<UInt64Type>().values().to_vec())
        .collect();
    let expected: Vec<u64> = app.log(TB).await.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, expected);

    // Every view exports; the active tokens are the ones SQL shows.
    for table in ["active_tokens", "block_list", "keys"] {
        let (st, h, bytes) = raw(app, "GET", &format!("/v1/export/{table}"), Some(&w.analyst), None, None).await;
        assert_eq!(st, StatusCode::OK, "{table}");
        assert_eq!(content_type(&h), Some(ARROW));
        let (schema, batches) = decode(&bytes);
        let a = sql(app, &w.analyst, &format!("SELECT * FROM {table}")).await;
        assert_eq!(to_json(&schema, &batches), a.2, "{table}");
        assert!(!String::from_utf8_lossy(&bytes).to_lowercase().contains(MARK));
    }

    for table in [
        "nope",
        "information_schema.tables",
        "EVENTS",
        "events.parquet",
        "..%2Fevents",
    ] {
        let a = app
            .call("GET", &format!("/v1/export/{table}"), Some(&w.analyst), None)
            .await;
        assert_problem(&a, StatusCode::NOT_FOUND, "unknown-table");
        assert!(!a.2.to_string().to_lowercase().contains(MARK));
    }
    let a = app.call("GET", "/v1/export/events", Some(&w.issuer), None).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    // The role is checked before the table is looked up.
    let a = app.call("GET", "/v1/export/nope", Some(&w.issuer), None).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    assert_unauthenticated(&app.call("GET", "/v1/export/nope", None, None).await);
}

// ---------------------------------------------------------------------------
// Limits.

#[tokio::test]
async fn an_answer_over_the_row_cap_is_refused_and_exports_are_not_capped() {
    let w = acme_with(ServeArgs {
        sql_max_rows: Some(3),
        ..ServeArgs::default()
    })
    .await;
    let app = &w.app;
    let a = sql(app, &w.analyst, "SELECT * FROM events").await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "sql-limit");
    let (st, h, _) = sql_arrow(app, &w.analyst, "SELECT * FROM events").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(content_type(&h), Some("application/problem+json"));
    let a = sql(app, &w.analyst, "SELECT position FROM events ORDER BY position LIMIT 3").await;
    assert_eq!(rows(&a).len(), 3);
    let a = sql(app, &w.analyst, "SELECT count(*) FROM events").await;
    let n = single_count(&a);
    assert!(n > 3);
    let (st, _, bytes) = raw(app, "GET", "/v1/export/events", Some(&w.analyst), None, None).await;
    assert_eq!(st, StatusCode::OK);
    let (_, batches) = decode(&bytes);
    assert_eq!(batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(), n);
}

#[tokio::test]
async fn a_query_over_the_memory_budget_is_refused_as_a_limit() {
    let w = acme_with(ServeArgs {
        sql_memory_mb: Some(1),
        ..ServeArgs::default()
    })
    .await;
    let app = &w.app;
    // A hash join whose build side is far larger than 1 MiB, reduced to one row.
    let side = "SELECT a.event_id || b.event_id || c.event_id || d.event_id AS k \
                FROM events a, events b, events c, events d";
    let q = format!("SELECT count(*) FROM ({side}) x JOIN ({side}) y ON x.k = y.k");
    let q = q.as_str();
    let a = sql(app, &w.analyst, q).await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "sql-limit");
    // A small query still answers.
    let a = sql(app, &w.analyst, "SELECT count(*) FROM events").await;
    assert!(single_count(&a) > 0);
}

// ---------------------------------------------------------------------------
// Isolation.

/// Creates tenant B ([`TB`]) through the API, with the marker in every
/// string a caller can choose: principal names (client ids, validator,
/// actor), subjects, audiences, scopes, a refused grant, verify contexts,
/// reported uses, revocation reasons and selectors, an exchange. Returns the
/// credential of B's analyst.
async fn plant_tenant_b(app: &TestApp) -> String {
    let client = "svc-zzmarkerb";
    let aud = "api://zzmarkerb-orders";
    let iss = app.principal(client, "issuer", TB).await;
    app.policy(
        TB,
        client,
        json!({
            "audiences": {aud: {"scopes": ["zzmarkerb:read", "zzmarkerb:write"], "max_ttl_seconds": 3600}},
            "formats": ["v4.public", "v4.local"],
            "serves": [aud],
        }),
    )
    .await;
    let gw = app.principal("gw-zzmarkerb", "validator", TB).await;
    let soc = app.principal("soc-zzmarkerb", "soc", TB).await;
    let analyst = app.principal("analyst-zzmarkerb", "analyst", TB).await;

    let mut tokens = Vec::new();
    for i in 0..3 {
        let (st, _, b) = app
            .mint(
                &iss,
                json!({"subject": format!("zzmarkerb-subject-{i}"), "audience": aud,
                       "scope": "zzmarkerb:read zzmarkerb:write", "ttl_seconds": 600,
                       "format": if i == 1 { "v4.local" } else { "v4.public" }}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        tokens.push((
            b["token"].as_str().unwrap().to_owned(),
            b["token_id"].as_str().unwrap().to_owned(),
        ));
    }
    // A refused grant (GrantRefused names subject, client, audience).
    let (st, _, b) = app
        .mint(
            &iss,
            json!({"subject": "zzmarkerb-mallory", "audience": aud, "scope": "zzmarkerb:admin",
                   "ttl_seconds": 60, "format": "v4.public"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");

    // Verifications with a context: accepted, audience mismatch, malformed.
    let ctx = json!({"ip": "zzmarkerb-ip-198.51.100.77", "user_agent": "ZZMARKERB agent/1.0",
                     "device_id": "zzmarkerb-device"});
    for (token, audience, active) in [
        (tokens[0].0.as_str(), aud, true),
        (tokens[0].0.as_str(), "api://zzmarkerb-elsewhere", false),
        ("v4.public.zzmarkerb", aud, false),
    ] {
        let (st, _, v) = app
            .call(
                "POST",
                "/v1/tokens/verify",
                Some(&gw),
                Some(json!({"token": token, "audience": audience, "context": ctx})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["active"], active, "{v}");
    }
    // Uses a validator verified itself.
    let now = app.now();
    let (st, _, r) = app
        .call(
            "POST",
            "/v1/uses",
            Some(&gw),
            Some(json!({"uses": [
                {"token_id": tokens[2].1, "audience": aud, "outcome": "accepted", "at": iso(now), "context": ctx},
                {"token_id": "zzmarkerb-unknown-token", "audience": aud, "outcome": "rejected",
                 "reason": "zzmarkerb-reason", "at": iso(now), "context": ctx},
            ]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    // An exchange: the client serves the audience of its own token.
    let form = serde_urlencoded::to_string([
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", tokens[0].0.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("audience", aud),
        ("scope", "zzmarkerb:read"),
    ])
    .unwrap();
    let (st, _, r) = app
        .send(
            "POST",
            "/oauth2/token",
            Some(&iss),
            Some("application/x-www-form-urlencoded"),
            form,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    // Revocations: by token id and by selector, with marked reasons.
    for body in [
        json!({"token_id": tokens[1].1, "reason": "zzmarkerb compromised"}),
        json!({"selector": {"scope": "subject", "key": "zzmarkerb-subject-2"}, "reason": "zzmarkerb selector"}),
    ] {
        let (st, _, r) = app.call("POST", "/v1/revocations", Some(&soc), Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
    }
    analyst
}

/// Columns of `events` in which tenant B planted the marker.
const MARKED_COLUMNS: &[&str] = &[
    "stream",
    "subject",
    "client_id",
    "audience",
    "scope",
    "validator",
    "reason",
    "ip",
    "user_agent",
    "device_id",
    "claimed_token_id",
    "selector_key",
    "name",
    "actor",
    "by",
];

fn slt_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../analytics/tests/slt")
}

/// Every query and statement of every `.slt` file of the analytics crate.
fn slt_queries() -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(slt_dir())
        .expect("crates/analytics/tests/slt")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "expected the example files, found {files:?}");
    let mut out = Vec::new();
    for file in files {
        for r in sqllogictest::parse_file::<sqllogictest::DefaultColumnType>(&file).unwrap() {
            if let sqllogictest::Record::Query { sql, .. } | sqllogictest::Record::Statement { sql, .. } = r {
                out.push(sql);
            }
        }
    }
    out
}

/// Queries an analyst of another tenant might try: everything, joins of
/// every table, subqueries, catalogs, files, table functions, DDL and
/// `COPY`, plans, and very long or deeply nested text.
fn hostile_queries() -> Vec<String> {
    let mut q: Vec<String> = [
        "SELECT * FROM events",
        "SELECT * FROM events ORDER BY position DESC",
        "SELECT * FROM active_tokens",
        "SELECT * FROM block_list",
        "SELECT * FROM keys",
        "SELECT * FROM cutoffs",
        "SELECT e.*, a.*, b.*, k.* FROM events e FULL OUTER JOIN active_tokens a ON true \
         FULL OUTER JOIN block_list b ON true FULL OUTER JOIN keys k ON true",
        "SELECT * FROM events e JOIN events f ON e.token_id = f.parent_token_id",
        "SELECT * FROM events e LEFT JOIN active_tokens a ON e.token_id = a.token_id \
         LEFT JOIN block_list b ON b.token_id = e.token_id LEFT JOIN keys k ON k.kid = e.kid",
        "SELECT * FROM events WHERE position IN (SELECT position FROM events)",
        "SELECT * FROM events WHERE EXISTS (SELECT 1 FROM active_tokens WHERE active_tokens.subject = events.subject)",
        "SELECT (SELECT max(subject) FROM events), (SELECT max(client_id) FROM events)",
        "SELECT max(position), min(position), count(*) FROM events",
        "SELECT string_agg(DISTINCT subject, ',') FROM events",
        "SELECT array_agg(stream) FROM events",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM information_schema.columns",
        "SELECT * FROM datafusion.information_schema.tables",
        "SELECT * FROM information_schema.df_settings",
        "SHOW TABLES",
        "SHOW COLUMNS FROM events",
        "SHOW ALL",
        "DESCRIBE events",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'crates/analytics/tests/fixture/events.jsonl'",
        "SELECT * FROM '../analytics/tests/fixture/events.jsonl'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
        "SELECT * FROM read_json('/etc/passwd')",
        "SELECT * FROM generate_series(1, 3)",
        "SELECT * FROM range(3)",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/'",
        "COPY (SELECT * FROM events) TO '/tmp/tokenledger-sql-hostile.csv'",
        "COPY events TO '/tmp/tokenledger-sql-hostile.parquet' STORED AS PARQUET",
        "INSERT INTO events SELECT * FROM events",
        "SET datafusion.catalog.information_schema = true",
        "SELECT * FROM other.events",
        "SELECT * FROM datafusion.public.events",
        "SELECT * FROM globex.events",
        "SELECT * FROM \"acme\".events",
        "SELECT * FROM events WHERE tenant <> 'acme'",
        "SELECT count(*) FROM events WHERE lower(subject) LIKE '%zzmarkerb%'",
        "SELECT * FROM events WHERE subject = 'zzmarkerb-subject-0'",
        "SELECT * FROM events WHERE strpos(lower(concat(stream, subject, client_id, audience, scope, reason, ip, \
         user_agent, device_id, validator, name, actor, \"by\")), 'zzmarkerb') > 0",
        "SELECT * FROM active_tokens WHERE subject LIKE 'zzmarkerb%' OR audience LIKE '%zzmarkerb%'",
        "SELECT * FROM block_list WHERE selector LIKE '%zzmarkerb%'",
        "EXPLAIN SELECT * FROM events",
        "EXPLAIN ANALYZE SELECT * FROM events",
        "EXPLAIN VERBOSE SELECT * FROM events e JOIN active_tokens a ON e.token_id = a.token_id",
        "SELECT arrow_typeof(subject), subject FROM events",
        "SELECT version()",
        "SELECT current_user",
        "SELECT * FROM events; SELECT * FROM events",
        "PREPARE p AS SELECT * FROM events; EXECUTE p",
        "SELECT 1 /* zz */",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Every marked column, as a filter.
    for c in MARKED_COLUMNS {
        q.push(format!(
            "SELECT count(*) FROM events WHERE lower(\"{c}\") LIKE '%zzmarkerb%'"
        ));
    }
    // Long and nested, within what the engine takes today (see
    // `very_deep_expressions_are_answered_or_refused_and_never_crash_the_server`):
    // a 200-term OR, a 500 KB literal, nesting past the parser's recursion
    // limit, 20 nested subqueries, an 8-way self join.
    q.extend(deep_queries(200, 5));
    q.push(format!(
        "SELECT count(*) FROM events WHERE subject = '{}'",
        "x".repeat(500_000)
    ));
    q.push(format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)));
    q.push(format!(
        "SELECT count(*) FROM {}events{}",
        "(SELECT * FROM ".repeat(20),
        ") t".repeat(20)
    ));
    q.push(format!("SELECT count(*) FROM {}", ["events"; 8].join(" NATURAL JOIN ")));
    q
}

/// Queries whose expression trees are `terms` deep: an OR chain, a chain of
/// additions, nested CASE.
fn deep_queries(terms: usize, joins: usize) -> Vec<String> {
    let ors: Vec<String> = (1..=terms).map(|i| format!("position = {i}")).collect();
    let plus = vec!["position"; terms];
    let unions = vec!["SELECT 1 AS x"; terms];
    let joins: Vec<String> = (1..=joins)
        .map(|i| format!("JOIN keys k{i} ON k{i}.kid = k0.kid"))
        .collect();
    vec![
        format!("SELECT count(*) FROM events WHERE {}", ors.join(" OR ")),
        format!("SELECT max({}) FROM events", plus.join(" + ")),
        format!("SELECT count(*) FROM ({})", unions.join(" UNION ALL ")),
        format!("SELECT count(*) FROM keys k0 {}", joins.join(" ")),
    ]
}

/// Everything an answer shows, lower case: status line material, headers,
/// the raw body, and for an Arrow stream the decoded rows.
fn visible(st: StatusCode, h: &HeaderMap, bytes: &[u8]) -> String {
    let mut text = format!("{st}\n");
    for (k, v) in h {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    text.push_str(&String::from_utf8_lossy(bytes));
    if st == StatusCode::OK && content_type(h) == Some(ARROW) {
        let (schema, batches) = decode(bytes);
        text.push_str(&to_json(&schema, &batches).to_string());
    }
    text.to_lowercase()
}

#[tokio::test]
async fn no_query_of_one_tenants_analyst_shows_anything_of_another_tenant() {
    let w = acme().await;
    let app = &w.app;
    let b_analyst = plant_tenant_b(app).await;
    let a_admin = app.admin("acme").await;

    // The marker is there to be found: tenant B sees it in every column it was
    // planted in, and in its views.
    for c in MARKED_COLUMNS {
        let a = sql(
            app,
            &b_analyst,
            &format!("SELECT count(*) FROM events WHERE lower(\"{c}\") LIKE '%zzmarkerb%'"),
        )
        .await;
        assert!(single_count(&a) > 0, "tenant B should see the marker in {c}: {}", a.2);
    }
    for q in [
        "SELECT count(*) FROM active_tokens WHERE subject LIKE 'zzmarkerb%' AND audience LIKE '%zzmarkerb%'",
        "SELECT count(*) FROM block_list WHERE selector LIKE '%zzmarkerb%'",
    ] {
        let a = sql(app, &b_analyst, q).await;
        assert!(single_count(&a) > 0, "{q}: {}", a.2);
    }
    for q in [
        "SELECT * FROM events",
        "SELECT e.*, a.*, b.*, k.* FROM events e FULL OUTER JOIN active_tokens a ON true \
         FULL OUTER JOIN block_list b ON true FULL OUTER JOIN keys k ON true",
    ] {
        let a = sql(app, &b_analyst, q).await;
        assert!(a.2.to_string().to_lowercase().contains(MARK), "{q} as B");
        let (st, h, bytes) = sql_arrow(app, &b_analyst, q).await;
        assert!(visible(st, &h, &bytes).contains(MARK), "{q} as B, Arrow");
    }
    let (st, h, bytes) = raw(app, "GET", "/v1/export/events", Some(&b_analyst), None, None).await;
    assert!(visible(st, &h, &bytes).contains(MARK), "B's export");

    // Tenant A sees its own rows, never B's.
    let a = sql(app, &w.analyst, "SELECT count(*) FROM events").await;
    let a_events = single_count(&a);
    assert_eq!(a_events, app.log("acme").await.len() as u64);

    let slt = slt_queries();
    assert!(slt.len() >= 20, "{} queries in the .slt files", slt.len());
    let hostile = hostile_queries();
    let mut answered = 0;
    let mut refused = 0;
    for (i, q) in slt.iter().chain(&hostile).enumerate() {
        let is_slt = i < slt.len();
        let marked = q.to_lowercase().contains(MARK);
        for who in [&w.analyst, &a_admin] {
            for arrow in [false, true] {
                let accept = arrow.then_some(ARROW);
                let (st, h, bytes) = raw(app, "POST", "/v1/sql", Some(who), accept, Some(json!({"sql": q}))).await;
                let text = visible(st, &h, &bytes);
                let short = &q[..q.len().min(200)];
                if marked {
                    // Its own text may be echoed in an error; such a query must
                    // answer, and show no trace of B.
                    assert_eq!(st, StatusCode::OK, "{short:?}: {text:.2000}");
                }
                assert!(
                    !text.contains(MARK),
                    "{short:?} (arrow: {arrow}) as tenant acme shows tenant B: {:.3000}",
                    text
                );
                assert!(
                    st == StatusCode::OK || st.is_client_error(),
                    "{short:?}: unexpected {st}: {text:.2000}"
                );
                if is_slt {
                    assert_eq!(
                        st,
                        StatusCode::OK,
                        "an .slt query fails over HTTP: {short:?}: {text:.2000}"
                    );
                }
                if st == StatusCode::OK {
                    answered += 1;
                } else {
                    refused += 1;
                }
            }
        }
    }
    assert!(answered > 0 && refused > 0, "answered {answered}, refused {refused}");
    // Nothing the queries did changed the log or wrote files.
    assert_eq!(
        single_count(&sql(app, &w.analyst, "SELECT count(*) FROM events").await),
        a_events
    );
    for path in [
        "/tmp/tokenledger-sql-hostile.csv",
        "/tmp/tokenledger-sql-hostile.parquet",
    ] {
        assert!(!Path::new(path).exists(), "COPY wrote {path}");
    }
    // A's export and filters on every marked column find nothing of B.
    let (st, h, bytes) = raw(app, "GET", "/v1/export/events", Some(&w.analyst), None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(!visible(st, &h, &bytes).contains(MARK));
    for c in MARKED_COLUMNS {
        let a = sql(
            app,
            &w.analyst,
            &format!("SELECT count(*) FROM events WHERE lower(\"{c}\") LIKE '%zzmarkerb%'"),
        )
        .await;
        assert_eq!(single_count(&a), 0, "{c}");
    }
}

/// A query's expression tree is as deep as its text is long (a flat OR chain
/// parses into a left-deep tree without tripping the parser's recursion
/// limit), and DataFusion walks its trees recursively (derived `Clone`,
/// `Drop`, rewrites), not all of it under its `recursive_protection`
/// feature: a 2,000-term OR overflowed a 2 MiB thread stack in
/// `Expr::clone` and aborted the whole process — one analyst request took
/// the server down. Queries are now bounded in operators before parsing
/// (`MAX_OPERATORS`).
#[tokio::test]
async fn very_deep_expressions_are_answered_or_refused_and_never_crash_the_server() {
    let w = acme().await;
    let app = &w.app;
    // Up to the bound on operators, answered; past it, refused with
    // `sql-limit` before anything is parsed.
    let max = tokenledger_analytics::engine::MAX_OPERATORS;
    for q in deep_queries(max / 2, 20) {
        let a = sql(app, &w.analyst, &q).await;
        assert_eq!(a.0, StatusCode::OK, "{}", a.2);
    }
    for terms in [2_000, 20_000] {
        // A long IN list is one operator: answered.
        let q = format!(
            "SELECT count(*) FROM events WHERE subject IN ({})",
            (0..terms).map(|i| format!("'s{i}'")).collect::<Vec<_>>().join(", ")
        );
        let a = sql(app, &w.analyst, &q).await;
        assert_eq!(a.0, StatusCode::OK, "{}", a.2);
        for q in deep_queries(terms, terms) {
            let a = sql(app, &w.analyst, &q).await;
            assert_eq!(a.0, StatusCode::UNPROCESSABLE_ENTITY, "{terms} terms: {}", a.2);
            assert!(a.2.to_string().contains("sql-limit"), "{}", a.2);
        }
    }
    let a = sql(app, &w.analyst, "SELECT count(*) FROM events").await;
    assert!(single_count(&a) > 0);
}
