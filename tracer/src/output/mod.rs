//! The views: what the tracer writes, built from the model at the edge — the report (text and
//! JSON), the `events` stream, the agent's JSON-lines log and its records, the Prometheus
//! metrics. The model's types never serialize themselves into a contract.

/// The version of the log records' schema (`deploy/schema/log-record.schema.json`), carried
/// by every record as `schema`: it changes only when a field is removed or changes meaning
/// (fields are added without it).
pub const LOG_SCHEMA: u32 = 1;

pub mod attempt_record;
pub mod audit_json;
pub mod event_log;
pub mod events;
pub mod http;
pub mod metrics;
pub mod report;
pub mod report_json;
pub mod text_wrap;
pub mod tunnel_json;
pub mod tunnel_metrics;
pub mod verdict_record;
pub mod web_config;
