//! Query answers on the wire: `{"columns", "rows"}` JSON (DESIGN.md "Wire
//! shapes", SQL) or an Arrow IPC stream
//! (`application/vnd.apache.arrow.stream`).

use chrono::{DateTime, SecondsFormat};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef, TimeUnit};
use datafusion::arrow::datatypes::{Float32Type, Float64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Value, json};

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// `{"columns": [name, …], "rows": [[value, …], …]}`: integers and floats
/// as JSON numbers (NaN and infinities as null), booleans, text; timestamps
/// as RFC 3339 UTC strings (`Z`); anything else in Arrow's display form.
pub fn to_json(schema: &SchemaRef, batches: &[RecordBatch]) -> Value {
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<Vec<Value>> = b.columns().iter().map(|c| column(c.as_ref())).collect();
        for r in 0..b.num_rows() {
            rows.push(Value::Array(cols.iter().map(|c| c[r].clone()).collect()));
        }
    }
    json!({"columns": columns, "rows": rows})
}

fn column(a: &dyn Array) -> Vec<Value> {
    macro_rules! prim {
        ($t:ty) => {{
            let p = a.as_primitive::<$t>();
            (0..a.len())
                .map(|i| if p.is_null(i) { Value::Null } else { json!(p.value(i)) })
                .collect()
        }};
    }
    match a.data_type() {
        DataType::Null => vec![Value::Null; a.len()],
        DataType::Boolean => {
            let p = a.as_boolean();
            (0..a.len())
                .map(|i| if p.is_null(i) { Value::Null } else { json!(p.value(i)) })
                .collect()
        }
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            (0..a.len())
                .map(|i| if s.is_null(i) { Value::Null } else { json!(s.value(i)) })
                .collect()
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            (0..a.len())
                .map(|i| if s.is_null(i) { Value::Null } else { json!(s.value(i)) })
                .collect()
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            (0..a.len())
                .map(|i| if s.is_null(i) { Value::Null } else { json!(s.value(i)) })
                .collect()
        }
        DataType::Timestamp(unit, _) => timestamps(a, *unit),
        _ => {
            let f = ArrayFormatter::try_new(a, &FormatOptions::default());
            match f {
                Ok(f) => (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            Value::Null
                        } else {
                            json!(f.value(i).to_string())
                        }
                    })
                    .collect(),
                Err(_) => vec![Value::Null; a.len()],
            }
        }
    }
}

fn timestamps(a: &dyn Array, unit: TimeUnit) -> Vec<Value> {
    use datafusion::arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
    };
    let (vals, per_sec): (Vec<Option<i64>>, i64) = match unit {
        TimeUnit::Second => (a.as_primitive::<TimestampSecondType>().iter().collect(), 1),
        TimeUnit::Millisecond => (a.as_primitive::<TimestampMillisecondType>().iter().collect(), 1_000),
        TimeUnit::Microsecond => (a.as_primitive::<TimestampMicrosecondType>().iter().collect(), 1_000_000),
        TimeUnit::Nanosecond => (
            a.as_primitive::<TimestampNanosecondType>().iter().collect(),
            1_000_000_000,
        ),
    };
    vals.into_iter()
        .map(|v| {
            v.and_then(|v| {
                let secs = v.div_euclid(per_sec);
                let nanos = (v.rem_euclid(per_sec) * (1_000_000_000 / per_sec)) as u32;
                DateTime::from_timestamp(secs, nanos)
            })
            .map_or(Value::Null, |t| json!(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
        })
        .collect()
}

/// The batches as one Arrow IPC stream (schema message, batches, end
/// marker).
pub fn to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut out, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}
