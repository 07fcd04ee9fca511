//! Alert webhooks from the outside (issue 5: "a webhook receiver that is
//! down across a server restart receives every alert once it is back"):
//! the real binary, started with `--webhook-allow 127.0.0.1`, has a webhook
//! to a loopback port nothing listens on; anomalies are raised (a token
//! replayed from a second network, a revoked token used); the server is
//! killed with `kill -9` while the receiver is still down, and started again
//! on the same data dir; then the receiver comes up and gets every alert,
//! each once (by `webhook-id`). After a graceful restart with everything
//! delivered, the persisted cursor (`<data-dir>/webhooks/<tenant>.json`,
//! 0600 in a 0700 directory, no secret in it) keeps the server from sending
//! any alert again; a new one still arrives.

use crate::harness::{Api, BOOTSTRAP, PATIENCE, start_server};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokenledger_testkit::{Secrets, TenantSpec, create_principal, issuer_and_validator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TENANT: &str = "default";

/// One POST a receiver got: lower-case header names → values, and the body.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Value,
}

/// A minimal HTTP/1.1 receiver on 127.0.0.1: records each request and
/// answers `200` with `Connection: close`.
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("binding the receiver");
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    if let Some(r) = read_request(&mut conn).await {
                        sink.lock().unwrap().push(r);
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        Receiver { got, task }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some(Received { headers, body })
}

/// Waits for `cond`, polling; the limit only guards against a hang.
async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !cond().await {
        assert!(t0.elapsed() < PATIENCE * 5, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct World {
    api: Api,
    secrets: Secrets,
    soc: String,
}

impl World {
    async fn new(api: Api) -> World {
        let spec = TenantSpec {
            bootstrap: BOOTSTRAP,
            tenant: TENANT,
            admin: "admin-default",
            issuer: "iss",
            validator: "gw",
            policy: json!({
                "audiences": {"api://orders": {"scopes": ["orders:read"], "max_ttl_seconds": 3600}},
                "formats": ["v4.public"],
            }),
        };
        let secrets = issuer_and_validator(&api.http, &api.base, &spec).await;
        let soc = create_principal(
            &api.http,
            &api.base,
            &secrets.admin,
            &json!({"name": "soc-1", "role": "soc"}),
            tokenledger_testkit::Statuses::Success,
        )
        .await;
        World { api, secrets, soc }
    }

    async fn mint(&self, subject: &str) -> Value {
        self.api
            .expect(
                Method::POST,
                "/v1/tokens",
                &self.secrets.issuer,
                Some(
                    &json!({"subject": subject, "audience": "api://orders", "scope": "orders:read",
                    "ttl_seconds": 600, "format": "v4.public"}),
                ),
                &[201],
            )
            .await
    }

    async fn verify_from(&self, token: &str, ip: &str) {
        self.api
            .expect(
                Method::POST,
                "/v1/tokens/verify",
                &self.secrets.validator,
                Some(&json!({"token": token, "audience": "api://orders", "context": {"ip": ip}})),
                &[200],
            )
            .await;
    }

    /// A token replayed from a second network: `concurrent_use`.
    async fn replayed(&self, subject: &str) {
        let m = self.mint(subject).await;
        let tok = m["token"].as_str().unwrap();
        self.verify_from(tok, "198.51.100.7").await;
        self.verify_from(tok, "203.0.113.9").await;
    }

    /// A revoked token presented: `use_after_revocation`.
    async fn revoked_use(&self, subject: &str) {
        let m = self.mint(subject).await;
        self.api
            .expect(
                Method::POST,
                "/v1/revocations",
                &self.soc,
                Some(&json!({"token_id": m["token_id"], "reason": "stolen"})),
                &[200, 201],
            )
            .await;
        self.verify_from(m["token"].as_str().unwrap(), "198.51.100.7").await;
    }

    async fn webhook(&self) -> Value {
        self.api
            .expect(Method::GET, "/v1/webhooks", &self.soc, None, &[200])
            .await
    }

    /// The ids of the tenant's anomalies after `position`, in order.
    async fn anomaly_ids_after(&self, position: u64) -> Vec<String> {
        let b = self
            .api
            .expect(
                Method::GET,
                &format!("/v1/anomalies?since={position}"),
                &self.soc,
                None,
                &[200],
            )
            .await;
        b["anomalies"]
            .as_array()
            .expect("anomalies")
            .iter()
            .map(|a| a["anomaly_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_receiver_down_across_a_restart_gets_every_alert_once_back() {
    let mut server = start_server(&["--webhook-allow", "127.0.0.1"]).await;
    let w = World::new(Api::new(server.base())).await;
    let port = free_port();
    let set = w
        .api
        .expect(
            Method::PUT,
            "/v1/webhooks",
            &w.soc,
            Some(&json!({"url": format!("http://127.0.0.1:{port}/hook")})),
            &[200],
        )
        .await;
    let secret = set["secret"].as_str().unwrap().to_owned();
    let set_at = set["position"].as_u64().unwrap();

    // Alerts while the receiver is down: the server tries and fails.
    w.replayed("mallory").await;
    w.revoked_use("eve").await;
    w.replayed("trudy").await;
    let before_crash = w.anomaly_ids_after(set_at).await;
    assert!(before_crash.len() >= 3, "{before_crash:?}");
    wait_for("a failed delivery attempt", async || {
        w.webhook().await["delivery"]["attempts"].as_u64() >= Some(1)
    })
    .await;

    // kill -9 with the receiver still down; start again on the same data dir.
    server.kill9();
    server.restart().await;
    let w = World {
        api: Api::new(server.base()),
        ..w
    };
    // The views were rebuilt from the log: the same anomalies, same ids.
    let expected = w.anomaly_ids_after(set_at).await;
    assert_eq!(expected, before_crash);
    assert_eq!(w.webhook().await["delivery"]["delivered_anomaly_id"], Value::Null);

    // The receiver comes up: every alert arrives, each once.
    let rx = Receiver::start(port).await;
    wait_for("every alert delivered after the restart", async || {
        rx.got().len() >= expected.len()
    })
    .await;
    wait_for("the delivery status caught up", async || {
        w.webhook().await["delivery"]["pending"] == 0
    })
    .await;
    let ids: Vec<String> = rx.got().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids, expected, "every alert, in order, once");
    for r in rx.got() {
        assert!(r.headers["webhook-signature"].starts_with("v1,"), "{:?}", r.headers);
        assert!(r.headers["webhook-timestamp"].parse::<i64>().is_ok(), "{:?}", r.headers);
        assert_eq!(r.body["anomaly_id"].as_str(), Some(r.headers["webhook-id"].as_str()));
        assert_eq!(r.body["tenant"], TENANT);
    }

    // The cursor file: private, and without the secret.
    let dir = server.data_dir().join("webhooks");
    let file = dir.join(format!("{TENANT}.json"));
    let cursor = std::fs::read_to_string(&file).expect("the cursor file");
    assert!(!cursor.contains(&secret), "{cursor}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }

    // A graceful restart with everything delivered sends nothing again; a
    // new alert still arrives.
    server.sigterm();
    let status = server.wait_exit(PATIENCE).await.expect("exit after SIGTERM");
    assert!(status.success(), "{status}");
    server.restart().await;
    let w = World {
        api: Api::new(server.base()),
        ..w
    };
    w.replayed("oscar").await;
    let all = w.anomaly_ids_after(set_at).await;
    assert!(all.len() > expected.len());
    wait_for("the new alert delivered", async || rx.got().len() >= all.len()).await;
    wait_for("the delivery status caught up again", async || {
        w.webhook().await["delivery"]["pending"] == 0
    })
    .await;
    let ids: Vec<String> = rx.got().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids, all, "nothing delivered twice across the restart");
}
