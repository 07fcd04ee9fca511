//! Windows Security events 4768 / 4769 / 4771 (domain controller Kerberos
//! auditing) → `TokenIssued` / `TokenUsed`.
//!
//! Sources: Microsoft's event pages,
//! <https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-10/security/threat-protection/auditing/event-4768>
//! (a Kerberos authentication ticket (TGT) was requested),
//! <https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-10/security/threat-protection/auditing/event-4769>
//! (a Kerberos service ticket was requested),
//! <https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-10/security/threat-protection/auditing/event-4771>
//! (Kerberos pre-authentication failed), and RFC 4120 §7.5.9 for the
//! meaning of the `Status` / `Failure Code` values.
//!
//! Input: NDJSON (or a JSON array) of events whose fields are flat at the
//! top level (OTRF/Mordor: `EventID`, `TargetUserName`, `TargetDomainName`,
//! `ServiceName`, `IpAddress`, `Status`, `Computer`, `EventRecordID`,
//! `@timestamp`), or nested under `EventData` / `event_data`, or Winlogbeat
//! style (`winlog.event_id`, `winlog.event_data`, `winlog.computer_name`,
//! `winlog.record_id`).
//!
//! # Records
//!
//! Time: `@timestamp`, `TimeCreated` (a string or `{"SystemTime": …}`),
//! `EventTime` or `timestamp`; RFC 3339, or without an offset read as UTC.
//! Without one a record is skipped as `no_time`. Record identity:
//! `Computer` + `|` + `EventRecordID`.
//!
//! | record | event |
//! |---|---|
//! | 4768 with `Status` 0x0 | `TokenIssued` of a ticket-granting ticket |
//! | 4769 with `Status` 0x0 | `TokenIssued` of a service ticket |
//! | 4768 / 4771 with `Status` 0x19 (`KDC_ERR_PREAUTH_REQUIRED`) | skipped `preauth_required_protocol_step` (a protocol step, as in the Zeek importer) |
//! | 4768 / 4769 with another `Status`, every other 4771 | `TokenUsed` rejected, unattributed |
//! | another event id | skipped `unmapped_event_id` (`no_event_id` without one) |
//! | no `Status` | skipped `no_status`; no `TargetUserName` on a success: `no_target_user` |
//!
//! `TokenIssued`:
//!
//! | event field | from |
//! |---|---|
//! | `token_id` | synthesized (the event has no ticket id): `krb-` + the first 24 hex digits of SHA-256 of `windows-security|<Computer>|<EventRecordID>|<TargetUserName>|<ServiceName>` as in the record |
//! | `issuer` | `dc:<Computer>` (the domain controller that logged it) |
//! | `subject`, `client_id` | `TargetUserName` (4769: `user@REALM` form) normalized as a principal `name@REALM`, realm from `TargetDomainName` — the rule of the Zeek importer: name lower-cased, realm upper-cased, a NetBIOS name (`DMEVALS`) expanded to the only full realm of the file starting with it |
//! | `audience` | 4768: `krbtgt/<REALM>`; 4769: `ServiceName` lower-cased (the service account, e.g. `newyork$`; `krbtgt` becomes `krbtgt/<REALM>`) |
//! | `scope` | `krbtgt` for TGTs; 4769: the service account name lower-cased |
//! | `issued_at`, `not_before` | the event time |
//! | `expires_at` | the event time + 10 h (the events carry no end time; 10 h is Active Directory's default maximum ticket lifetime) |
//! | `context.ip` | `IpAddress`, with `::ffff:` of an IPv4-mapped address removed; absent for `-` |
//!
//! `TokenUsed` (failure): `validator` `dc:<Computer>`, `audience` as above
//! (4771: `krbtgt/<REALM>`, the realm from its `ServiceName`
//! `krbtgt/<REALM>` or the file's only realm), `outcome` rejected, `reason` =
//! the RFC 4120 name of the status code lower-cased (0x6
//! `kdc_err_c_principal_unknown`, 0x12 `kdc_err_client_revoked`, 0x18
//! `kdc_err_preauth_failed`, 0x25 `krb_ap_err_skew`; an unknown code
//! `kerberos_status_0x…`), `at` = event time, `context.ip`,
//! `claimed_subject` = the normalized user. The KDC refused, so nothing is
//! attributed.

use crate::common::{self, Mapped, Outcome, Realms, Record, at, hash_identity, ident, parse_time, str_at};
use serde_json::Value;
use tokenledger_domain::events::{DomainEvent, TokenFormat, TokenIssued};

/// A field at the top level, under `EventData` / `event_data`, or under
/// `winlog.event_data`.
fn field<'a>(r: &'a Value, name: &str) -> Option<&'a str> {
    str_at(r, &[name])
        .or_else(|| str_at(r, &["EventData", name]))
        .or_else(|| str_at(r, &["event_data", name]))
        .or_else(|| str_at(r, &["winlog", "event_data", name]))
}

/// A number or a numeric string (decimal, or hexadecimal with `0x`).
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

fn event_id(r: &Value) -> Option<u64> {
    [
        at(r, &["EventID"]),
        at(r, &["event_id"]),
        at(r, &["winlog", "event_id"]),
        at(r, &["event", "code"]),
    ]
    .into_iter()
    .flatten()
    .find_map(number)
}

fn computer(r: &Value) -> Option<&str> {
    str_at(r, &["Computer"])
        .or_else(|| str_at(r, &["Hostname"]))
        .or_else(|| str_at(r, &["computer_name"]))
        .or_else(|| str_at(r, &["winlog", "computer_name"]))
}

fn record_id(r: &Value) -> Option<String> {
    [
        at(r, &["EventRecordID"]),
        at(r, &["RecordNumber"]),
        at(r, &["record_id"]),
        at(r, &["winlog", "record_id"]),
    ]
    .into_iter()
    .flatten()
    .find_map(|v| number(v).map(|n| n.to_string()))
}

fn time_of(r: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    at(r, &["@timestamp"])
        .or_else(|| at(r, &["TimeCreated", "SystemTime"]))
        .or_else(|| at(r, &["TimeCreated"]).filter(|v| v.is_string()))
        .or_else(|| at(r, &["EventTime"]))
        .or_else(|| at(r, &["timestamp"]))
        .and_then(parse_time)
}

/// Collects the realm spellings of a whole file.
pub(crate) fn realms(records: &[Record]) -> Realms {
    let mut realms = Realms::default();
    for r in records.iter().flatten() {
        if let Some(d) = field(r, "TargetDomainName").filter(|d| *d != "-") {
            realms.observe(d);
        }
        if let Some((_, realm)) = field(r, "TargetUserName").and_then(|u| u.rsplit_once('@')) {
            realms.observe(realm);
        }
        if let Some((class, realm)) = field(r, "ServiceName").and_then(|s| s.split_once('/'))
            && class.eq_ignore_ascii_case("krbtgt")
        {
            realms.observe(realm);
        }
    }
    realms
}

/// The only realm of the file, for a 4771 that names none.
fn only_realm(realms: &Realms) -> Option<String> {
    realms.only_full()
}

/// Maps one Security event.
pub(crate) fn map(r: &Value, realms: &Realms) -> Outcome {
    let id = event_id(r).ok_or("no_event_id")?;
    if !matches!(id, 4768..=4769 | 4771) {
        return Err("unmapped_event_id");
    }
    let time = time_of(r).ok_or("no_time")?;
    let computer = computer(r);
    let record = record_id(r);
    let identity = match (&record, computer) {
        (Some(rec), Some(c)) => format!("{c}|{rec}"),
        (Some(rec), None) => rec.clone(),
        _ => hash_identity(r),
    };
    let status = at(r, &["Status"])
        .or_else(|| at(r, &["EventData", "Status"]))
        .or_else(|| at(r, &["event_data", "Status"]))
        .or_else(|| at(r, &["winlog", "event_data", "Status"]))
        .and_then(number)
        .ok_or("no_status")?;
    if status == 0x19 && id != 4769 {
        return Err("preauth_required_protocol_step");
    }
    let user = field(r, "TargetUserName").filter(|u| *u != "-");
    let service = field(r, "ServiceName").filter(|s| *s != "-");
    let (name, realm) = match user.map(|u| u.rsplit_once('@')) {
        Some(Some((n, realm))) => (Some(n), Some(realm.to_owned())),
        _ => (
            user,
            field(r, "TargetDomainName").filter(|d| *d != "-").map(str::to_owned),
        ),
    };
    let krbtgt_realm = service
        .and_then(|s| s.split_once('/'))
        .filter(|(c, _)| c.eq_ignore_ascii_case("krbtgt"))
        .map(|(_, realm)| realm.to_owned());
    let realm = realm.or_else(|| krbtgt_realm.clone()).or_else(|| only_realm(realms));
    let subject = name.map(|n| ident(&realms.principal(n, realm.as_deref())));
    let tgt_audience = match realm.as_deref().map(|r| realms.norm(r)) {
        Some(r) => format!("krbtgt/{r}"),
        None => "krbtgt".to_owned(),
    };
    let is_tgs_for_tgt = id == 4769 && service.map(common::service_class).as_deref() == Some("krbtgt");
    let audience = if id == 4769 && !is_tgs_for_tgt {
        ident(&realms.service(service.ok_or("no_service")?))
    } else {
        tgt_audience
    };
    let ip = field(r, "IpAddress").and_then(common::ip);
    let event = if status == 0 && id != 4771 {
        let subject = subject.ok_or("no_target_user")?;
        let computer = computer.ok_or("no_computer")?;
        let record = record.as_deref().unwrap_or(&identity);
        let scope = if id == 4768 || is_tgs_for_tgt {
            "krbtgt".to_owned()
        } else {
            common::service_class(service.unwrap_or_default())
        };
        DomainEvent::TokenIssued(TokenIssued {
            token_id: common::krb_token_id(&[
                "windows-security",
                computer,
                record,
                user.unwrap_or_default(),
                service.unwrap_or_default(),
            ]),
            tenant: String::new(),
            issuer: format!("dc:{}", ident(computer)),
            subject: subject.clone(),
            client_id: subject,
            audience,
            scope: ident(&scope),
            issued_at: time,
            expires_at: time + common::KERBEROS_LIFETIME,
            not_before: time,
            format: TokenFormat::External,
            kid: None,
            cnf: None,
            parent_token_id: None,
            context: common::context(ip, None, None),
        })
    } else {
        let reason = u32::try_from(status)
            .ok()
            .and_then(common::kerberos_error)
            .map_or_else(|| format!("kerberos_status_0x{status:x}"), str::to_owned);
        common::kerberos_refusal(
            computer.map_or_else(|| "windows-security".to_owned(), |c| format!("dc:{}", ident(c))),
            audience,
            reason,
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
