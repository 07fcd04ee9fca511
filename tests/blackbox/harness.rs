//! The server under test and how to talk to it.

use serde_json::{Value, json};
use std::time::Duration;
pub use tokenledger_testkit::Server;
use tokenledger_testkit::{Options, Profile, Statuses, admin_via_bootstrap, create_principal, set_policy};
use uuid::Uuid;

/// The bootstrap secret every test server starts with (≥ 32 bytes).
pub const BOOTSTRAP: &str = "blackbox-bootstrap-secret-0123456789abcdef";

/// How long a server may take to exit after SIGTERM (as long as it may take
/// to become ready, [`tokenledger_testkit::READY_WITHIN`]). Generous: the
/// machine is shared and the binary may be a debug build.
pub const PATIENCE: Duration = tokenledger_testkit::READY_WITHIN;

/// The issuer every test appends as.
pub const ISSUER: &str = "bb-issuer";

/// Starts a server (see [`Server::start`]) with the bootstrap secret
/// [`BOOTSTRAP`], a `tl-blackbox-` temp dir, the binary built in the tests'
/// own profile, and extra `serve` flags.
pub async fn start_server(extra: &[&str]) -> Server {
    let profile = Profile::matching(cfg!(debug_assertions));
    Server::start(Options::new(profile, BOOTSTRAP, "tl-blackbox-").with_args(extra)).await
}

/// Serializes the heavy tests: the machine has few cores, and two load tests
/// at once would only slow each other down.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// An HTTP answer: status and body (JSON, or the raw text as a JSON string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

/// A thin JSON client bound to one server address.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    /// A client for `base` with one connection pool.
    pub fn new(base: String) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        Api { http, base }
    }

    /// One request; `Err` when no HTTP answer came back.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Answer, reqwest::Error> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await?;
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }

    /// A request that must get an answer with one of `ok` statuses.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        ok: &[u16],
    ) -> Value {
        let a = self
            .call(method.clone(), path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
        assert!(ok.contains(&a.status), "{method} {path} -> {} {}", a.status, a.body);
        a.body
    }

    /// Every event of the caller's tenant's `$all`, in order, following `next`.
    pub async fn read_all(&self, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let page = self
                .expect(
                    reqwest::Method::GET,
                    &format!("/v1/events?from={from}&limit=1000"),
                    token,
                    None,
                    &[200],
                )
                .await;
            let events = page["events"].as_array().expect("events array in a $all page").clone();
            if events.is_empty() {
                return out;
            }
            let next = page["next"].as_u64().expect("next in a $all page");
            assert!(next > from, "$all paging does not advance: from={from} next={next}");
            from = next;
            out.extend(events);
        }
    }
}

/// The credentials of the tenant every test uses.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub admin: String,
    pub issuer: String,
}

/// Creates tenant `default`'s admin (through the bootstrap secret) and the
/// issuer [`ISSUER`] with a policy that allows `external` issuance for
/// `api://orders`.
pub async fn setup(server: &Server) -> Tenant {
    let api = Api::new(server.base());
    let (http, base) = (&api.http, &api.base);
    let principal_ok = Statuses::OneOf(&[200, 201]);
    let admin = admin_via_bootstrap(http, base, BOOTSTRAP, "admin-default", "default", principal_ok).await;
    let issuer = create_principal(
        http,
        base,
        &admin,
        &json!({"name": ISSUER, "role": "issuer", "tenant": "default"}),
        principal_ok,
    )
    .await;
    let policy = json!({
        "audiences": {"api://orders": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600}},
        "formats": ["external"],
    });
    set_policy(http, base, &admin, ISSUER, &policy, Statuses::OneOf(&[200, 201, 204])).await;
    Tenant { admin, issuer }
}

/// Now (UTC, whole seconds) plus `offset_s`, as RFC 3339 with `Z`.
pub fn now_rfc3339(offset_s: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_s))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A `TokenIssued` for `jti`, as the issuer appends it (format `external`).
pub fn token_issued(jti: &str, subject: &str) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(),
        "event_type": "TokenIssued",
        "data": {
            "token_id": jti, "subject": subject, "audience": "api://orders", "scope": "orders:read",
            "issued_at": now_rfc3339(0), "expires_at": now_rfc3339(300), "not_before": now_rfc3339(0),
            "format": "external",
        },
        "metadata": {},
    })
}

/// A `TokenRevoked` of `jti`.
pub fn token_revoked(jti: &str) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(),
        "event_type": "TokenRevoked",
        "data": {"token_id": jti, "reason": "blackbox"},
        "metadata": {},
    })
}
