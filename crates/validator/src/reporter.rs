//! Use reports: a bounded queue filled by `verify`, and the batches sent to
//! `POST /v1/uses` (DESIGN.md "Wire shapes": uses reported by a validator).

use crate::verdict::Reason;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use tokenledger_domain::events::RequestContext;
use tokenledger_domain::ids::{check_identifier, check_text};

/// Longest `context.user_agent` reported, bytes (cut at a character boundary).
const MAX_USER_AGENT_BYTES: usize = 512;

/// One use, as reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Use {
    /// Verified `jti` (accepted, or rejected after the signature verified),
    /// else the unverified one.
    pub token_id: String,
    /// The audience the token was presented to.
    pub audience: Arc<str>,
    /// `None`: accepted; `Some`: rejected for this reason.
    pub reason: Option<Reason>,
    /// When it was verified.
    pub at: DateTime<Utc>,
    /// The request being authorized, cleaned (see [`clean_context`]).
    pub context: Option<RequestContext>,
}

impl Use {
    /// The JSON of one use: `{"token_id", "audience", "outcome", "reason"?,
    /// "at", "context"?}`. `at` carries microseconds: the ledger derives a
    /// use's event id from its content, so two uses of one token in the same
    /// second must differ.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "token_id": self.token_id,
            "audience": &*self.audience,
            "outcome": if self.reason.is_none() { "accepted" } else { "rejected" },
            "at": self.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        });
        if let Some(r) = self.reason {
            v["reason"] = json!(r.as_str());
        }
        if let Some(c) = &self.context {
            v["context"] = serde_json::to_value(c).unwrap_or(Value::Null);
        }
        v
    }
}

/// The context as the ledger takes it: `ip` and `device_id` must be
/// identifiers (non-empty, ≤ 256 bytes, NFC, no whitespace or control
/// characters) and `user_agent` NFC text without control characters, cut
/// to 512 bytes. A field that does not pass is left out rather than letting
/// the whole report be refused; `None` if nothing is left.
pub(crate) fn clean_context(c: &RequestContext) -> Option<RequestContext> {
    let ident = |f: &'static str, v: &Option<String>| v.clone().filter(|s| check_identifier(f, s).is_ok());
    let user_agent = c.user_agent.as_deref().and_then(|ua| {
        let mut end = ua.len().min(MAX_USER_AGENT_BYTES);
        while !ua.is_char_boundary(end) {
            end -= 1;
        }
        let ua = ua[..end].trim();
        (!ua.is_empty() && check_text("context.user_agent", ua).is_ok()).then(|| ua.to_owned())
    });
    let out = RequestContext {
        ip: ident("context.ip", &c.ip),
        user_agent,
        device_id: ident("context.device_id", &c.device_id),
    };
    (out != RequestContext::default()).then_some(out)
}

/// A bounded FIFO of uses: when full, the oldest is dropped.
#[derive(Debug)]
pub(crate) struct Queue {
    uses: VecDeque<Use>,
    capacity: usize,
}

impl Queue {
    /// An empty queue holding at most `capacity` uses (at least 1).
    pub fn new(capacity: usize) -> Self {
        Queue {
            uses: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds a use; returns how many were dropped to make room (0 or 1).
    pub fn push(&mut self, u: Use) -> u64 {
        let mut dropped = 0;
        while self.uses.len() >= self.capacity {
            self.uses.pop_front();
            dropped += 1;
        }
        self.uses.push_back(u);
        dropped
    }

    /// Takes up to `n` of the oldest uses.
    pub fn take(&mut self, n: usize) -> Vec<Use> {
        let n = n.min(self.uses.len());
        self.uses.drain(..n).collect()
    }

    /// How many uses wait.
    pub fn len(&self) -> usize {
        self.uses.len()
    }
}

/// How a report was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    /// 200/201: every use is recorded (a retried report is recorded once).
    Recorded,
    /// 422 naming the use at `index` (e.g. `clock-skew`, `invalid-identifier`):
    /// nothing was written.
    RefusedUse { index: usize, kind: String },
    /// 413: the body is over the server's limit.
    TooLarge,
    /// Another 4xx: this report will never be taken (status, detail).
    Refused(u16, String),
    /// 5xx, 429, or no answer: try again later.
    Retry(String),
}

/// The body of a report of `uses`.
pub(crate) fn body(uses: &[Use]) -> Value {
    json!({ "uses": uses.iter().map(Use::to_json).collect::<Vec<_>>() })
}

/// The problem `type`'s last segment (`https://tokenledger.dev/problems/<kind>`).
pub(crate) fn problem_kind(problem: &Value) -> String {
    problem
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or_default()
        .to_owned()
}

/// Classifies an answer to a report.
pub(crate) fn classify(status: u16, problem: &Value) -> Sent {
    match status {
        200 | 201 => Sent::Recorded,
        413 => Sent::TooLarge,
        422 => match problem.get("index").and_then(Value::as_u64) {
            Some(i) => Sent::RefusedUse {
                index: usize::try_from(i).unwrap_or(usize::MAX),
                kind: problem_kind(problem),
            },
            None => Sent::Refused(status, problem_kind(problem)),
        },
        408 | 429 => Sent::Retry(format!("{status}")),
        400..=499 => Sent::Refused(status, problem_kind(problem)),
        _ => Sent::Retry(format!("{status} {}", problem_kind(problem))),
    }
}

/// What to drop from `batch` after the ledger refused the use at `index`
/// for `kind`: a `clock-skew` refusal drops every use at or before the
/// refused one's time (they are at least as old), anything else only the
/// refused use. Returns how many were dropped.
pub(crate) fn drop_refused(batch: &mut Vec<Use>, index: usize, kind: &str) -> usize {
    let Some(bad) = batch.get(index) else {
        // An index outside the batch: nothing can be fixed, drop it all.
        let n = batch.len();
        batch.clear();
        return n;
    };
    let before = batch.len();
    if kind == "clock-skew" {
        let at = bad.at;
        batch.retain(|u| u.at > at);
    } else {
        batch.remove(index);
    }
    before - batch.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn u(id: &str, s: u32, reason: Option<Reason>) -> Use {
        Use {
            token_id: id.into(),
            audience: Arc::from("api://orders"),
            reason,
            at: Utc.with_ymd_and_hms(2026, 3, 4, 12, 0, s).unwrap() + chrono::Duration::microseconds(250),
            context: None,
        }
    }

    #[test]
    fn uses_have_the_wire_shape() {
        let mut a = u("j1", 1, None);
        a.context = Some(RequestContext {
            ip: Some("203.0.113.9".into()),
            user_agent: None,
            device_id: None,
        });
        assert_eq!(
            a.to_json(),
            json!({"token_id": "j1", "audience": "api://orders", "outcome": "accepted",
                   "at": "2026-03-04T12:00:01.000250Z", "context": {"ip": "203.0.113.9"}})
        );
        assert_eq!(
            u("j2", 2, Some(Reason::Revoked)).to_json(),
            json!({"token_id": "j2", "audience": "api://orders", "outcome": "rejected", "reason": "revoked",
                   "at": "2026-03-04T12:00:02.000250Z"})
        );
        assert_eq!(body(&[u("j", 0, None)])["uses"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_queue_drops_the_oldest_when_full() {
        let mut q = Queue::new(3);
        let mut dropped = 0;
        for i in 0..5 {
            dropped += q.push(u(&format!("j{i}"), i, None));
        }
        assert_eq!(dropped, 2);
        assert_eq!(q.len(), 3);
        let ids: Vec<String> = q.take(2).into_iter().map(|u| u.token_id).collect();
        assert_eq!(ids, ["j2", "j3"]);
        assert_eq!(q.take(10).len(), 1);
        assert_eq!(q.take(10).len(), 0);
    }

    #[test]
    fn contexts_are_cleaned_field_by_field() {
        let c = RequestContext {
            ip: Some("203.0.113.9".into()),
            user_agent: Some(format!("agent {}", "é".repeat(400))),
            device_id: Some("has space".into()),
        };
        let out = clean_context(&c).unwrap();
        assert_eq!(out.ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(out.device_id, None);
        let ua = out.user_agent.unwrap();
        assert!(ua.len() <= MAX_USER_AGENT_BYTES && ua.starts_with("agent é"));
        let bad = RequestContext {
            ip: Some(String::new()),
            user_agent: Some("\u{0}".into()),
            device_id: Some("x".repeat(300)),
        };
        assert_eq!(clean_context(&bad), None);
    }

    #[test]
    fn answers_are_classified_and_refused_uses_dropped() {
        assert_eq!(classify(201, &Value::Null), Sent::Recorded);
        assert_eq!(classify(200, &Value::Null), Sent::Recorded);
        assert_eq!(classify(413, &Value::Null), Sent::TooLarge);
        assert!(matches!(classify(503, &Value::Null), Sent::Retry(_)));
        assert!(matches!(classify(429, &Value::Null), Sent::Retry(_)));
        assert_eq!(
            classify(401, &json!({"type": "https://tokenledger.dev/problems/unauthorized"})),
            Sent::Refused(401, "unauthorized".into())
        );
        let p = json!({"type": "https://tokenledger.dev/problems/clock-skew", "index": 1});
        assert_eq!(
            classify(422, &p),
            Sent::RefusedUse {
                index: 1,
                kind: "clock-skew".into()
            }
        );

        let mut batch = vec![u("a", 1, None), u("b", 3, None), u("c", 2, None), u("d", 5, None)];
        assert_eq!(drop_refused(&mut batch, 1, "clock-skew"), 3);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].token_id, "d");
        let mut batch = vec![u("a", 1, None), u("b", 3, None)];
        assert_eq!(drop_refused(&mut batch, 0, "invalid-identifier"), 1);
        assert_eq!(batch[0].token_id, "b");
        assert_eq!(drop_refused(&mut batch, 7, "whatever"), 1);
        assert!(batch.is_empty());
    }
}
