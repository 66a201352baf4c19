//! The views: what the tracer writes, built from the model at the edge — the report (text and
//! JSON), the `events` stream, the agent's JSON-lines log and its records, the Prometheus
//! metrics. The model's types never serialize themselves into a contract.

pub mod attempt_record;
pub mod audit_json;
pub mod event_log;
pub mod events;
pub mod http;
pub mod metrics;
pub mod report;
pub mod report_json;
pub mod text_wrap;
pub mod verdict_record;
