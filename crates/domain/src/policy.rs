//! Least privilege: what a client's policy lets it mint (DESIGN.md "Client
//! policy"). A request asking for more is refused and named — never silently
//! narrowed.

use crate::events::{ClientPolicySet, GrantRequest, RefusalReason, TokenFormat};

/// A refusal: which rule refused, and a message naming what was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule that refused.
    pub reason: RefusalReason,
    /// What was refused, e.g. `scope "orders:admin" is not allowed for audience "api://orders"`.
    pub detail: String,
}

/// Checks a grant of `audience`, `scope` (space-delimited), `ttl_seconds` and
/// `format` against the client's policy (`None`: the client has none).
pub fn check_grant(
    policy: Option<&ClientPolicySet>,
    client_id: &str,
    audience: &str,
    scope: &str,
    ttl_seconds: i64,
    format: TokenFormat,
) -> Result<(), Refusal> {
    let refuse = |reason, detail: String| Err(Refusal { reason, detail });
    let Some(policy) = policy else {
        return refuse(RefusalReason::NoPolicy, format!("client {client_id:?} has no policy"));
    };
    if !policy.formats.contains(&format) {
        return refuse(
            RefusalReason::Format,
            format!("format {:?} is not allowed for client {client_id:?}", format.as_str()),
        );
    }
    let Some(aud) = policy.audiences.get(audience) else {
        return refuse(
            RefusalReason::Audience,
            format!("audience {audience:?} is not allowed for client {client_id:?}"),
        );
    };
    let denied: Vec<&str> = scope
        .split(' ')
        .filter(|s| !aud.scopes.iter().any(|a| a == s))
        .collect();
    if !denied.is_empty() {
        return refuse(
            RefusalReason::Scope,
            format!("scope {:?} is not allowed for audience {audience:?}", denied.join(" ")),
        );
    }
    if ttl_seconds <= 0 || ttl_seconds as u64 > aud.max_ttl_seconds {
        return refuse(
            RefusalReason::Ttl,
            format!(
                "ttl of {ttl_seconds} s is outside 1..={} s for audience {audience:?}",
                aud.max_ttl_seconds
            ),
        );
    }
    Ok(())
}

/// The request a refusal records, from the fields of a grant.
pub fn grant_request(audience: &str, scope: &str, ttl_seconds: i64, format: TokenFormat) -> GrantRequest {
    GrantRequest {
        audience: Some(audience.to_owned()),
        scope: Some(scope.to_owned()),
        ttl_seconds: Some(ttl_seconds),
        format: Some(format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::AudiencePolicy;

    fn policy() -> ClientPolicySet {
        ClientPolicySet {
            client_id: "c".into(),
            audiences: [(
                "api://orders".to_owned(),
                AudiencePolicy {
                    scopes: vec!["orders:read".into(), "orders:write".into()],
                    max_ttl_seconds: 3600,
                },
            )]
            .into(),
            formats: vec![TokenFormat::External],
            serves: vec![],
        }
    }

    #[test]
    fn within_policy_is_granted() {
        let p = policy();
        assert!(
            check_grant(
                Some(&p),
                "c",
                "api://orders",
                "orders:read orders:write",
                3600,
                TokenFormat::External
            )
            .is_ok()
        );
    }

    #[test]
    fn each_excess_is_named() {
        let p = policy();
        let r = |aud, scope, ttl, f| check_grant(Some(&p), "c", aud, scope, ttl, f).unwrap_err().reason;
        assert_eq!(
            r("api://orders", "orders:read", 60, TokenFormat::V4Public),
            RefusalReason::Format
        );
        assert_eq!(
            r("api://billing", "orders:read", 60, TokenFormat::External),
            RefusalReason::Audience
        );
        assert_eq!(
            r("api://orders", "orders:admin", 60, TokenFormat::External),
            RefusalReason::Scope
        );
        assert_eq!(
            r("api://orders", "orders:read", 3601, TokenFormat::External),
            RefusalReason::Ttl
        );
        assert_eq!(
            r("api://orders", "orders:read", 0, TokenFormat::External),
            RefusalReason::Ttl
        );
        let e = check_grant(
            Some(&p),
            "c",
            "api://orders",
            "orders:read orders:admin",
            60,
            TokenFormat::External,
        )
        .unwrap_err();
        assert!(
            e.detail.contains("orders:admin") && !e.detail.contains("orders:read\""),
            "{}",
            e.detail
        );
        assert_eq!(
            check_grant(None, "c", "api://orders", "orders:read", 60, TokenFormat::External)
                .unwrap_err()
                .reason,
            RefusalReason::NoPolicy
        );
    }
}
