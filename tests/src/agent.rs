//! One way to start `tracer agent` in a lab and read what it exports: the tests say only what
//! differs (ports, window, log, extra options), and every metrics poll waits and fails alike.

use std::{path::Path, time::Duration};

use serde_json::Value;

use crate::{eventually, metric, Netns, Tracer, ORIGIN_IF};

/// Where the agent serves `/metrics` unless a test moves it.
pub const METRICS: &str = "127.0.0.1:10521";

/// `tracer agent` on the lab's origin interface, being configured.
pub struct AgentRun<'a> {
    ns: &'a Netns,
    args: Vec<String>,
    env: Vec<(String, String)>,
    metrics: String,
}

/// A running agent.
pub struct Agent {
    pub tracer: Tracer,
    ns: String,
    metrics: String,
}

impl Agent {
    /// An agent in `ns` watching `ports` (comma-separated) with `window`-second windows and a
    /// JSON-lines log at `log`.
    pub fn on<'a>(ns: &'a Netns, ports: &str, window: &str, log: &Path) -> AgentRun<'a> {
        let args = [
            "agent",
            "--iface",
            ORIGIN_IF,
            "--port",
            ports,
            "--window",
            window,
            "--log-file",
            log.to_str().expect("a UTF-8 log path"),
        ];
        AgentRun {
            ns,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            metrics: METRICS.to_string(),
        }
    }

    /// The `/metrics` text now (empty when the agent does not answer).
    pub fn scrape(&self) -> String {
        Netns {
            name: self.ns.clone(),
        }
        .http_get(&self.metrics, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
    }

    /// Polls `/metrics` until `ok` holds, for at most `limit`; fails the test with the last
    /// text otherwise. Returns the text that satisfied it.
    pub fn metrics_until(&self, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        let met = eventually(limit, || {
            text = self.scrape();
            ok(&text)
        });
        assert!(met, "the agent's metrics never matched:\n{text}");
        text
    }

    /// Polls until every `(series, value)` is exported with exactly that value.
    pub fn metrics_reach(&self, limit: Duration, expected: &[(String, f64)]) -> String {
        let mut text = String::new();
        let met = eventually(limit, || {
            text = self.scrape();
            expected.iter().all(|(s, v)| metric(&text, s) == Some(*v))
        });
        assert!(met, "metrics never matched {expected:?}:\n{text}");
        text
    }

    /// Stops it (SIGTERM) and returns what it wrote to stdout, as JSON lines.
    pub fn stop(self) -> Vec<Value> {
        self.tracer.stop()
    }
}

impl AgentRun<'_> {
    /// More options, as the command line has them.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Serves `/metrics` on `addr` instead of [`METRICS`].
    pub fn metrics_addr(mut self, addr: &str) -> Self {
        self.args
            .extend(["--metrics-addr".to_string(), addr.to_string()]);
        self.metrics = addr.to_string();
        self
    }

    /// An environment variable for the tracer.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> Agent {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Agent {
            tracer: Tracer::start_env(self.ns, &args, &env),
            ns: self.ns.name.clone(),
            metrics: self.metrics,
        }
    }
}

/// The series of `tracer_edge_connections_total` for a port and an outcome.
pub fn connections(port: u16, outcome: &str) -> String {
    format!("tracer_edge_connections_total{{outcome=\"{outcome}\",port=\"{port}\"}}")
}
