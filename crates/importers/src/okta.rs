//! Okta System Log → `TokenIssued` / `TokenUsed` / `TokenRevoked`.
//!
//! Source: the System Log API `LogEvent` object,
//! <https://developer.okta.com/docs/reference/api/system-log/> (fields
//! `uuid`, `published`, `eventType`, `actor`, `client`, `outcome`, `target`,
//! `authenticationContext`, `debugContext.debugData`, `transaction`), and the
//! event types catalogue, <https://developer.okta.com/docs/reference/api/event-types/>.
//!
//! Input: a JSON array of `LogEvent` objects (what `GET /api/v1/logs`
//! answers) or NDJSON.
//!
//! # Records
//!
//! Time: `published` (RFC 3339, UTC), else skipped `no_time`. Record
//! identity: `uuid`. The actor is `actor.alternateId` (the login), else
//! `actor.id`. The session is `authenticationContext.externalSessionId`
//! (Okta writes `unknown` when there is none; that counts as none).
//!
//! | record | event |
//! |---|---|
//! | any `eventType` with `outcome.result` `FAILURE` or `DENY` | `TokenUsed` rejected, unattributed |
//! | `user.session.start`, `SUCCESS` | `TokenIssued` of the Okta session |
//! | `app.oauth2.as.token.grant.access_token` / `.id_token` / `.refresh_token`, `SUCCESS` | `TokenIssued` of that token |
//! | `user.authentication.sso`, `SUCCESS` | `TokenUsed` accepted, of the session |
//! | `user.session.end`, `SUCCESS` | `TokenRevoked` of the session, reason `okta_session_end` |
//! | `app.oauth2.as.token.revoke`, `SUCCESS` | `TokenRevoked` of the token, reason `okta_token_revoke` |
//! | any other `eventType` | skipped `unmapped_event_type` |
//! | a mapped `eventType` with another result (`ALLOW`, `CHALLENGE`, `SKIPPED`, `UNKNOWN`) | skipped `unmapped_outcome` |
//! | a session event without a session id | skipped `no_session_id` |
//! | a token event without a token target | skipped `no_token_id` |
//!
//! Session `TokenIssued`: `token_id` = `externalSessionId`; `issuer`,
//! `audience` and `client_id` = `okta` (the session is Okta's own and is
//! presented to Okta); `subject` = the actor; `scope` = `session`;
//! `expires_at` = `published` + 2 h (Okta's default global session idle
//! lifetime; the LogEvent does not carry the session's end).
//!
//! Token `TokenIssued`: `token_id` = `id` of the `target` whose `type` is
//! `access_token`, `id_token` or `refresh_token` (`AT.…`, `ID.…`, `rt.…`);
//! `issuer` = `debugContext.debugData.issuer` (the authorization server URL),
//! else `okta`; `subject` = the actor; `client_id` = `client.id` (for OAuth
//! requests the OAuth client's id), else the `AppInstance` target's `id`;
//! `audience` = `debugData.audience`, else for an ID token the client id
//! (OIDC `aud`), else the issuer; `scope` = `debugData.grantedScopes`
//! (comma- or space-separated) as a space-delimited scope, else the token
//! kind; `expires_at` = the token target's `detailEntry.expires`, else
//! 1 h (access and ID tokens, Okta's default) or 7 days (refresh tokens).
//!
//! SSO `TokenUsed`: `validator` `okta`, `audience` `okta`, `token_id` = the
//! session, `subject` = the actor, `client_id` `okta`. Rejected `TokenUsed`:
//! `validator` and `audience` `okta`, `reason` = `outcome.reason` in
//! snake_case (`INVALID_CREDENTIALS` → `invalid_credentials`), else the
//! result (`failure`, `deny`); only `claimed_subject` = the actor.
//!
//! Context of every event: `ip` = `client.ipAddress`, `user_agent` =
//! `client.userAgent.rawUserAgent`, `device_id` = `device.id` when the
//! LogEvent has a `device` object (`client.device` is a device *type* such as
//! `Computer`, not an identifier, and is not used).

use crate::common::{self, Mapped, Outcome, at, hash_identity, ident, parse_time, str_at};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use tokenledger_domain::events::{
    DomainEvent, RequestContext, TokenFormat, TokenIssued, TokenRevoked, TokenUsed, UseOutcome,
};

/// Issuer, audience and validator name of Okta sessions.
pub const OKTA: &str = "okta";

const SESSION_LIFETIME: TimeDelta = TimeDelta::hours(2);
const TOKEN_KINDS: &[&str] = &["access_token", "id_token", "refresh_token"];

/// Maps one `LogEvent`.
pub(crate) fn map(r: &Value) -> Outcome {
    let time = at(r, &["published"]).and_then(parse_time).ok_or("no_time")?;
    let identity = str_at(r, &["uuid"]).map_or_else(|| hash_identity(r), str::to_owned);
    let event_type = str_at(r, &["eventType"]).ok_or("no_event_type")?;
    let result = str_at(r, &["outcome", "result"])
        .unwrap_or_default()
        .to_ascii_uppercase();
    let actor = str_at(r, &["actor", "alternateId"])
        .filter(|a| !a.eq_ignore_ascii_case("unknown"))
        .or_else(|| str_at(r, &["actor", "id"]))
        .map(ident);
    let session = str_at(r, &["authenticationContext", "externalSessionId"])
        .filter(|s| !s.eq_ignore_ascii_case("unknown"))
        .map(ident);
    let event = if result == "FAILURE" || result == "DENY" {
        let reason = str_at(r, &["outcome", "reason"]).unwrap_or(&result);
        DomainEvent::TokenUsed(TokenUsed {
            validator: OKTA.to_owned(),
            audience: OKTA.to_owned(),
            outcome: UseOutcome::Rejected,
            reason: Some(common::snake(reason)),
            at: time,
            context: request_context(r),
            token_id: None,
            subject: None,
            client_id: None,
            claimed_token_id: None,
            claimed_subject: actor,
            claimed_client_id: None,
        })
    } else {
        let kind = event_type.strip_prefix("app.oauth2.as.token.grant.");
        let mapped = matches!(
            event_type,
            "user.session.start" | "user.authentication.sso" | "user.session.end" | "app.oauth2.as.token.revoke"
        ) || kind.is_some_and(|k| TOKEN_KINDS.contains(&k));
        if !mapped {
            return Err("unmapped_event_type");
        }
        if result != "SUCCESS" {
            return Err("unmapped_outcome");
        }
        let actor = actor.ok_or("no_actor")?;
        match (event_type, kind) {
            ("user.session.start", _) => DomainEvent::TokenIssued(TokenIssued {
                token_id: session.ok_or("no_session_id")?,
                tenant: String::new(),
                issuer: OKTA.to_owned(),
                subject: actor,
                client_id: OKTA.to_owned(),
                audience: OKTA.to_owned(),
                scope: "session".to_owned(),
                issued_at: time,
                expires_at: time + SESSION_LIFETIME,
                not_before: time,
                format: TokenFormat::External,
                kid: None,
                cnf: None,
                parent_token_id: None,
                context: request_context(r),
            }),
            ("user.authentication.sso", _) => DomainEvent::TokenUsed(TokenUsed {
                validator: OKTA.to_owned(),
                audience: OKTA.to_owned(),
                outcome: UseOutcome::Accepted,
                reason: None,
                at: time,
                context: request_context(r),
                token_id: Some(session.ok_or("no_session_id")?),
                subject: Some(actor),
                client_id: Some(OKTA.to_owned()),
                claimed_token_id: None,
                claimed_subject: None,
                claimed_client_id: None,
            }),
            ("user.session.end", _) => DomainEvent::TokenRevoked(TokenRevoked {
                token_id: Some(session.ok_or("no_session_id")?),
                selector: None,
                reason: "okta_session_end".to_owned(),
                by: None,
            }),
            ("app.oauth2.as.token.revoke", _) => {
                let (_, token) = token_target(r).ok_or("no_token_id")?;
                DomainEvent::TokenRevoked(TokenRevoked {
                    token_id: Some(ident(token_str(token, "id").ok_or("no_token_id")?)),
                    selector: None,
                    reason: "okta_token_revoke".to_owned(),
                    by: None,
                })
            }
            (_, Some(kind)) => DomainEvent::TokenIssued(grant(r, kind, actor, time)?),
            _ => return Err("unmapped_event_type"),
        }
    };
    Ok(Mapped {
        identity,
        time,
        events: vec![event],
    })
}

fn grant(r: &Value, kind: &str, subject: String, time: DateTime<Utc>) -> Result<TokenIssued, &'static str> {
    let target = r
        .get("target")
        .and_then(Value::as_array)
        .and_then(|ts| ts.iter().find(|t| str_at(t, &["type"]) == Some(kind)))
        .ok_or("no_token_id")?;
    let token_id = ident(token_str(target, "id").ok_or("no_token_id")?);
    let issuer = str_at(r, &["debugContext", "debugData", "issuer"]).map_or_else(|| OKTA.to_owned(), ident);
    let client_id = str_at(r, &["client", "id"])
        .or_else(|| {
            r.get("target")
                .and_then(Value::as_array)
                .and_then(|ts| ts.iter().find(|t| str_at(t, &["type"]) == Some("AppInstance")))
                .and_then(|t| str_at(t, &["id"]))
        })
        .map(ident)
        .ok_or("no_client")?;
    let audience = match str_at(r, &["debugContext", "debugData", "audience"]) {
        Some(a) => ident(a),
        None if kind == "id_token" => client_id.clone(),
        None => issuer.clone(),
    };
    let mut scopes: Vec<String> = Vec::new();
    for s in str_at(r, &["debugContext", "debugData", "grantedScopes"])
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|s| !s.is_empty())
    {
        let s = ident(s);
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    let scope = if scopes.is_empty() {
        kind.to_owned()
    } else {
        scopes.join(" ")
    };
    let default = if kind == "refresh_token" {
        TimeDelta::days(7)
    } else {
        TimeDelta::hours(1)
    };
    let expires = str_at(target, &["detailEntry", "expires"]).and_then(common::parse_time_str);
    Ok(TokenIssued {
        token_id,
        tenant: String::new(),
        issuer,
        subject,
        client_id,
        audience,
        scope,
        issued_at: time,
        expires_at: common::expiry(time, expires, default, None),
        not_before: time,
        format: TokenFormat::External,
        kid: None,
        cnf: None,
        parent_token_id: None,
        context: request_context(r),
    })
}

/// The first `target` that is a token, with its kind.
fn token_target(r: &Value) -> Option<(&str, &Value)> {
    r.get("target")?.as_array()?.iter().find_map(|t| {
        let kind = str_at(t, &["type"])?;
        TOKEN_KINDS.contains(&kind).then_some((kind, t))
    })
}

fn token_str<'a>(t: &'a Value, field: &str) -> Option<&'a str> {
    str_at(t, &[field])
}

fn request_context(r: &Value) -> Option<RequestContext> {
    common::context(
        str_at(r, &["client", "ipAddress"]).and_then(common::ip),
        str_at(r, &["client", "userAgent", "rawUserAgent"])
            .filter(|ua| !ua.eq_ignore_ascii_case("unknown"))
            .map(common::text),
        str_at(r, &["device", "id"]).map(ident),
    )
}
