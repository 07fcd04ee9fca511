//! Errors as RFC 9457 `application/problem+json`, mapped to HTTP in exactly
//! this one place, and the JSON body extractor whose rejections use the same
//! format.
//!
//! Every problem has a stable `type`, `https://tokenledger.dev/problems/<kind>`;
//! clients should match on the `<kind>` suffix. Details of a 5xx are logged,
//! never sent.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// The prefix of every problem `type`.
pub const PROBLEM_BASE: &str = "https://tokenledger.dev/problems/";

/// An API error: the status, a stable kind, a human-readable detail and
/// extension members (RFC 9457 §3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The stable kind, the last segment of `type`.
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
    /// Extension members, e.g. `actual_revision`.
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// A problem with no extension members.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// 400: the request body or query is not what the endpoint takes.
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, detail)
    }

    /// 401: no credential, or one that is not valid.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid credential is required: Authorization: Bearer <secret>",
        )
    }

    /// 403 with a kind naming the rule.
    pub fn forbidden(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, kind, detail)
    }

    /// 404.
    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, detail)
    }

    /// 409.
    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, detail)
    }

    /// 422: well-formed but refused by schema, NFC or clock-skew rules.
    pub fn unprocessable(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, kind, detail)
    }

    /// 503: not ready yet, or shutting down.
    pub fn unavailable(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, detail)
    }

    /// 500: logged with its cause; the answer says only that it happened.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// The problem document.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("{PROBLEM_BASE}{}", self.kind),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(m) = &mut body {
            for (k, v) in &self.extra {
                m.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A request body that claims to be JSON, not yet read. Reading it
/// ([`JsonBody::parse`]) checks `Content-Type: application/json` (415), the
/// body limit (413), JSON syntax with no duplicate keys and the endpoint's
/// shape (400) — after the handler has checked the caller's role, as
/// DESIGN.md "Errors" orders it (403 comes before anything about the body).
pub struct JsonBody {
    content_type: Option<String>,
    body: axum::body::Body,
    limit: usize,
}

impl JsonBody {
    /// Reads and parses the body strictly: valid JSON with no duplicate
    /// object keys (`malformed-json`), of `T`'s shape with no unknown fields,
    /// no wrong types and no array where an object belongs (`invalid-body`).
    pub async fn parse<T: DeserializeOwned + serde::Serialize>(self) -> Result<T, ApiError> {
        let is_json = self
            .content_type
            .as_deref()
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "the body must be application/json",
            ));
        }
        let bytes = axum::body::to_bytes(self.body, self.limit).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "the body is over the size limit",
            )
        })?;
        parse_strict(&bytes)
    }

    /// As [`JsonBody::parse`], but an empty body (no bytes, with or without a
    /// content type) is `T::default()`: for endpoints whose every field is
    /// optional.
    pub async fn parse_or_default<T: DeserializeOwned + serde::Serialize + Default>(self) -> Result<T, ApiError> {
        let bytes = axum::body::to_bytes(self.body, self.limit).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "the body is over the size limit",
            )
        })?;
        if bytes.is_empty() {
            return Ok(T::default());
        }
        JsonBody {
            content_type: self.content_type,
            body: axum::body::Body::from(bytes),
            limit: self.limit,
        }
        .parse()
        .await
    }
}

impl FromRequest<crate::state::AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &crate::state::AppState) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(JsonBody {
            content_type,
            body: req.into_body(),
            limit: state.settings.max_body_bytes,
        })
    }
}

/// Parses JSON refusing duplicate keys, then into `T`. Errors are 400
/// problems: `malformed-json` or `invalid-body`.
pub fn parse_strict<T: DeserializeOwned + serde::Serialize>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = tokenledger_domain::json::from_slice_strict(bytes)
        .map_err(|e| ApiError::bad_request("malformed-json", e.to_string()))?;
    let parsed: T =
        serde_json::from_value(value.clone()).map_err(|e| ApiError::bad_request("invalid-body", e.to_string()))?;
    // serde's derived structs also accept a JSON array, read by position;
    // the contract's shapes are objects, so refuse an array where the
    // parsed value has an object.
    let back = serde_json::to_value(&parsed).map_err(ApiError::internal)?;
    if let Some(path) = array_for_object(&value, &back, String::new()) {
        return Err(ApiError::bad_request(
            "invalid-body",
            format!(
                "expected a JSON object at {}",
                if path.is_empty() { "the top level" } else { &path }
            ),
        ));
    }
    Ok(parsed)
}

/// The path of the first place where `sent` has an array and `parsed`
/// (the value re-serialized) has an object.
fn array_for_object(sent: &Value, parsed: &Value, path: String) -> Option<String> {
    match (sent, parsed) {
        (Value::Array(_), Value::Object(_)) => Some(path),
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .filter_map(|(k, v)| b.get(k).map(|w| (k, v, w)))
            .find_map(|(k, v, w)| array_for_object(v, w, format!("{path}/{k}"))),
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| array_for_object(v, w, format!("{path}/{i}"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        a: u32,
        b: Option<Value>,
    }

    #[test]
    fn strict_parsing() {
        assert!(parse_strict::<Body>(br#"{"a": 1, "b": {"x": [1, {"y": 2}]}}"#).is_ok());
        let kind = |b: &[u8]| parse_strict::<Body>(b).unwrap_err().kind;
        assert_eq!(kind(b"{not json"), "malformed-json");
        assert_eq!(kind(br#"{"a": 1, "a": 2}"#), "malformed-json");
        assert_eq!(kind(br#"{"a": 1, "b": {"x": 1, "x": 2}}"#), "malformed-json");
        assert_eq!(kind(br#"{"a": 1, "c": 2}"#), "invalid-body");
        assert_eq!(kind(br#"{"a": "1"}"#), "invalid-body");
        assert_eq!(kind(br#"[1, null]"#), "invalid-body");
    }

    #[test]
    fn problem_document_shape() {
        let p = ApiError::conflict("wrong-expected-revision", "x").with("actual_revision", 3);
        let b = p.body();
        assert_eq!(b["type"], "https://tokenledger.dev/problems/wrong-expected-revision");
        assert_eq!(b["status"], 409);
        assert_eq!(b["actual_revision"], 3);
    }
}
