//! The in-process app and the helpers every test module shares: a
//! [`TestApp`] driven with `oneshot`, principals, policies, event builders and
//! problem assertions.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokenledger_domain::clock::ManualClock;
use tokenledger_server::config::{ServeArgs, Settings};
use tokenledger_server::state::AppState;
use tokenledger_store::{EventStore, MemoryStore, Position, StreamId};
use tower::ServiceExt;

/// The bootstrap secret of every test app.
pub const BOOT: &str = "test-bootstrap-secret-0123456789abcdef-0123456789";

/// The prefix of every problem `type`.
pub const PROBLEM: &str = "https://tokenledger.dev/problems/";

/// An answer: status, headers and the body as JSON (a JSON string holding the
/// raw text when the body is not JSON).
pub type Answer = (StatusCode, HeaderMap, Value);

/// One app over an in-memory store and a clock that moves only when told.
pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub store: MemoryStore,
    pub clock: Arc<ManualClock>,
    admins: Mutex<HashMap<String, String>>,
}

/// The time every test app's clock starts at.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 5, 6, 7, 8, 9).unwrap()
}

/// An RFC 3339 UTC timestamp.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl TestApp {
    /// A ready app with default settings.
    pub async fn new() -> Self {
        Self::with_args(ServeArgs::default()).await
    }

    /// A ready app with the given settings.
    pub async fn with_args(args: ServeArgs) -> Self {
        let app = Self::unready(args);
        app.state.catch_up().await.unwrap();
        app
    }

    /// An app whose views have not caught up with the log yet.
    pub fn unready(args: ServeArgs) -> Self {
        let clock = Arc::new(ManualClock::new(t0()));
        let store = MemoryStore::with_clock(clock.clone());
        Self::over(store, clock, args)
    }

    /// An app over an existing store (a restarted process), not caught up.
    pub fn over(store: MemoryStore, clock: Arc<ManualClock>, args: ServeArgs) -> Self {
        let settings = Arc::new(Settings::resolve(args).unwrap());
        let dyn_store: Arc<dyn EventStore> = Arc::new(store.clone());
        let kek = tokenledger_tokens::seal::Kek::generate(&mut rand::rng());
        let state = AppState::new(dyn_store, settings, clock.clone(), BOOT, kek);
        let router = tokenledger_server::app(state.clone());
        Self {
            router,
            state,
            store,
            clock,
            admins: Mutex::default(),
        }
    }

    /// The writer's clock now.
    pub fn now(&self) -> DateTime<Utc> {
        use tokenledger_domain::clock::Clock;
        self.clock.now()
    }

    /// Sends a request with a raw body and an optional content type.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        self.send_request(b.body(body.into()).unwrap()).await
    }

    /// Sends a prepared request.
    pub async fn send_request(&self, req: Request<Body>) -> Answer {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (parts.status, parts.headers, value)
    }

    /// Sends `body` (if any) as `application/json`.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        match body {
            Some(b) => {
                self.send(
                    method,
                    path,
                    token,
                    Some("application/json"),
                    serde_json::to_vec(&b).unwrap(),
                )
                .await
            }
            None => self.send(method, path, token, None, Body::empty()).await,
        }
    }

    /// Appends a batch to `stream`.
    pub async fn append(&self, stream: &str, token: &str, expected: Value, events: Vec<Value>) -> Answer {
        let body = json!({"expected_revision": expected, "events": events});
        self.call("POST", &format!("/v1/streams/{stream}/events"), Some(token), Some(body))
            .await
    }

    /// Sends a raw JSON text as the append body.
    pub async fn append_raw(&self, stream: &str, token: &str, text: &str) -> Answer {
        self.send(
            "POST",
            &format!("/v1/streams/{stream}/events"),
            Some(token),
            Some("application/json"),
            text.to_owned(),
        )
        .await
    }

    /// The admin credential of `tenant`, created through the bootstrap
    /// principal on first use (as `admin-<tenant>`).
    pub async fn admin(&self, tenant: &str) -> String {
        if let Some(a) = self.admins.lock().unwrap().get(tenant) {
            return a.clone();
        }
        let secret = self.create(BOOT, &format!("admin-{tenant}"), "admin", tenant).await;
        self.admins.lock().unwrap().insert(tenant.to_owned(), secret.clone());
        secret
    }

    /// Creates a principal as `creator`, expecting 201; returns its secret.
    pub async fn create(&self, creator: &str, name: &str, role: &str, tenant: &str) -> String {
        let (st, _, b) = self
            .call(
                "POST",
                "/v1/principals",
                Some(creator),
                Some(json!({"name": name, "role": role, "tenant": tenant})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "creating {name}/{role}/{tenant}: {b}");
        b["secret"].as_str().unwrap().to_owned()
    }

    /// A principal of `tenant` created by the tenant's admin; returns its secret.
    pub async fn principal(&self, name: &str, role: &str, tenant: &str) -> String {
        let admin = self.admin(tenant).await;
        self.create(&admin, name, role, tenant).await
    }

    /// Sets a client policy as the tenant's admin, expecting 200.
    pub async fn policy(&self, tenant: &str, client: &str, body: Value) {
        let admin = self.admin(tenant).await;
        let (st, _, b) = self
            .call("PUT", &format!("/v1/clients/{client}/policy"), Some(&admin), Some(body))
            .await;
        assert_eq!(st, StatusCode::OK, "policy of {client}: {b}");
    }

    /// An issuer with [`default_policy`]; returns its secret.
    pub async fn issuer(&self, name: &str, tenant: &str) -> String {
        let secret = self.principal(name, "issuer", tenant).await;
        self.policy(tenant, name, default_policy()).await;
        secret
    }

    /// Every event of `tenant` in the store, in position order.
    pub async fn log(&self, tenant: &str) -> Vec<Arc<tokenledger_store::RecordedEvent>> {
        self.store
            .read_all(Position::START, usize::MAX, Some(tenant))
            .await
            .unwrap()
    }

    /// Every event in the store, all tenants.
    pub async fn log_len(&self) -> usize {
        self.store.head().await.unwrap().0 as usize
    }

    /// The number of events in a stream, `None` when it does not exist.
    pub async fn stream_len(&self, tenant: &str, stream: &str) -> Option<usize> {
        self.store
            .read_stream(&StreamId::new(tenant, stream), 0, usize::MAX)
            .await
            .unwrap()
            .map(|e| e.len())
    }

    /// An issuance of `jti` for `client` of `tenant`, times relative to the
    /// writer's clock, format `external`.
    pub fn issued(&self, jti: &str, tenant: &str, client: &str) -> Value {
        issued_at(jti, tenant, client, self.now())
    }
}

/// What the default issuer may record: `api://orders` with `orders:read`
/// and `orders:write`, at most an hour, format `external`.
pub fn default_policy() -> Value {
    json!({
        "audiences": {"api://orders": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600}},
        "formats": ["external"],
    })
}

/// A fresh token id.
pub fn jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh event id.
pub fn eid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A `TokenIssued` event of `jti` for `client` of `tenant`, issued at `now`,
/// valid for five minutes.
pub fn issued_at(jti: &str, tenant: &str, client: &str, now: DateTime<Utc>) -> Value {
    json!({
        "event_id": eid(),
        "event_type": "TokenIssued",
        "data": {
            "token_id": jti, "tenant": tenant, "issuer": client, "subject": "alice", "client_id": client,
            "audience": "api://orders", "scope": "orders:read",
            "issued_at": iso(now), "expires_at": iso(now + chrono::Duration::seconds(300)),
            "not_before": iso(now), "format": "external",
        },
        "metadata": {},
    })
}

/// A `TokenRevoked` event of `jti`.
pub fn revoked(jti: &str) -> Value {
    json!({
        "event_id": eid(),
        "event_type": "TokenRevoked",
        "data": {"token_id": jti, "reason": "compromised"},
        "metadata": {},
    })
}

/// `token-<jti>`.
pub fn stream(jti: &str) -> String {
    format!("token-{jti}")
}

/// Asserts an RFC 9457 problem of `status` whose `type` ends in `kind`.
#[track_caller]
pub fn assert_problem(answer: &Answer, status: StatusCode, kind: &str) {
    let (st, h, b) = answer;
    assert_eq!(*st, status, "status; body: {b}");
    assert_eq!(
        h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "content type of a {st} answer; body: {b}"
    );
    assert_eq!(b["type"], format!("{PROBLEM}{kind}"), "problem type; body: {b}");
    assert_eq!(b["status"], status.as_u16(), "problem status member; body: {b}");
    assert!(b["title"].is_string(), "problem title; body: {b}");
    assert!(b["detail"].is_string(), "problem detail; body: {b}");
}

/// Asserts 401 `unauthenticated` with `WWW-Authenticate: Bearer`.
#[track_caller]
pub fn assert_unauthenticated(answer: &Answer) {
    assert_problem(answer, StatusCode::UNAUTHORIZED, "unauthenticated");
    let www = answer
        .1
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        www.starts_with("Bearer"),
        "WWW-Authenticate should name the Bearer scheme, got {www:?}"
    );
}

/// The events of a read answer.
pub fn events(body: &Value) -> &Vec<Value> {
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {body}"))
}

// ---------------------------------------------------------------------------
// Tokens: minting, verifying and external issuers (tests/api/tokens.rs,
// tests/api/external.rs).

/// What a minting client may ask for: `api://orders` with `orders:read` and
/// `orders:write`, at most an hour, formats `v4.public` and `v4.local`.
pub fn mint_policy() -> Value {
    json!({
        "audiences": {"api://orders": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600}},
        "formats": ["v4.public", "v4.local"],
    })
}

/// A mint request of `subject` for `api://orders`.
pub fn mint_request(subject: &str, scope: &str, ttl_seconds: i64, format: &str) -> Value {
    json!({"subject": subject, "audience": "api://orders", "scope": scope,
           "ttl_seconds": ttl_seconds, "format": format})
}

/// An issuer of ours, minting under an external party's trust: a key pair
/// of its own, trusted with `PUT /v1/issuers/{name}`, and an issuer
/// principal of the same name that records its tokens write-ahead.
pub struct ExternalIssuer {
    /// Its name: the principal, the `iss` and the `client_id` of its tokens.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// The principal's credential.
    pub secret: String,
    /// Its signing key.
    pub key: tokenledger_tokens::keys::GeneratedKey,
}

impl TestApp {
    /// An issuer principal of `tenant` with [`mint_policy`]; returns its secret.
    pub async fn minter(&self, name: &str, tenant: &str) -> String {
        let secret = self.principal(name, "issuer", tenant).await;
        self.policy(tenant, name, mint_policy()).await;
        secret
    }

    /// `POST /v1/tokens` as `issuer`.
    pub async fn mint(&self, issuer: &str, body: Value) -> Answer {
        self.call("POST", "/v1/tokens", Some(issuer), Some(body)).await
    }

    /// Mints `mint_request(subject, "orders:read", 300, "v4.public")`,
    /// expecting 201; returns the answer's body.
    pub async fn mint_ok(&self, issuer: &str, subject: &str) -> Value {
        let (st, _, b) = self
            .mint(issuer, mint_request(subject, "orders:read", 300, "v4.public"))
            .await;
        assert_eq!(st, StatusCode::CREATED, "mint for {subject}: {b}");
        b
    }

    /// `POST /v1/tokens/verify` as `validator`, expecting 200; the body.
    pub async fn verify(&self, validator: &str, token: &str, audience: &str) -> Value {
        let (st, _, b) = self
            .call(
                "POST",
                "/v1/tokens/verify",
                Some(validator),
                Some(json!({"token": token, "audience": audience})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "verify: {b}");
        b
    }

    /// The `data` of every event of `event_type` in `tenant`, in order.
    pub async fn data_of(&self, tenant: &str, event_type: &str) -> Vec<Value> {
        self.log(tenant)
            .await
            .iter()
            .filter(|e| e.event_type == event_type)
            .map(|e| e.data.clone())
            .collect()
    }

    /// An [`ExternalIssuer`] named `name` in `tenant` with [`default_policy`],
    /// trusted with one fresh key and `max_ttl_seconds`.
    pub async fn trusted_issuer(&self, name: &str, tenant: &str, max_ttl_seconds: u64) -> ExternalIssuer {
        use tokenledger_domain::events::KeyPurpose;
        let secret = self.issuer(name, tenant).await;
        let key = tokenledger_tokens::keys::generate(KeyPurpose::Public).unwrap();
        let admin = self.admin(tenant).await;
        let (st, _, b) = self
            .call(
                "PUT",
                &format!("/v1/issuers/{name}"),
                Some(&admin),
                Some(json!({"keys": [key.public_key], "max_ttl_seconds": max_ttl_seconds})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "trusting {name}: {b}");
        assert_eq!(b["kids"], json!([key.kid]), "{b}");
        ExternalIssuer {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            secret,
            key,
        }
    }
}

impl ExternalIssuer {
    /// The claims of the issuance [`issued_at`] records for `jti` at `now`:
    /// alice, `api://orders`, `orders:read`, valid for five minutes.
    pub fn claims(&self, jti: &str, now: DateTime<Utc>) -> tokenledger_tokens::paseto::TokenClaims {
        tokenledger_tokens::paseto::TokenClaims::new(
            &self.name,
            "alice",
            "api://orders",
            jti,
            "orders:read",
            &self.name,
            now,
            now + chrono::Duration::seconds(300),
        )
    }

    /// Signs `claims` with the issuer's key, footer `{"kid": <its k4.pid>}`.
    pub fn sign(&self, claims: &tokenledger_tokens::paseto::TokenClaims) -> String {
        tokenledger_tokens::paseto::mint(&self.key.signing_key().unwrap(), &self.key.kid, claims).unwrap()
    }

    /// Signs any payload with the issuer's key and any footer.
    pub fn sign_raw(&self, payload: &Value, footer: Option<&str>) -> String {
        let tokenledger_tokens::keys::SigningKey::Public(sk) = self.key.signing_key().unwrap() else {
            unreachable!("a public key")
        };
        pasetors::version4::PublicToken::sign(
            &sk,
            &serde_json::to_vec(payload).unwrap(),
            footer.map(str::as_bytes),
            None,
        )
        .unwrap()
    }

    /// The footer of a token signed with this issuer's kid.
    pub fn footer(&self) -> String {
        json!({"kid": self.key.kid}).to_string()
    }

    /// Records `issuance` (a `TokenIssued` event) as this issuer, expecting 201.
    pub async fn record(&self, app: &TestApp, jti: &str, issuance: Value) {
        let (st, _, b) = app
            .append(&stream(jti), &self.secret, json!("no_stream"), vec![issuance])
            .await;
        assert_eq!(st, StatusCode::CREATED, "recording {jti} as {}: {b}", self.name);
    }

    /// Records the default issuance of `jti` at the writer's clock and
    /// returns the matching signed token.
    pub async fn issue(&self, app: &TestApp, jti: &str) -> String {
        let now = app.now();
        self.record(app, jti, issued_at(jti, &self.tenant, &self.name, now))
            .await;
        self.sign(&self.claims(jti, now))
    }
}
