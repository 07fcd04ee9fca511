//! The pipelines: each turns an [`Export`] into one or more output tables,
//! as lazy plans (nothing is read until the output is collected).
//!
//! Times are UTC microseconds; dates are UTC calendar days of
//! [`event_time`]; durations are seconds (`f64`). Counts are `u32`.

use crate::input::{Export, event_time, time_lit};
use polars::prelude::*;

/// `event_type = name`.
fn is(name: &str) -> Expr {
    col("event_type").eq(lit(name))
}

/// Counts the rows where `predicate` holds.
fn count_if(predicate: Expr) -> Expr {
    predicate.cast(DataType::UInt32).sum()
}

/// Distinct non-null values of `column` among the rows where `predicate` holds.
fn distinct_if(column: &str, predicate: Expr) -> Expr {
    col(column)
        .filter(predicate)
        .drop_nulls()
        .n_unique()
        .cast(DataType::UInt32)
}

/// `later − earlier` in seconds, to the millisecond.
fn seconds_between(later: Expr, earlier: Expr) -> Expr {
    ((later - earlier).dt().total_milliseconds(false).cast(DataType::Float64) / lit(1000.0))
        .round(3, RoundMode::HalfToEven)
}

/// A statistic of seconds, to the millisecond.
fn millis(e: Expr) -> Expr {
    e.round(3, RoundMode::HalfToEven)
}

fn sorted(frame: LazyFrame, by: &[&str]) -> LazyFrame {
    let by: Vec<PlSmallStr> = by.iter().map(|c| PlSmallStr::from(*c)).collect();
    frame.sort(
        by,
        SortMultipleOptions::default()
            .with_nulls_last(true)
            .with_maintain_order(true),
    )
}

/// The latest event time of the export (UTC microseconds): the "now" the
/// export was taken at, as far as its events tell. `None` for an empty export.
///
/// # Errors
/// Polars errors reading the events.
pub fn as_of(export: &Export) -> PolarsResult<Option<i64>> {
    let df = export
        .events
        .clone()
        .select([event_time().max().dt().timestamp(TimeUnit::Microseconds).alias("t")])
        .collect()?;
    Ok(df.column("t")?.i64()?.get(0))
}

/// `daily_usage`: per UTC day, `client_id` and `audience` — `issued` (tokens
/// issued other than by an exchange, imported ones included), `exchanged`
/// (RFC 8693 exchanges into that audience by that client), `uses_accepted`,
/// `uses_rejected` (`TokenUsed` by outcome, under the token's client and the
/// validator's audience; a use whose signature did not verify has no client),
/// `grants_refused` (`GrantRefused`, under the asking client and the audience
/// it asked for), `tokens_used` (distinct tokens with an accepted use).
pub fn daily_usage(export: &Export) -> LazyFrame {
    let accepted = is("TokenUsed").and(col("outcome").eq(lit("accepted")));
    let rejected = is("TokenUsed").and(col("outcome").neq(lit("accepted")));
    let rows = export
        .events
        .clone()
        .filter(
            is("TokenIssued")
                .or(is("TokenExchanged"))
                .or(is("TokenUsed"))
                .or(is("GrantRefused")),
        )
        .with_column(event_time().dt().date().alias("date"))
        .group_by([col("date"), col("client_id"), col("audience")])
        .agg([
            count_if(is("TokenIssued").and(col("parent_token_id").is_null())).alias("issued"),
            count_if(is("TokenExchanged")).alias("exchanged"),
            count_if(accepted.clone()).alias("uses_accepted"),
            count_if(rejected).alias("uses_rejected"),
            count_if(is("GrantRefused")).alias("grants_refused"),
            distinct_if("token_id", accepted).alias("tokens_used"),
        ]);
    sorted(rows, &["date", "client_id", "audience"])
}

/// One row per issued token (`TokenIssued`, first of each `token_id`):
/// `token_id`, `subject`, `client_id`, `issuer`, `audience`, `kid`,
/// `parent_token_id`, `format`, `position`, `issued_at`, `expires_at`,
/// `imported` (it came through `POST /v1/imports`: it has a source time),
/// `issued_event_at` (the [`event_time`] of its `TokenIssued`).
fn issued_tokens(export: &Export) -> LazyFrame {
    export
        .events
        .clone()
        .filter(is("TokenIssued").and(col("token_id").is_not_null()))
        .select([
            col("token_id"),
            col("subject"),
            col("client_id"),
            col("issuer"),
            col("audience"),
            col("kid"),
            col("parent_token_id"),
            col("format"),
            col("position"),
            coalesce(&[col("issued_at"), event_time()]).alias("issued_at"),
            col("expires_at"),
            col("source_time").is_not_null().alias("imported"),
            event_time().alias("issued_event_at"),
        ])
        .unique_stable(Some(cols(["token_id"])), UniqueKeepStrategy::First)
}

/// Revocations that apply to a token, before cascading to exchanged tokens:
/// `token_id`, `revoked_at`, `revoked_by` (`token`, `subject`, `client`,
/// `issuer`, `kid`). A selector or a key revocation applies to the tokens
/// issued before it (by ledger position), as in the server's block list.
fn own_revocations(export: &Export, tokens: &LazyFrame) -> PolarsResult<LazyFrame> {
    let revoked = export.events.clone().filter(is("TokenRevoked"));
    let direct = revoked.clone().filter(col("token_id").is_not_null()).select([
        col("token_id"),
        event_time().alias("revoked_at"),
        lit("token").alias("revoked_by"),
    ]);
    let mut parts = vec![direct];
    for (scope, column) in [("subject", "subject"), ("client", "client_id"), ("issuer", "issuer")] {
        let selectors = revoked.clone().filter(col("selector_scope").eq(lit(scope))).select([
            col("selector_key"),
            col("position").alias("revoked_position"),
            event_time().alias("revoked_at"),
        ]);
        parts.push(
            tokens
                .clone()
                .select([col("token_id"), col(column), col("position")])
                .inner_join(selectors, col(column), col("selector_key"))
                .filter(col("position").lt(col("revoked_position")))
                .select([col("token_id"), col("revoked_at"), lit(scope).alias("revoked_by")]),
        );
    }
    let keys = export
        .events
        .clone()
        .filter(is("SigningKeyRevoked").and(col("kid").is_not_null()))
        .select([
            col("kid").alias("revoked_kid"),
            col("position").alias("revoked_position"),
            event_time().alias("revoked_at"),
        ]);
    parts.push(
        tokens
            .clone()
            .select([col("token_id"), col("kid"), col("position")])
            .inner_join(keys, col("kid"), col("revoked_kid"))
            .filter(col("position").lt(col("revoked_position")))
            .select([col("token_id"), col("revoked_at"), lit("kid").alias("revoked_by")]),
    );
    Ok(earliest(concat(parts, UnionArgs::default())?))
}

/// The earliest revocation per token.
fn earliest(revocations: LazyFrame) -> LazyFrame {
    revocations.group_by([col("token_id")]).agg([
        col("revoked_at").min(),
        col("revoked_by")
            .sort_by(
                [col("revoked_at")],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .first(),
    ])
}

/// Most links of exchange followed when cascading a revocation (the server
/// follows every link; chains in practice are a few links deep).
const MAX_EXCHANGE_DEPTH: usize = 32;

/// Every token's revocation, own or inherited: revoking a token revokes
/// every token exchanged from it (`revoked_by` = `ancestor`).
fn revocations(export: &Export, tokens: &LazyFrame) -> PolarsResult<DataFrame> {
    let links = tokens
        .clone()
        .filter(col("parent_token_id").is_not_null())
        .select([col("token_id"), col("parent_token_id")]);
    let mut known = own_revocations(export, tokens)?.collect()?;
    for _ in 0..MAX_EXCHANGE_DEPTH {
        let inherited = links
            .clone()
            .inner_join(
                known
                    .clone()
                    .lazy()
                    .select([col("token_id").alias("parent"), col("revoked_at")]),
                col("parent_token_id"),
                col("parent"),
            )
            .select([col("token_id"), col("revoked_at"), lit("ancestor").alias("revoked_by")]);
        let next = earliest(concat([known.clone().lazy(), inherited], UnionArgs::default())?).collect()?;
        let by_token = |df: &DataFrame| df.sort(["token_id"], SortMultipleOptions::default());
        let settled = by_token(&next)?.equals_missing(&by_token(&known)?);
        known = next;
        if settled {
            break;
        }
    }
    Ok(known)
}

/// Status of a token in [`tokens`], as of the export.
pub const STATUSES: [&str; 4] = ["revoked", "used", "expired_unused", "active_unused"];

/// `tokens`: one row per issued token — its `token_id`, `subject`,
/// `client_id`, `audience`, `origin` (`exchange`: minted by an RFC 8693
/// exchange; `import`: from a log import; `external`: a trusted external
/// issuer's token appended by that issuer; else `mint`),
/// `issued_at`, `expires_at`, `uses_accepted`, `uses_rejected`,
/// `first_use_at` (first accepted use), `seconds_to_first_use` (from the
/// event time of the token's `TokenIssued`, the clock its uses are on),
/// `revoked_at`,
/// `revoked_by` (`token`, `subject`, `client`, `issuer`, `kid`, `ancestor`)
/// and `status`, the first that holds of `revoked`, `used` (an accepted use),
/// `expired_unused` (expired by `as_of`), `active_unused`.
///
/// # Errors
/// Polars errors (the revocation cascade is collected step by step).
pub fn tokens(export: &Export, as_of: i64) -> PolarsResult<LazyFrame> {
    let issued = issued_tokens(export);
    let accepted = col("outcome").eq(lit("accepted"));
    let uses = export
        .events
        .clone()
        .filter(is("TokenUsed").and(col("token_id").is_not_null()))
        .group_by([col("token_id")])
        .agg([
            count_if(accepted.clone()).alias("uses_accepted"),
            count_if(accepted.clone().not()).alias("uses_rejected"),
            event_time().filter(accepted).min().alias("first_use_at"),
        ]);
    let revoked = revocations(export, &issued)?.lazy();
    let origin = when(col("parent_token_id").is_not_null())
        .then(lit("exchange"))
        .when(col("imported"))
        .then(lit("import"))
        .when(col("format").eq(lit("external")))
        .then(lit("external"))
        .otherwise(lit("mint"));
    let used = col("uses_accepted").gt(lit(0u32));
    let status = when(col("revoked_at").is_not_null())
        .then(lit("revoked"))
        .when(used)
        .then(lit("used"))
        .when(col("expires_at").lt_eq(time_lit(as_of)))
        .then(lit("expired_unused"))
        .otherwise(lit("active_unused"));
    let frame = issued
        .left_join(uses, col("token_id"), col("token_id"))
        .left_join(revoked, col("token_id"), col("token_id"))
        .with_columns([
            origin.alias("origin"),
            col("uses_accepted").fill_null(lit(0u32)),
            col("uses_rejected").fill_null(lit(0u32)),
        ])
        .with_columns([
            status.alias("status"),
            // On one clock with the use: `issued_at` is a claim in whole
            // seconds, which would overstate sub-second first uses.
            seconds_between(col("first_use_at"), col("issued_event_at")).alias("seconds_to_first_use"),
        ])
        .select([
            col("token_id"),
            col("subject"),
            col("client_id"),
            col("audience"),
            col("origin"),
            col("issued_at"),
            col("expires_at"),
            col("uses_accepted"),
            col("uses_rejected"),
            col("first_use_at"),
            col("seconds_to_first_use"),
            col("revoked_at"),
            col("revoked_by"),
            col("status"),
        ]);
    Ok(sorted(frame, &["issued_at", "token_id"]))
}

/// `token_lifetimes`: per `client_id` and `audience`, from [`tokens`] —
/// `issued`, `used` (at least one accepted use, revoked or not), `revoked`,
/// `expired_unused`, `active_unused` (never used, not revoked; expired by
/// `as_of` or not), `mean_ttl_seconds` (`expires_at − issued_at`),
/// `first_use_p50_seconds`, `first_use_p90_seconds`, `first_use_max_seconds`
/// (time from issue to first accepted use; linear interpolation; null when
/// no token was used).
pub fn token_lifetimes(tokens: LazyFrame) -> LazyFrame {
    let never_used = col("uses_accepted").eq(lit(0u32)).and(col("revoked_at").is_null());
    let first_use = col("seconds_to_first_use");
    let rows = tokens.group_by([col("client_id"), col("audience")]).agg([
        len().cast(DataType::UInt32).alias("issued"),
        count_if(col("uses_accepted").gt(lit(0u32))).alias("used"),
        count_if(col("revoked_at").is_not_null()).alias("revoked"),
        count_if(never_used.clone().and(col("status").eq(lit("expired_unused")))).alias("expired_unused"),
        count_if(never_used.and(col("status").eq(lit("active_unused")))).alias("active_unused"),
        millis(seconds_between(col("expires_at"), col("issued_at")).mean()).alias("mean_ttl_seconds"),
        millis(first_use.clone().quantile(lit(0.5), QuantileMethod::Linear)).alias("first_use_p50_seconds"),
        millis(first_use.clone().quantile(lit(0.9), QuantileMethod::Linear)).alias("first_use_p90_seconds"),
        first_use.max().alias("first_use_max_seconds"),
    ]);
    sorted(rows, &["client_id", "audience"])
}

/// `exchange_edges`: who exchanges into which audience (RFC 8693), one row
/// per edge `from_client_id`/`from_audience` (the subject token's client and
/// audience; null when the subject token is not in the export) →
/// `client_id`/`audience` (the exchanging client and the audience granted):
/// `exchanges`, `subjects` (distinct), `first_at`, `last_at`.
pub fn exchange_edges(export: &Export) -> LazyFrame {
    let issued = issued_tokens(export);
    let parents = issued.clone().select([
        col("token_id").alias("parent_id"),
        col("client_id").alias("from_client_id"),
        col("audience").alias("from_audience"),
    ]);
    let subjects = issued.select([col("token_id").alias("new_id"), col("subject")]);
    let rows = export
        .events
        .clone()
        .filter(is("TokenExchanged"))
        .select([
            col("token_id"),
            col("parent_token_id"),
            col("client_id"),
            col("audience"),
            event_time().alias("at"),
        ])
        .left_join(parents, col("parent_token_id"), col("parent_id"))
        .left_join(subjects, col("token_id"), col("new_id"))
        .group_by([
            col("from_client_id"),
            col("from_audience"),
            col("client_id"),
            col("audience"),
        ])
        .agg([
            len().cast(DataType::UInt32).alias("exchanges"),
            col("subject")
                .drop_nulls()
                .n_unique()
                .cast(DataType::UInt32)
                .alias("subjects"),
            col("at").min().alias("first_at"),
            col("at").max().alias("last_at"),
        ]);
    sorted(rows, &["from_client_id", "from_audience", "client_id", "audience"])
}

/// `anomalies_daily`: per UTC day of `detected_at`, `kind` and `severity` —
/// `anomalies`, and the distinct `subjects`, `clients`, `tokens` and `ips`
/// they name.
pub fn anomalies_daily(export: &Export) -> LazyFrame {
    let all = lit(true);
    let rows = export
        .anomalies
        .clone()
        .with_column(col("detected_at").dt().date().alias("date"))
        .group_by([col("date"), col("kind"), col("severity")])
        .agg([
            len().cast(DataType::UInt32).alias("anomalies"),
            distinct_if("subject", all.clone()).alias("subjects"),
            distinct_if("client_id", all.clone()).alias("clients"),
            distinct_if("token_id", all.clone()).alias("tokens"),
            distinct_if("ip", all).alias("ips"),
        ]);
    sorted(rows, &["date", "kind", "severity"])
}

/// `cutoff_audit`: one row per cutoff of the `cutoffs` view — what was cut
/// off (`scope`, `key`), why (`rule_id`, `mode`, `reason`), for how long
/// (`engaged_at`, `until`, `released_at`, `released_by`, `ended_at`: the
/// release, else `until` once passed, else null while in force;
/// `seconds_in_force` up to `ended_at` or `as_of`), and what it blocked:
/// `blocked` (`GrantRefused` naming it), `blocked_mint`,
/// `blocked_exchange`, `blocked_clients`, `blocked_subjects` (distinct),
/// `first_blocked_at`, `last_blocked_at`.
pub fn cutoff_audit(export: &Export, as_of: i64) -> LazyFrame {
    let refused = export
        .events
        .clone()
        .filter(is("GrantRefused").and(col("cutoff_id").is_not_null()))
        .group_by([col("cutoff_id").alias("refused_by")])
        .agg([
            len().cast(DataType::UInt32).alias("blocked"),
            count_if(col("grant_path").eq(lit("mint"))).alias("blocked_mint"),
            count_if(col("grant_path").eq(lit("exchange"))).alias("blocked_exchange"),
            distinct_if("client_id", lit(true)).alias("blocked_clients"),
            distinct_if("subject", lit(true)).alias("blocked_subjects"),
            event_time().min().alias("first_blocked_at"),
            event_time().max().alias("last_blocked_at"),
        ]);
    let now = time_lit(as_of);
    let ended = when(col("released_at").is_not_null())
        .then(col("released_at"))
        .when(col("until").lt_eq(now.clone()))
        .then(col("until"))
        .otherwise(lit(NULL).cast(crate::input::utc_micros()));
    let rows = export
        .cutoffs
        .clone()
        .select([
            col("cutoff_id"),
            col("scope"),
            col("key"),
            col("rule_id"),
            col("mode"),
            col("reason"),
            col("engaged_at"),
            col("until"),
            col("released_at"),
            col("released_by"),
        ])
        .with_column(ended.alias("ended_at"))
        .with_column(seconds_between(coalesce(&[col("ended_at"), now]), col("engaged_at")).alias("seconds_in_force"))
        .left_join(refused, col("cutoff_id"), col("refused_by"))
        .with_columns([
            col("blocked").fill_null(lit(0u32)),
            col("blocked_mint").fill_null(lit(0u32)),
            col("blocked_exchange").fill_null(lit(0u32)),
            col("blocked_clients").fill_null(lit(0u32)),
            col("blocked_subjects").fill_null(lit(0u32)),
        ]);
    sorted(rows, &["engaged_at", "cutoff_id"])
}

/// `cutoffs_daily`: per UTC day — cutoffs `engaged` and `released` that
/// day, grants refused by a cutoff (`refused_by_cutoff`) and for any other
/// reason (`refused_other`). Days with none of these have no row.
pub fn cutoffs_daily(export: &Export) -> LazyFrame {
    // One row per happening, a 1 in its column; summed per day.
    let row = |date: Expr, [engaged, released, by_cutoff, other]: [Expr; 4]| {
        [
            date.alias("date"),
            engaged.cast(DataType::UInt32).alias("engaged"),
            released.cast(DataType::UInt32).alias("released"),
            by_cutoff.cast(DataType::UInt32).alias("refused_by_cutoff"),
            other.cast(DataType::UInt32).alias("refused_other"),
        ]
    };
    let (one, zero) = (|| lit(1u32), || lit(0u32));
    let engaged = export
        .cutoffs
        .clone()
        .select(row(col("engaged_at").dt().date(), [one(), zero(), zero(), zero()]));
    let released = export
        .cutoffs
        .clone()
        .filter(col("released_at").is_not_null())
        .select(row(col("released_at").dt().date(), [zero(), one(), zero(), zero()]));
    let refused = export.events.clone().filter(is("GrantRefused")).select(row(
        event_time().dt().date(),
        [
            zero(),
            zero(),
            col("cutoff_id").is_not_null(),
            col("cutoff_id").is_null(),
        ],
    ));
    let all = concat([engaged, released, refused], UnionArgs::default())
        .expect("frames of one schema")
        .group_by([col("date")])
        .agg([
            col("engaged").sum(),
            col("released").sum(),
            col("refused_by_cutoff").sum(),
            col("refused_other").sum(),
        ]);
    sorted(all, &["date"])
}
