//! Prometheus metrics, rendered in the text exposition format at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route, e.g. `/v1/streams/{stream}/events`.
    pub route: String,
    /// The method.
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// Labels naming a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route.
    pub route: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by route, seconds.
    pub latency: Family<RouteLabels, Histogram>,
    /// Events written to the log.
    pub events_appended: Counter,
    /// Appends answered from the idempotency index without writing.
    pub idempotent_replays: Counter,
    /// Requests with a missing or invalid credential.
    pub auth_failures: Counter,
    /// Position of the last committed event.
    pub head_position: Gauge,
    /// Checkpoint of the last views snapshot written.
    pub projection_checkpoint: Gauge,
    /// Checkpoint of the snapshot the views were restored from at start (0: none).
    pub projection_restored_checkpoint: Gauge,
    /// Events the views replayed from the log at start.
    pub projection_replayed_events: Gauge,
    /// Views snapshots that could not be written.
    pub projection_snapshot_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokenledger");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        let events_appended = Counter::default();
        let idempotent_replays = Counter::default();
        let auth_failures = Counter::default();
        let head_position = Gauge::default();
        let projection_checkpoint = Gauge::default();
        let projection_restored_checkpoint = Gauge::default();
        let projection_replayed_events = Gauge::default();
        let projection_snapshot_failures = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register("http_request_duration_seconds", "HTTP request latency", latency.clone());
        registry.register("events_appended", "events written to the log", events_appended.clone());
        registry.register(
            "idempotent_replays",
            "appends answered from the idempotency index",
            idempotent_replays.clone(),
        );
        registry.register(
            "auth_failures",
            "requests with a missing or invalid credential",
            auth_failures.clone(),
        );
        registry.register(
            "head_position",
            "position of the last committed event",
            head_position.clone(),
        );
        registry.register(
            "projection_checkpoint",
            "checkpoint (position) of the last views snapshot written",
            projection_checkpoint.clone(),
        );
        registry.register(
            "projection_restored_checkpoint",
            "checkpoint of the views snapshot restored at start (0: none, replayed from the start)",
            projection_restored_checkpoint.clone(),
        );
        registry.register(
            "projection_replayed_events",
            "events the views replayed from the log at start",
            projection_replayed_events.clone(),
        );
        registry.register(
            "projection_snapshot_failures",
            "views snapshots that could not be written",
            projection_snapshot_failures.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            events_appended,
            idempotent_replays,
            auth_failures,
            head_position,
            projection_checkpoint,
            projection_restored_checkpoint,
            projection_replayed_events,
            projection_snapshot_failures,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
