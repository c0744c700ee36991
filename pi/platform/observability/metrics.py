"""Every Prometheus metric the platform exports, declared once.

RPC metrics use go-grpc-prometheus's names, labels and Go code spellings (`OK`,
`InvalidArgument`, ...), so dashboards and alerts written for Go services work
unchanged. Business metrics are prefixed `pi_`. No label is ever a merchant, a payment id
or anything else without a small, fixed set of values: a label value comes from an enum,
a stable error reason or a method name.

Metrics live on prometheus-client's default registry: one per process, which is what a
scrape of the process's metrics port reads.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# go-grpc-prometheus's default buckets (Prometheus' DefBuckets), in seconds.
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Processor calls and database units are faster than a whole RPC: finer at the bottom.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_RPC = ("grpc_type", "grpc_service", "grpc_method")

# -- RPCs (go-grpc-prometheus) ---------------------------------------------------------

grpc_server_started = Counter(
    "grpc_server_started_total", "Total number of RPCs started on the server.", _RPC
)
grpc_server_handled = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_RPC, "grpc_code"),
)
grpc_server_handling_seconds = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _RPC,
    buckets=RPC_BUCKETS,
)
grpc_client_started = Counter(
    "grpc_client_started_total", "Total number of RPCs started on the client.", _RPC
)
grpc_client_handled = Counter(
    "grpc_client_handled_total",
    "Total number of RPCs completed by the client, regardless of success or failure.",
    (*_RPC, "grpc_code"),
)
grpc_client_handling_seconds = Histogram(
    "grpc_client_handling_seconds",
    "Histogram of response latency (seconds) of the gRPC until it is finished by the application.",
    _RPC,
    buckets=RPC_BUCKETS,
)

# -- payments --------------------------------------------------------------------------

payments = Counter(
    "pi_payments_total",
    "Payments created, by method, capture mode, the status they were created in and the "
    "failure reason (empty unless FAILED).",
    ("method", "capture_mode", "status", "failure_reason"),
)
payment_changes = Counter(
    "pi_payment_changes_total",
    "Changes merchants made to payments (capture, cancel, refund), by the status the "
    "payment ended in.",
    ("operation", "status"),
)
payments_reconciled = Counter(
    "pi_payments_reconciled_total",
    "PROCESSING payments the reconciler settled, by the status they settled in.",
    ("status",),
)
authorizations = Counter(
    "pi_authorizations_total",
    "Processor authorizations, by outcome (APPROVED, DECLINED, PENDING, TIMEOUT) and "
    "decline reason (empty unless DECLINED).",
    ("processor", "outcome", "decline_reason"),
)
processor_seconds = Histogram(
    "pi_processor_call_seconds",
    "Processor call latency, by operation (authorize, capture, void, refund, status) and outcome.",
    ("processor", "operation", "outcome"),
    buckets=FAST_BUCKETS,
)

# -- outbox, facts, reconciler ---------------------------------------------------------

outbox_undelivered = Gauge(
    "pi_outbox_undelivered",
    "Outbox rows (ledger movements, transaction facts) not delivered yet, when last sampled.",
    ("outbox",),
)
outbox_oldest_age = Gauge(
    "pi_outbox_oldest_undelivered_age_seconds",
    "Age of the oldest undelivered outbox row when last sampled (0 when none).",
    ("outbox",),
)
outbox_delivered = Counter(
    "pi_outbox_delivered_total", "Outbox rows delivered to the other service.", ("outbox",)
)
outbox_failures = Counter(
    "pi_outbox_delivery_failures_total",
    "Outbox deliveries that failed: movements postponed for a retry with backoff, facts "
    "lost (their payments look the transaction up instead).",
    ("outbox",),
)
reconciler_backlog = Gauge(
    "pi_reconciler_backlog",
    "PROCESSING payments waiting for the reconciler when last sampled.",
)
reconciler_oldest_age = Gauge(
    "pi_reconciler_oldest_processing_age_seconds",
    "How long the oldest PROCESSING payment has been PROCESSING, when last sampled (0 when none).",
)
outbox_dead_letters = Gauge(
    "pi_outbox_dead_letters",
    "Outbox rows given up on and kept for an operator (dead letters), when last sampled. "
    "Set by the backlog sampler once the dead-letter table exists.",
    ("outbox",),
)

# -- platform --------------------------------------------------------------------------

idempotency = Counter(
    "pi_idempotency_total",
    "Requests whose idempotency key was seen before: replayed (same request, first "
    "response returned), conflict (same key, different request) or in_progress.",
    ("result",),
)
rate_limited = Counter(
    "pi_rate_limited_total",
    "Calls refused with RESOURCE_EXHAUSTED by the per-merchant rate limit.",
)
background_restarts = Counter(
    "pi_background_task_restarts_total",
    "Background tasks (outbox dispatcher, reconciler, facts publisher, ...) that crashed "
    "and were restarted.",
    ("task",),
)
db_units = Histogram(
    "pi_db_unit_seconds",
    "Units of work on PostgreSQL, from the block's start to its end, by mode and result "
    "(committed, read, rolled_back, conflict, error).",
    ("mode", "result"),
    buckets=FAST_BUCKETS,
)
spans_dropped = Counter(
    "pi_spans_dropped_total",
    "Sampled spans that were never exported: the export queue was full or the "
    "collector refused them.",
)
spans_exported = Counter("pi_spans_exported_total", "Spans exported to the OTLP endpoint.")
