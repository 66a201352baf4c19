//! The change journal: what changed on the origin, when — a listener on a watched port
//! appearing or going away, the nftables ruleset changing, a route or address of the watched
//! interface or toward the edge changing, a sysctl that matters here, the ranges refreshed,
//! the arrival hook re-attached — so a failure can be tied to the change before it
//! ([`since`]). [`watch`] observes the host; the agent logs each change (`kind: change`) and
//! counts it (`tracer_changes_total{what}`); reports carry the ones before the failure began.

pub mod dated;
pub mod listeners;
pub mod netlink;
pub mod since;
pub mod watch;

use std::{collections::VecDeque, time::SystemTime};

/// What kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum What {
    /// A socket started listening on a watched port.
    ListenerUp,
    /// The listening socket on a watched port went away.
    ListenerDown,
    /// The nftables ruleset changed (rules, chains, sets, set elements, tables).
    Firewall,
    /// A route via the watched interface, or toward the edge's ranges, was added or removed.
    Route,
    /// An address of the watched interface was added or removed.
    Address,
    /// The watched interface went up or down.
    Link,
    /// A sysctl that matters here changed (rp_filter, somaxconn, tcp_syncookies).
    Sysctl,
    /// The watched ranges were refreshed and differ.
    Ranges,
    /// The arrival hook was attached again (the interface came back).
    Hook,
}

impl What {
    pub const ALL: [What; 9] = [
        What::ListenerUp,
        What::ListenerDown,
        What::Firewall,
        What::Route,
        What::Address,
        What::Link,
        What::Sysctl,
        What::Ranges,
        What::Hook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListenerUp => "listener_up",
            Self::ListenerDown => "listener_down",
            Self::Firewall => "firewall",
            Self::Route => "route",
            Self::Address => "address",
            Self::Link => "link",
            Self::Sysctl => "sysctl",
            Self::Ranges => "ranges",
            Self::Hook => "hook",
        }
    }
}

/// One change, with when it was seen and what it was, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub ts: SystemTime,
    pub what: What,
    /// "nginx (pid 812) stopped listening on 0.0.0.0:443".
    pub detail: String,
}

impl Change {
    pub fn new(what: What, detail: impl Into<String>) -> Self {
        Self {
            ts: SystemTime::now(),
            what,
            detail: detail.into(),
        }
    }

    /// The `{"ts":..,"kind":"change","what":..,"detail":..}` log line.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "ts": humantime::format_rfc3339_micros(self.ts).to_string(),
            "kind": "change",
            "schema": crate::output::LOG_SCHEMA,
            "what": self.what.as_str(),
            "detail": self.detail,
        })
        .to_string()
    }
}

/// Recent changes, oldest first, bounded in number and age.
#[derive(Default)]
pub struct Journal {
    changes: VecDeque<Change>,
}

/// Changes kept, at most: a ruleset churning under fail2ban must not grow memory.
const KEEP: usize = 4096;
/// ... and for at most this long.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

impl Journal {
    pub fn push(&mut self, c: Change) {
        if self.changes.len() >= KEEP {
            self.changes.pop_front();
        }
        let now = c.ts;
        self.changes.push_back(c);
        while self
            .changes
            .front()
            .is_some_and(|f| now.duration_since(f.ts).unwrap_or_default() > KEEP_FOR)
        {
            self.changes.pop_front();
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_bounded() {
        let mut j = Journal::default();
        for i in 0..KEEP + 10 {
            j.push(Change::new(What::Firewall, format!("{i}")));
        }
        assert_eq!(j.all().count(), KEEP);
        assert_eq!(j.all().next().unwrap().detail, "10");
        let line: serde_json::Value =
            serde_json::from_str(&j.all().next().unwrap().to_json()).unwrap();
        assert_eq!(line["kind"], "change");
        assert_eq!(line["what"], "firewall");
    }
}
