//! AWS CloudTrail → `TokenIssued` / `TokenUsed`.
//!
//! Source: the CloudTrail record contents reference,
//! <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html>,
//! its `userIdentity` element,
//! <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-user-identity.html>,
//! and the STS API reference (`AssumeRole` & co.),
//! <https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html>.
//!
//! Input: a `{"Records": [...]}` file, a JSON array of records, or NDJSON
//! (e.g. from Logstash, with `@timestamp` instead of `eventTime`).
//!
//! # Records
//!
//! Time: `eventTime`, else `@timestamp` (RFC 3339, UTC); a record with
//! neither is skipped as `no_time`. Record identity: `eventID`.
//!
//! **Issuance** — an `eventSource` `sts.amazonaws.com` record with
//! `eventName` `AssumeRole`, `AssumeRoleWithSAML`, `AssumeRoleWithWebIdentity`
//! or `GetSessionToken`, no `errorCode`, and
//! `responseElements.credentials.accessKeyId` → `TokenIssued`:
//!
//! | event field | from |
//! |---|---|
//! | `token_id` | `responseElements.credentials.accessKeyId` (the temporary access key id, e.g. `ASIA…`) |
//! | `issuer` | `eventSource` (`sts.amazonaws.com`) |
//! | `subject` | `responseElements.assumedRoleUser.arn`; else built as `arn:aws:sts::<account>:assumed-role/<role name>/<session name>` from `requestParameters.roleArn` and `roleSessionName` (`subject` of the SAML response for `AssumeRoleWithSAML`); `GetSessionToken`: `userIdentity.arn` |
//! | `client_id` | the role name (last path segment of `roleArn`), which is what a use of the key names as `sessionContext.sessionIssuer.userName`, so issuance and use agree; `GetSessionToken`: `userIdentity.userName`, else `principalId` |
//! | `audience` | `aws:<account>` — the account of the role (`roleArn`), else `userIdentity.accountId`, else `recipientAccountId`. AWS credentials are good for every service of the account, and the detectors only attribute a use to a token whose audience is the use's audience, so uses carry the same value |
//! | `scope` | `role:<role name>`; `GetSessionToken`: `session-token` |
//! | `issued_at`, `not_before` | the record time |
//! | `expires_at` | `responseElements.credentials.expiration` (`Sep 14, 2020, 7:10:27 AM` form, read as UTC, or RFC 3339); when absent or not after `issued_at`: 1 h (the STS default `DurationSeconds`), 12 h for `GetSessionToken` |
//! | `context.user_agent` | `userAgent` without surrounding `[` `]` |
//! | `context.ip` | `sourceIPAddress` when it is an IP address (not for `ec2.amazonaws.com`) |
//! | `context.device_id` | **device binding**: for an instance-profile credential — `userIdentity.invokedBy` (or `sourceIPAddress`) `ec2.amazonaws.com` and `roleSessionName` an instance id `i-…` — the instance id. The token is then bound to that instance, and its first use from any other device or agent is a `new_device` anomaly (a stolen instance credential). |
//!
//! **Use** — every record with `userIdentity.accessKeyId` → `TokenUsed`
//! (an issuance record called with a key gives the use first, index 0,
//! then the issuance):
//!
//! | event field | from |
//! |---|---|
//! | `validator` | `aws-cloudtrail` |
//! | `audience` | `aws:<userIdentity.accountId>` (else `recipientAccountId`); the called service (`eventSource`) is not kept, see `audience` above |
//! | `outcome` | `accepted` without `errorCode`, else `rejected` with `reason` = `errorCode` lower-cased, non-alphanumerics as `_` (`AccessDenied` → `accessdenied`) |
//! | `token_id` | `userIdentity.accessKeyId` |
//! | `subject` | `userIdentity.arn`, else `principalId` |
//! | `client_id` | `sessionContext.sessionIssuer.userName` (the role), else `userName`, else `principalId` |
//! | `at` | the record time |
//! | `context` | `user_agent` and `ip` as above; never a `device_id`: CloudTrail does not record the calling device |
//!
//! An error that means AWS did not authenticate the key
//! (`InvalidClientTokenId`, `SignatureDoesNotMatch`, `ExpiredToken`, …) leaves
//! the identity unestablished: only `claimed_token_id`, `claimed_subject`
//! and `claimed_client_id` are set. Other errors (`AccessDenied`) come after
//! authentication, so the use stays attributed.
//!
//! **Skipped**: `no_time`; `no_access_key` (neither an issuance nor a call
//! with an access key, e.g. an AWS service acting on its own);
//! `issuance_without_credentials` (an STS issuance record without
//! `responseElements.credentials` and without a calling key).

use crate::common::{self, Mapped, Outcome, at, hash_identity, ident, parse_time, str_at};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use serde_json::Value;
use tokenledger_domain::events::{DomainEvent, RequestContext, TokenFormat, TokenIssued, TokenUsed, UseOutcome};

/// The validator name of CloudTrail uses.
pub const VALIDATOR: &str = "aws-cloudtrail";

const ISSUING_CALLS: &[&str] = &[
    "AssumeRole",
    "AssumeRoleWithSAML",
    "AssumeRoleWithWebIdentity",
    "GetSessionToken",
];

/// Error codes meaning the request's credential was not authenticated.
const AUTHENTICATION_FAILURES: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "InvalidToken",
    "MissingAuthenticationToken",
    "UnrecognizedClientException",
    "AuthFailure",
];

/// Maps one CloudTrail record.
pub(crate) fn map(r: &Value) -> Outcome {
    let time = at(r, &["eventTime"])
        .or_else(|| at(r, &["@timestamp"]))
        .and_then(parse_time)
        .ok_or("no_time")?;
    let identity = str_at(r, &["eventID"]).map_or_else(|| hash_identity(r), str::to_owned);
    let mut events = Vec::new();
    if let Some(key) = str_at(r, &["userIdentity", "accessKeyId"]) {
        events.push(DomainEvent::TokenUsed(use_of(r, key, time)));
    }
    let name = str_at(r, &["eventName"]).unwrap_or_default();
    let issuing = str_at(r, &["eventSource"]) == Some("sts.amazonaws.com")
        && ISSUING_CALLS.contains(&name)
        && str_at(r, &["errorCode"]).is_none();
    if issuing {
        match str_at(r, &["responseElements", "credentials", "accessKeyId"]) {
            Some(key) => events.push(DomainEvent::TokenIssued(issuance(r, name, key, time)?)),
            None if events.is_empty() => return Err("issuance_without_credentials"),
            None => {}
        }
    }
    if events.is_empty() {
        return Err("no_access_key");
    }
    Ok(Mapped { identity, time, events })
}

fn use_of(r: &Value, key: &str, time: DateTime<Utc>) -> TokenUsed {
    let error = str_at(r, &["errorCode"]);
    let subject = str_at(r, &["userIdentity", "arn"])
        .or_else(|| str_at(r, &["userIdentity", "principalId"]))
        .map(ident);
    let client = str_at(r, &["userIdentity", "sessionContext", "sessionIssuer", "userName"])
        .or_else(|| str_at(r, &["userIdentity", "userName"]))
        .or_else(|| str_at(r, &["userIdentity", "principalId"]))
        .map(ident);
    let account = str_at(r, &["userIdentity", "accountId"]).or_else(|| str_at(r, &["recipientAccountId"]));
    let authenticated = !error.is_some_and(|e| AUTHENTICATION_FAILURES.contains(&e));
    let key = ident(key);
    let (token_id, claimed_token_id) = if authenticated {
        (Some(key), None)
    } else {
        (None, Some(key))
    };
    let (subject, claimed_subject) = if authenticated {
        (subject, None)
    } else {
        (None, subject)
    };
    let (client_id, claimed_client_id) = if authenticated { (client, None) } else { (None, client) };
    TokenUsed {
        validator: VALIDATOR.to_owned(),
        audience: audience(account),
        outcome: if error.is_some() {
            UseOutcome::Rejected
        } else {
            UseOutcome::Accepted
        },
        reason: error.map(common::snake),
        at: time,
        context: request_context(r, None),
        token_id,
        subject,
        client_id,
        claimed_token_id,
        claimed_subject,
        claimed_client_id,
    }
}

fn issuance(r: &Value, name: &str, key: &str, time: DateTime<Utc>) -> Result<TokenIssued, &'static str> {
    let role_arn = str_at(r, &["requestParameters", "roleArn"]);
    // arn:aws:iam::<account>:role/<path/><name>
    let role_account = role_arn.and_then(|a| a.split(':').nth(4)).filter(|a| !a.is_empty());
    let role_name = role_arn.and_then(|a| a.rsplit('/').next()).filter(|n| !n.is_empty());
    let session = str_at(r, &["requestParameters", "roleSessionName"]);
    let session_token = name == "GetSessionToken";
    let subject = if session_token {
        str_at(r, &["userIdentity", "arn"]).map(str::to_owned)
    } else {
        str_at(r, &["responseElements", "assumedRoleUser", "arn"])
            .map(str::to_owned)
            .or_else(|| {
                let session = session.or_else(|| str_at(r, &["responseElements", "subject"]))?;
                Some(format!(
                    "arn:aws:sts::{}:assumed-role/{}/{session}",
                    role_account?, role_name?
                ))
            })
    }
    .ok_or("no_subject")?;
    let client_id = if session_token {
        str_at(r, &["userIdentity", "userName"]).or_else(|| str_at(r, &["userIdentity", "principalId"]))
    } else {
        role_name
    }
    .ok_or("no_client")?;
    let scope = match role_name {
        Some(role) if !session_token => format!("role:{role}"),
        _ => "session-token".to_owned(),
    };
    let default = if session_token {
        TimeDelta::hours(12)
    } else {
        TimeDelta::hours(1)
    };
    let expiration = str_at(r, &["responseElements", "credentials", "expiration"]).and_then(parse_expiration);
    let account = role_account
        .or_else(|| str_at(r, &["userIdentity", "accountId"]))
        .or_else(|| str_at(r, &["recipientAccountId"]));
    let by_ec2 = str_at(r, &["userIdentity", "invokedBy"]) == Some("ec2.amazonaws.com")
        || str_at(r, &["sourceIPAddress"]) == Some("ec2.amazonaws.com");
    let device = session.filter(|s| by_ec2 && is_instance_id(s)).map(str::to_owned);
    Ok(TokenIssued {
        token_id: ident(key),
        tenant: String::new(),
        issuer: ident(str_at(r, &["eventSource"]).unwrap_or("sts.amazonaws.com")),
        subject: ident(&subject),
        client_id: ident(client_id),
        audience: audience(account),
        scope: ident(&scope),
        issued_at: time,
        expires_at: common::expiry(time, expiration, default, None),
        not_before: time,
        format: TokenFormat::External,
        kid: None,
        cnf: None,
        parent_token_id: None,
        context: request_context(r, device),
    })
}

/// `aws:<account>`, or `aws` when the record names no account.
fn audience(account: Option<&str>) -> String {
    account.map_or_else(|| "aws".to_owned(), |a| format!("aws:{}", ident(a)))
}

fn request_context(r: &Value, device_id: Option<String>) -> Option<RequestContext> {
    let ua = str_at(r, &["userAgent"]).map(|ua| {
        let ua = ua.strip_prefix('[').and_then(|u| u.strip_suffix(']')).unwrap_or(ua);
        common::text(ua)
    });
    let ip = str_at(r, &["sourceIPAddress"]).and_then(common::ip);
    common::context(ip, ua, device_id)
}

/// `i-` and 8 or 17 lower-case hex digits: an EC2 instance id.
fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `Sep 14, 2020, 7:10:27 AM` (CloudTrail's form, read as UTC) or RFC 3339.
fn parse_expiration(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%b %d, %Y, %I:%M:%S %p")
        .map(|t| t.and_utc())
        .ok()
        .or_else(|| common::parse_time_str(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_forms() {
        assert_eq!(
            parse_expiration("Sep 14, 2020, 7:10:27 AM")
                .map(|t| t.to_rfc3339())
                .as_deref(),
            Some("2020-09-14T07:10:27+00:00")
        );
        assert_eq!(
            parse_expiration("Sep 14, 2020, 12:01:02 PM")
                .map(|t| t.to_rfc3339())
                .as_deref(),
            Some("2020-09-14T12:01:02+00:00")
        );
        assert_eq!(
            parse_expiration("2020-09-14T07:10:27Z")
                .map(|t| t.to_rfc3339())
                .as_deref(),
            Some("2020-09-14T07:10:27+00:00")
        );
        assert_eq!(parse_expiration("soon"), None);
    }

    #[test]
    fn instance_ids() {
        assert!(is_instance_id("i-0317f6c6b66ae9c40"));
        assert!(is_instance_id("i-1234abcd"));
        assert!(!is_instance_id("i-0317F6C6B66AE9C40"));
        assert!(!is_instance_id("botocore-session-1600044000"));
    }
}
