"""Loading one tokenledger tenant into Polars, for the notebooks.

Two sources, chosen by environment variables (or arguments):

* a Parquet export directory, as ``tokenledger export --to DIR`` writes it
  (``TOKENLEDGER_EXPORT``): ``events/date=YYYY-MM-DD/part-0.parquet`` per UTC
  day, ``<view>.parquet`` per view;
* live, from a running server (``TOKENLEDGER_SERVER`` and an analyst's
  ``TOKENLEDGER_CREDENTIAL``): ``POST /v1/sql`` answered as an Arrow IPC
  stream (``Accept: application/vnd.apache.arrow.stream``). The server
  refuses an answer of more than 100,000 rows (``max_rows``); past that, use
  an export.

Every time column is UTC (``Datetime("us", "UTC")``). ``event_time`` is an
event's source time for imported events, else when the ledger recorded it:
the clock the server's views run on.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import polars as pl

ARROW_STREAM = "application/vnd.apache.arrow.stream"

#: The ``events`` columns the notebooks read.
EVENT_COLUMNS = [
    "position",
    "recorded_at",
    "source_time",
    "event_type",
    "token_id",
    "parent_token_id",
    "subject",
    "client_id",
    "audience",
    "outcome",
    "reason",
    "grant_path",
    "cutoff_id",
]

#: The event types the notebooks read (the rest are administration).
EVENT_TYPES = ["TokenIssued", "TokenExchanged", "TokenUsed", "TokenRevoked", "GrantRefused"]


@dataclass
class Ledger:
    """One tenant's events (``EVENT_TYPES`` only), anomalies and cutoffs, and
    ``as_of``: the latest event time of the whole log (any event type), the
    "now" the data was taken at."""

    source: str
    as_of: object  # datetime (UTC) or None for an empty log
    events: pl.DataFrame
    anomalies: pl.DataFrame
    cutoffs: pl.DataFrame

    def describe(self) -> str:
        """One line: where the data came from, how much, over what span (UTC)."""
        if self.events.is_empty():
            return f"{self.source}: no events"
        t = self.events["event_time"]
        return (
            f"{self.source}: {self.events.height:,} token events from {t.min():%Y-%m-%d %H:%M:%S} "
            f"to {t.max():%Y-%m-%d %H:%M:%S} UTC, {self.anomalies.height:,} anomalies, "
            f"{self.cutoffs.height:,} cutoffs"
        )


def sql(server: str, credential: str, query: str) -> pl.DataFrame:
    """Runs ``query`` on ``POST /v1/sql`` and returns the answer (Arrow IPC).

    Raises ``RuntimeError`` with the server's problem detail (RFC 9457) on
    any refusal: a bad credential, a query over the row cap, a SQL error.
    """
    req = urllib.request.Request(
        server.rstrip("/") + "/v1/sql",
        data=json.dumps({"sql": query}).encode(),
        headers={
            "Authorization": f"Bearer {credential}",
            "Content-Type": "application/json",
            "Accept": ARROW_STREAM,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            detail = json.loads(text).get("detail", text)
        except ValueError:
            detail = text
        raise RuntimeError(f"POST /v1/sql: {e.code}: {detail}") from None
    return pl.read_ipc_stream(io.BytesIO(body))


def _with_event_time(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(
        pl.coalesce("source_time", "recorded_at").alias("event_time")
    ).sort("position")


def from_export(export: str | os.PathLike) -> Ledger:
    """Reads a Parquet export directory. Raises ``FileNotFoundError`` naming
    what is missing."""
    root = Path(export)
    parts = sorted(root.glob("events/date=*/*.parquet"))
    if not parts:
        inside = sorted(str(p.parents[2]) for p in root.glob("*/events/date=*/*.parquet"))
        hint = f"; exports found inside it: {', '.join(dict.fromkeys(inside))}" if inside else ""
        raise FileNotFoundError(
            f"{root.resolve()}: no events/date=*/*.parquet; write an export with `tokenledger export --to DIR`{hint}"
        )
    for view in ("anomalies", "cutoffs"):
        if not (root / f"{view}.parquet").is_file():
            raise FileNotFoundError(f"{root / (view + '.parquet')}: missing; export again")
    scan = pl.scan_parquet(parts, hive_partitioning=False)
    events = scan.select(EVENT_COLUMNS).filter(pl.col("event_type").is_in(EVENT_TYPES)).collect()
    as_of = scan.select(pl.coalesce("source_time", "recorded_at").max()).collect().item()
    return Ledger(
        source=f"export {root}",
        as_of=as_of,
        events=_with_event_time(events),
        anomalies=pl.read_parquet(root / "anomalies.parquet"),
        cutoffs=pl.read_parquet(root / "cutoffs.parquet"),
    )


def from_server(server: str, credential: str) -> Ledger:
    """Pulls the same tables live through ``POST /v1/sql``."""
    types = ", ".join(f"'{t}'" for t in EVENT_TYPES)
    events = sql(
        server,
        credential,
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE event_type IN ({types}) ORDER BY position",
    )
    as_of = sql(server, credential, "SELECT max(coalesce(source_time, recorded_at)) AS t FROM events").item()
    return Ledger(
        source=f"live {server}",
        as_of=as_of,
        events=_with_event_time(events),
        anomalies=sql(server, credential, "SELECT * FROM anomalies ORDER BY position"),
        cutoffs=sql(server, credential, "SELECT * FROM cutoffs ORDER BY position"),
    )


def load(export: str | None = None, server: str | None = None, credential: str | None = None) -> Ledger:
    """Live when a server is given (argument or ``TOKENLEDGER_SERVER``), with
    the credential from ``TOKENLEDGER_CREDENTIAL``; else the export directory
    (argument or ``TOKENLEDGER_EXPORT``)."""
    server = server or os.environ.get("TOKENLEDGER_SERVER")
    if server:
        credential = credential or os.environ.get("TOKENLEDGER_CREDENTIAL")
        if not credential:
            raise RuntimeError("set TOKENLEDGER_CREDENTIAL to an analyst's credential (tl_…)")
        return from_server(server, credential)
    export = export or os.environ.get("TOKENLEDGER_EXPORT")
    if not export:
        raise RuntimeError("set TOKENLEDGER_EXPORT to an export directory, or TOKENLEDGER_SERVER for live data")
    return from_export(export)


def bucket(span_seconds: float, points: int = 90) -> str:
    """A Polars duration (``1s`` … ``1d``) giving at most about ``points``
    buckets over ``span_seconds`` (at least one)."""
    steps = [(1, "1s"), (2, "2s"), (5, "5s"), (10, "10s"), (60, "1m"), (300, "5m"), (900, "15m"), (3600, "1h"), (21600, "6h")]
    for seconds, every in steps:
        if span_seconds / seconds <= points:
            return every
    return "1d"
