//! Importers of real identity logs (DESIGN.md "Rules the contract rests
//! on", Time: imports keep the original time in `metadata.source_time`).
//!
//! [`import`] reads a whole file of one [`Format`] and maps each record to
//! zero or more ledger events — `TokenIssued`, `TokenUsed`, `TokenRevoked` —
//! or counts it in [`Report::skipped`] under a stable snake_case reason, so
//! `records_read == records_mapped + skipped.values().sum()` always holds.
//! The mapping of each format is documented in its module:
//!
//! | `--format` | module | source |
//! |---|---|---|
//! | `cloudtrail` | [`cloudtrail`] | AWS CloudTrail record contents, <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html> |
//! | `zeek-kerberos` | [`zeek`] | Zeek `kerberos.log`, <https://docs.zeek.org/en/master/scripts/base/protocols/krb/main.zeek.html>, RFC 4120 |
//! | `okta` | [`okta`] | Okta System Log `LogEvent`, <https://developer.okta.com/docs/reference/api/system-log/> |
//! | `windows-security` | [`windows`] | Windows Security events 4768/4769/4771, <https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-10/security/threat-protection/auditing/event-4768>, RFC 4120 §7.5.9 |
//!
//! # Input
//!
//! Every format accepts NDJSON (one JSON object per line; blank lines are
//! ignored and are not records), a JSON array of objects, and CloudTrail
//! also its `{"Records": [...]}` file. A line that is not JSON is a record
//! skipped as `not_json`; JSON that is not an object is `not_object`. The
//! whole import fails with [`ImportError`] only when the input is not the
//! format at all: empty (or only whitespace), a `Records` member that is not
//! an array, or not a single record that is a JSON object.
//!
//! # What every produced event satisfies
//!
//! * `event_id` is a UUID v5 in the namespace [`EVENT_ID_NAMESPACE`] over
//!   `"<format name>|<record identity>|<index of the event within the
//!   record>"`; the record identity is the source's own record id (CloudTrail
//!   `eventID`, Zeek `uid` + `ts`, Okta `uuid`, Windows `Computer` +
//!   `EventRecordID`) or, when the record has none, the SHA-256 of the
//!   record's JSON text. Importing a file twice gives identical ids; a record
//!   repeated in the file is skipped as `duplicate_record` (a batch must not
//!   repeat an id).
//! * `stream` is `token-<token_id>` ([`tokenledger_domain::ids::token_stream`])
//!   for every event naming a token id (`TokenIssued`, `TokenRevoked`, an
//!   attributed `TokenUsed`); a `TokenUsed` without a token id (an
//!   unattributed failure) goes to `uses-<validator>`. This is for library
//!   users: `POST /v1/imports` does not take streams from the client and
//!   chooses them itself (`token-<token_id>` for issuance and revocation,
//!   `import-<format>-uses` for every use, so imported uses never share a
//!   stream with a live validator's reports).
//! * Names pass [`DomainEvent::check_names`] (identifiers are NFC-normalized
//!   first; control characters are dropped from user agents); a
//!   `TokenIssued` is checked with a placeholder tenant, since `tenant` is
//!   left empty for the server to stamp. A record whose fields still fail —
//!   or whose stream name is not valid — is skipped as `invalid_identifier`,
//!   as a whole (never half a record).
//! * Times are UTC; epoch values are seconds. `source_time` is the record's
//!   own time; `issued_at`/`not_before`/`at` are that time too, and
//!   `expires_at` is always later than `issued_at` (each format documents
//!   its default lifetime).

pub mod cloudtrail;
mod common;
pub mod okta;
pub mod windows;
pub mod zeek;

pub use common::EVENT_ID_NAMESPACE;

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use tokenledger_domain::events::DomainEvent;
use uuid::Uuid;

/// A log format `tokenledger import --format` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// AWS CloudTrail records (JSON `{"Records": [...]}` or NDJSON).
    Cloudtrail,
    /// Zeek `kerberos.log` as NDJSON.
    ZeekKerberos,
    /// Okta System Log events.
    Okta,
    /// Windows Security events 4768/4769/4771.
    WindowsSecurity,
}

impl Format {
    /// The `--format` names, in order.
    pub const NAMES: &'static [&'static str] = &["cloudtrail", "zeek-kerberos", "okta", "windows-security"];

    /// Parses a `--format` name.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "cloudtrail" => Some(Format::Cloudtrail),
            "zeek-kerberos" => Some(Format::ZeekKerberos),
            "okta" => Some(Format::Okta),
            "windows-security" => Some(Format::WindowsSecurity),
            _ => None,
        }
    }

    /// The `--format` name.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One ledger event mapped from a record.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedEvent {
    /// Deterministic (UUID v5 of the format, the record's identity and the
    /// event's index within the record): importing a file twice writes nothing new.
    pub event_id: Uuid,
    /// `token-<token_id>` for events naming a token, else
    /// `uses-<validator>` (see the crate docs: the server's import endpoint
    /// chooses its own streams).
    pub stream: String,
    /// `TokenIssued`, `TokenUsed` or `TokenRevoked`; `TokenIssued.tenant`
    /// is left empty: the server stamps the importing admin's tenant.
    pub event: DomainEvent,
    /// The record's own time, UTC.
    pub source_time: DateTime<Utc>,
}

/// What an import read, mapped and skipped. `records_read == records_mapped
/// + skipped.values().sum()`: nothing is dropped silently.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The format read.
    pub format: Format,
    /// Records (lines or array elements) read.
    pub records_read: u64,
    /// Records that produced at least one event.
    pub records_mapped: u64,
    /// Records skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// The events, in record order.
    pub events: Vec<ImportedEvent>,
}

/// A file that cannot be read as the format at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError(pub String);

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImportError {}

/// Maps a whole file's text (see the crate documentation for what is read,
/// what is skipped and when the whole import fails).
pub fn import(format: Format, input: &str) -> Result<Report, ImportError> {
    match format {
        Format::Cloudtrail => {
            let records = common::split_records(input, Some("Records"), format)?;
            Ok(common::run(format, &records, cloudtrail::map))
        }
        Format::ZeekKerberos => {
            let records = common::split_records(input, None, format)?;
            let realms = zeek::realms(&records);
            Ok(common::run(format, &records, |r| zeek::map(r, &realms)))
        }
        Format::Okta => {
            let records = common::split_records(input, None, format)?;
            Ok(common::run(format, &records, okta::map))
        }
        Format::WindowsSecurity => {
            let records = common::split_records(input, None, format)?;
            let realms = windows::realms(&records);
            Ok(common::run(format, &records, |r| windows::map(r, &realms)))
        }
    }
}

impl Report {
    /// How many events of one type (`"TokenIssued"`, …) the import produced.
    pub fn count_of(&self, event_type: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e.event.event_type().as_str() == event_type)
            .count()
    }

    /// Records skipped, all reasons together.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}
