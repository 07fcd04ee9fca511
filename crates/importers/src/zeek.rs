//! Zeek `kerberos.log` (NDJSON) → `TokenIssued` / `TokenUsed`.
//!
//! Sources: Zeek's `Kerberos::Info` record,
//! <https://docs.zeek.org/en/master/scripts/base/protocols/krb/main.zeek.html>,
//! and RFC 4120 (The Kerberos Network Authentication Service (V5)),
//! <https://www.rfc-editor.org/rfc/rfc4120>: an AS exchange (§3.1) issues a
//! ticket-granting ticket, a TGS exchange (§3.3) a service ticket; error
//! names are those of §7.5.9.
//!
//! # Records
//!
//! Time: `ts`, epoch seconds with a fraction (UTC; an RFC 3339 string is
//! accepted too); without it a record is skipped as `no_time`. Record
//! identity: `uid` + `|` + `ts` as written in the record.
//!
//! | record | event |
//! |---|---|
//! | no `request_type` (e.g. the SMB-port stubs Zeek logs for Kerberos inside SMB) | skipped `no_kerberos_fields` |
//! | `request_type` other than `AS`/`TGS` | skipped `unmapped_request_type` |
//! | no `success` | skipped `no_outcome` |
//! | `success: true`, `AS` | `TokenIssued` of a ticket-granting ticket |
//! | `success: true`, `TGS` | `TokenIssued` of a service ticket |
//! | `success: false`, `error_msg` `KDC_ERR_PREAUTH_REQUIRED` | skipped `preauth_required_protocol_step`: the KDC's normal first answer to a client that has not sent pre-authentication (RFC 4120 §3.1.1), not a failure |
//! | `success: false`, any other error | `TokenUsed` rejected, unattributed |
//!
//! `TokenIssued`:
//!
//! | event field | from |
//! |---|---|
//! | `token_id` | synthesized (the log has no ticket id): `krb-` + the first 24 hex digits of SHA-256 of `uid|ts|client|service`, with `ts`, `client` and `service` exactly as in the record — stable across imports |
//! | `issuer` | `kdc:<REALM>`: the realm of `service` for `krbtgt/<realm>`, else the realm of `client`; `kdc:<id_resp_h>` when no realm is known |
//! | `subject`, `client_id` | `client` normalized as a principal `name@REALM` (in RFC 4120 terms the client *is* the principal, so both are the same) |
//! | `audience` | `service` normalized: `krbtgt/<REALM>` for ticket-granting tickets, else the SPN lower-cased |
//! | `scope` | the service class: `krbtgt` for TGTs, `cifs`, `ldap`, `host`, `http`, … (first SPN component, lower-cased) |
//! | `issued_at`, `not_before` | `ts` |
//! | `expires_at` | `till` (epoch seconds), capped at `ts` + 10 h: Zeek logs the `till` of the *request* (KDC-REQ-BODY, RFC 4120 §5.4.1), which Windows clients set to 2037-09-13T02:48:05Z; the KDC grants at most its policy lifetime, 10 h by default in Active Directory. A `till` not after `ts` also gives `ts` + 10 h |
//! | `context.ip` | `id_orig_h` |
//!
//! `TokenUsed` (failure): `validator` `zeek:<@system>` (the sensor; `zeek`
//! without one), `audience` = `service` normalized, `outcome` rejected,
//! `reason` = `error_msg` lower-cased (`kdc_err_c_principal_unknown`), `at` =
//! `ts`, `context.ip` = `id_orig_h`, `claimed_subject` = normalized `client`
//! when logged. The KDC refused, so nothing is attributed.
//!
//! Principal normalization (see also `Realms` in the shared helpers): Zeek
//! writes `client` as `<name>/<realm>`; the name is lower-cased, the realm
//! upper-cased, and a short realm (`dmevals`) becomes the full one
//! (`DMEVALS.LOCAL`) when the same file shows exactly one full realm starting
//! with it. So `pbeesly/dmevals` and `pbeesly/DMEVALS.LOCAL` are both
//! `pbeesly@DMEVALS.LOCAL`, `UTICA$/DMEVALS.LOCAL` is `utica$@DMEVALS.LOCAL`.

use crate::common::{self, Mapped, Outcome, Realms, Record, at, hash_identity, ident, parse_time, str_at};
use serde_json::Value;
use tokenledger_domain::events::{DomainEvent, TokenFormat, TokenIssued};

/// Collects the realm spellings of a whole file (for short-realm expansion).
pub(crate) fn realms(records: &[Record]) -> Realms {
    let mut realms = Realms::default();
    for r in records.iter().flatten() {
        if let Some((_, realm)) = str_at(r, &["client"]).and_then(|c| c.rsplit_once('/')) {
            realms.observe(realm);
        }
        if let Some(s) = str_at(r, &["service"]) {
            if let Some((_, realm)) = s.rsplit_once('@') {
                realms.observe(realm);
            } else if let Some((class, realm)) = s.split_once('/')
                && class.eq_ignore_ascii_case("krbtgt")
            {
                realms.observe(realm);
            }
        }
    }
    realms
}

/// `<name>/<realm>` split into name and realm (no realm without a `/`).
fn split_client(client: &str) -> (&str, Option<&str>) {
    match client.rsplit_once('/') {
        Some((name, realm)) => (name, Some(realm)),
        None => (client, None),
    }
}

/// Maps one `kerberos.log` record.
pub(crate) fn map(r: &Value, realms: &Realms) -> Outcome {
    let Some(request_type) = str_at(r, &["request_type"]) else {
        return Err("no_kerberos_fields");
    };
    let ts = at(r, &["ts"]).ok_or("no_time")?;
    let time = parse_time(ts).ok_or("no_time")?;
    let ts_text = ts.as_str().map_or_else(|| ts.to_string(), str::to_owned);
    let uid = str_at(r, &["uid"]);
    let identity = uid.map_or_else(|| hash_identity(r), |u| format!("{u}|{ts_text}"));
    if request_type != "AS" && request_type != "TGS" {
        return Err("unmapped_request_type");
    }
    let success = at(r, &["success"]).and_then(Value::as_bool).ok_or("no_outcome")?;
    let client = str_at(r, &["client"]);
    let service = str_at(r, &["service"]).ok_or("no_service")?;
    let ip = str_at(r, &["id_orig_h"]).and_then(common::ip);
    let subject = client.map(|c| {
        let (name, realm) = split_client(c);
        ident(&realms.principal(name, realm))
    });
    let audience = ident(&realms.service(service));
    let event = if success {
        let client = client.ok_or("no_client")?;
        let subject = subject.unwrap_or_default();
        let class = common::service_class(service);
        let realm = match service.split_once('/') {
            Some((c, realm)) if c.eq_ignore_ascii_case("krbtgt") => Some(realm),
            _ => split_client(client).1,
        };
        let issuer = match realm {
            Some(realm) => format!("kdc:{}", realms.norm(realm)),
            None => format!("kdc:{}", str_at(r, &["id_resp_h"]).ok_or("no_issuer")?),
        };
        let till = at(r, &["till"]).and_then(parse_time);
        DomainEvent::TokenIssued(TokenIssued {
            token_id: common::krb_token_id(&[uid.unwrap_or(&identity), &ts_text, client, service]),
            tenant: String::new(),
            issuer: ident(&issuer),
            subject: subject.clone(),
            client_id: subject,
            audience,
            scope: ident(&class),
            issued_at: time,
            expires_at: common::expiry(time, till, common::KERBEROS_LIFETIME, Some(common::KERBEROS_LIFETIME)),
            not_before: time,
            format: TokenFormat::External,
            kid: None,
            cnf: None,
            parent_token_id: None,
            context: common::context(ip, None, None),
        })
    } else {
        let error = str_at(r, &["error_msg"]);
        if error == Some("KDC_ERR_PREAUTH_REQUIRED") {
            return Err("preauth_required_protocol_step");
        }
        let validator = str_at(r, &["@system"]).map_or_else(|| "zeek".to_owned(), |s| format!("zeek:{}", ident(s)));
        common::kerberos_refusal(
            validator,
            audience,
            error.map_or_else(|| "kdc_error".to_owned(), common::snake),
            time,
            ip,
            subject,
        )
    };
    Ok(Mapped {
        identity,
        time,
        events: vec![event],
    })
}
