//! Parquet export of the SQL tables (`tokenledger export`, benchmarks):
//! the same Arrow schemas as the tables, `events` partitioned by UTC date
//! (`events/date=YYYY-MM-DD/part-0.parquet`, Hive-style, as DuckDB and
//! Polars read it).

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use std::fs::File;
use std::path::Path;

/// Writes batches as one Snappy-compressed Parquet file (parent
/// directories created). Errors are the I/O or Parquet message.
pub fn write_parquet(path: &Path, batches: &[RecordBatch], schema: SchemaRef) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| e.to_string())?;
    for b in batches {
        w.write(b).map_err(|e| e.to_string())?;
    }
    w.close().map_err(|e| e.to_string())?;
    Ok(())
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The UTC date (`YYYY-MM-DD`) of a `recorded_at` value, microseconds.
pub fn utc_date(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "invalid".into())
}

/// Splits `events` batches into runs of one UTC date (positions are in
/// order and `recorded_at` never decreases, so each date is one run).
pub fn by_date(batches: Vec<RecordBatch>) -> Result<Vec<(String, Vec<RecordBatch>)>, String> {
    let mut out: Vec<(String, Vec<RecordBatch>)> = Vec::new();
    for b in batches {
        let idx = b.schema().index_of("recorded_at").map_err(|e| e.to_string())?;
        let times = b.column(idx).as_primitive::<TimestampMicrosecondType>().clone();
        let day = |i: usize| times.value(i).div_euclid(MICROS_PER_DAY);
        let mut start = 0;
        while start < b.num_rows() {
            let date = utc_date(times.value(start));
            let mut end = start + 1;
            while end < b.num_rows() && day(end) == day(start) {
                end += 1;
            }
            let part = b.slice(start, end - start);
            match out.last_mut() {
                Some((d, parts)) if *d == date => parts.push(part),
                _ => out.push((date, vec![part])),
            }
            start = end;
        }
    }
    Ok(out)
}

/// Writes a whole export into `dir`: `events` partitioned by UTC date, one
/// file per other table. `tables` are (name, schema, batches) as a
/// [`crate::TenantSnapshot`] holds them. Returns rows written per table.
pub fn write_export(
    dir: &Path,
    tables: Vec<(&'static str, SchemaRef, Vec<RecordBatch>)>,
) -> Result<Vec<(&'static str, usize)>, String> {
    let mut out = Vec::new();
    for (name, schema, batches) in tables {
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        if name == "events" {
            for (date, parts) in by_date(batches)? {
                write_parquet(
                    &dir.join("events").join(format!("date={date}")).join("part-0.parquet"),
                    &parts,
                    schema.clone(),
                )?;
            }
        } else {
            write_parquet(&dir.join(format!("{name}.parquet")), &batches, schema)?;
        }
        out.push((name, rows));
    }
    Ok(out)
}
