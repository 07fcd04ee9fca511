//! Reading one tenant's Parquet export, as `tokenledger export --to DIR`
//! writes it: `DIR/events/date=YYYY-MM-DD/part-*.parquet` (the SQL `events`
//! table, one partition per UTC day of `recorded_at`) and `DIR/<view>.parquet`
//! per view (`anomalies`, `cutoffs`, …).
//!
//! Every frame is lazy: the files are scanned, not read, until a pipeline
//! collects its output.

use polars::prelude::*;
use std::path::{Path, PathBuf};

/// An input problem: what is missing or unreadable, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The directory is not an export (no `events/` partitions); `hint`
    /// names exports found one level below (`demo --export` writes one per
    /// tenant).
    #[error("{0}: not a tokenledger export (no events/date=*/*.parquet); write one with `tokenledger export --to DIR`{hint}", hint = hint(.1))]
    NotAnExport(PathBuf, Vec<PathBuf>),
    /// A file could not be read as Parquet.
    #[error("{0}: {1}")]
    File(PathBuf, PolarsError),
    /// The files disagree with the export's `manifest.json` (rows added,
    /// removed or copied since the export was written).
    #[error("{table}: the files hold {found} rows, manifest.json says {expected}; export again")]
    Manifest {
        /// The table.
        table: String,
        /// Rows per the manifest.
        expected: u64,
        /// Rows in the files.
        found: u64,
    },
    /// A view file is missing (an export from before the view was exported).
    #[error("{0}: missing; export again with a tokenledger that exports every view")]
    MissingView(PathBuf),
    /// A table lacks a column a pipeline reads, or has it with another type.
    #[error("{table}: column {column:?} {problem}")]
    Column {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An I/O error reading the directory.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Polars could not scan a file.
    #[error(transparent)]
    Polars(#[from] PolarsError),
}

fn hint(found: &[PathBuf]) -> String {
    match found {
        [] => String::new(),
        _ => format!(
            "; exports found inside it: {}",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The Arrow type of every time column of an export: microseconds since the
/// Unix epoch, zoned UTC (the `utc_micros` type of the SQL tables).
pub fn utc_micros() -> DataType {
    DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
}

/// The `events` columns the pipelines read, with their types.
pub const EVENT_COLUMNS: &[(&str, Kind)] = &[
    ("position", Kind::Position),
    ("recorded_at", Kind::Time),
    ("event_type", Kind::Text),
    ("token_id", Kind::Text),
    ("parent_token_id", Kind::Text),
    ("subject", Kind::Text),
    ("client_id", Kind::Text),
    ("issuer", Kind::Text),
    ("audience", Kind::Text),
    ("format", Kind::Text),
    ("kid", Kind::Text),
    ("outcome", Kind::Text),
    ("reason", Kind::Text),
    ("selector_scope", Kind::Text),
    ("selector_key", Kind::Text),
    ("cutoff_id", Kind::Text),
    ("grant_path", Kind::Text),
    ("issued_at", Kind::Time),
    ("expires_at", Kind::Time),
    ("source_time", Kind::Time),
];

/// The `anomalies` view columns the pipelines read.
pub const ANOMALY_COLUMNS: &[(&str, Kind)] = &[
    ("anomaly_id", Kind::Text),
    ("kind", Kind::Text),
    ("severity", Kind::Text),
    ("detected_at", Kind::Time),
    ("subject", Kind::Text),
    ("client_id", Kind::Text),
    ("token_id", Kind::Text),
    ("ip", Kind::Text),
];

/// The `cutoffs` view columns the pipelines read.
pub const CUTOFF_COLUMNS: &[(&str, Kind)] = &[
    ("cutoff_id", Kind::Text),
    ("scope", Kind::Text),
    ("key", Kind::Text),
    ("rule_id", Kind::Text),
    ("mode", Kind::Text),
    ("reason", Kind::Text),
    ("engaged_at", Kind::Time),
    ("until", Kind::Time),
    ("released_at", Kind::Time),
    ("released_by", Kind::Text),
];

/// The type a pipeline expects of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text.
    Text,
    /// UTC microseconds ([`utc_micros`]).
    Time,
    /// A ledger position (unsigned 64-bit).
    Position,
}

impl Kind {
    fn dtype(self) -> DataType {
        match self {
            Kind::Text => DataType::String,
            Kind::Time => utc_micros(),
            Kind::Position => DataType::UInt64,
        }
    }
}

/// One tenant's export, scanned lazily.
#[derive(Clone)]
pub struct Export {
    /// The `events` table, every partition in date order.
    pub events: LazyFrame,
    /// The `anomalies` view.
    pub anomalies: LazyFrame,
    /// The `cutoffs` view (engaged, released and lapsed cutoffs).
    pub cutoffs: LazyFrame,
}

impl Export {
    /// Scans the export in `dir` and checks every column the pipelines read.
    ///
    /// # Errors
    /// [`InputError`] when `dir` holds no event partition, a file is not
    /// Parquet, a view file is missing, a column is missing or of another
    /// type, or the row counts disagree with `manifest.json` (when present).
    pub fn open(dir: &Path) -> Result<Self, InputError> {
        let files = event_files(dir)?;
        if files.is_empty() {
            return Err(not_an_export(dir));
        }
        let scans = files.iter().map(|f| scan(f)).collect::<Result<Vec<_>, _>>()?;
        let events = concat(scans, UnionArgs::default())?;
        let view = |name: &str| -> Result<LazyFrame, InputError> {
            let f = dir.join(format!("{name}.parquet"));
            if !f.is_file() {
                return Err(InputError::MissingView(f));
            }
            scan(&f)
        };
        let mut export = Export {
            events,
            anomalies: view("anomalies")?,
            cutoffs: view("cutoffs")?,
        };
        check(&mut export.events, "events", EVENT_COLUMNS)?;
        check(&mut export.anomalies, "anomalies", ANOMALY_COLUMNS)?;
        check(&mut export.cutoffs, "cutoffs", CUTOFF_COLUMNS)?;
        check_manifest(dir, &export)?;
        Ok(export)
    }
}

/// Exports one level below `dir`, for the error's hint.
fn not_an_export(dir: &Path) -> InputError {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("events").is_dir())
        .collect();
    found.sort();
    InputError::NotAnExport(dir.to_path_buf(), found)
}

/// Compares the row counts of `events`, `anomalies` and `cutoffs` with
/// `manifest.json` (`{table: {"rows": N, …}}`), when the export has one.
fn check_manifest(dir: &Path, export: &Export) -> Result<(), InputError> {
    let path = dir.join("manifest.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let manifest: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| InputError::Io(path.clone(), std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    // Counted by reading one column: `len()` over a union of scans plans a
    // 128-bit sum this build of Polars does not have.
    for (table, frame, column) in [
        ("events", &export.events, "position"),
        ("anomalies", &export.anomalies, "anomaly_id"),
        ("cutoffs", &export.cutoffs, "cutoff_id"),
    ] {
        let Some(expected) = manifest[table]["rows"].as_u64() else {
            continue;
        };
        let found = frame.clone().select([col(column)]).collect()?.height() as u64;
        if found != expected {
            return Err(InputError::Manifest {
                table: table.to_owned(),
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// `dir/events/date=*/*.parquet`, sorted (so by date, then part).
fn event_files(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let events = dir.join("events");
    if !events.is_dir() {
        return Err(not_an_export(dir));
    }
    let read = |d: &Path| std::fs::read_dir(d).map_err(|e| InputError::Io(d.to_path_buf(), e));
    let mut files = Vec::new();
    for day in read(&events)? {
        let day = day.map_err(|e| InputError::Io(events.clone(), e))?.path();
        let is_partition = day
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("date="));
        if !day.is_dir() || !is_partition {
            continue;
        }
        for f in read(&day)? {
            let f = f.map_err(|e| InputError::Io(day.clone(), e))?.path();
            if f.extension().is_some_and(|x| x == "parquet") {
                files.push(f);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn scan(path: &Path) -> Result<LazyFrame, InputError> {
    let args = ScanArgsParquet {
        // The partition directory names are not columns: `recorded_at` is.
        hive_options: HiveOptions {
            enabled: Some(false),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut frame = LazyFrame::scan_parquet(PlRefPath::try_from_path(path)?, args)?;
    // Reads the footer now, so a damaged file is named.
    frame
        .collect_schema()
        .map_err(|e| InputError::File(path.to_path_buf(), e))?;
    Ok(frame)
}

fn check(frame: &mut LazyFrame, table: &'static str, columns: &[(&'static str, Kind)]) -> Result<(), InputError> {
    let schema = frame.collect_schema()?;
    for (column, kind) in columns {
        match schema.get(column) {
            None => {
                return Err(InputError::Column {
                    table,
                    column,
                    problem: "is missing".into(),
                });
            }
            Some(t) if *t != kind.dtype() => {
                return Err(InputError::Column {
                    table,
                    column,
                    problem: format!("is {t}, expected {}", kind.dtype()),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// When an event happened: its source's time for an imported event
/// (`metadata.source_time`), else when the ledger recorded it — the clock
/// the server's views run on.
pub fn event_time() -> Expr {
    coalesce(&[col("source_time"), col("recorded_at")])
}

/// A UTC time as a literal of [`utc_micros`].
pub fn time_lit(micros: i64) -> Expr {
    lit(micros).cast(utc_micros())
}
