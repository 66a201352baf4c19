//! The kernel's drop and reset reasons: numbers read from this kernel at start (tracefs format
//! files, BTF), each resolved once to its name and, for drops, to what it means for a
//! connection attempt. Events carry the number and the class; names are for output.

pub mod location;
pub mod meaning;

use std::{borrow::Cow, collections::HashMap};

/// A name for output: borrowed from the table built once (no allocation per event), or owned
/// (an unknown code).
pub type Name = Cow<'static, str>;

/// What a kernel drop reason means for a connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropClass {
    /// No socket matched: the stack refuses (and sends RST unless a firewall ate it).
    NoSocket,
    /// A packet filter: netfilter, tc, cgroup BPF, XDP in generic mode, socket filters, LSMs.
    Filter,
    /// A queue was full: listen/accept queue, SYN queue, CPU backlog.
    Overload,
    /// A queue purged because its socket went away (one per connection closed with data
    /// unread): it cannot decide a connection attempt.
    Teardown,
    Other,
}

impl DropClass {
    /// The class of a reason by the kernel's name for it (`NO_SOCKET`, `NETFILTER_DROP`, ...).
    pub fn of_name(reason: &str) -> Self {
        match reason {
            "NO_SOCKET" => Self::NoSocket,
            "QUEUE_PURGE" | "SOCKET_CLOSE" => Self::Teardown,
            r if r.starts_with("NETFILTER")
                || r.starts_with("TC_")
                || r.starts_with("BPF_CGROUP")
                || r == "XDP"
                || r == "SOCKET_FILTER"
                || r == "SECURITY_HOOK" =>
            {
                Self::Filter
            }
            r if r.contains("LISTEN_OVERFLOW")
                || r.contains("REQQFULL")
                || r == "CPU_BACKLOG"
                || r == "SOCKET_BACKLOG" =>
            {
                Self::Overload
            }
            _ => Self::Other,
        }
    }

    /// Can a drop of this class decide an attempt on a packet other than its SYN (the final
    /// ACK refused, filtered or overflowing)?
    pub fn decides_attempts(self) -> bool {
        matches!(self, Self::NoSocket | Self::Filter | Self::Overload)
    }
}

/// A kernel reason as an event carries it: the number, and for drops its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// `enum skb_drop_reason`
    Drop { code: u32, class: DropClass },
    /// `enum sk_rst_reason` (6.10+)
    Reset { code: u32 },
}

impl Reason {
    /// Named by the function that freed the packet (before 5.17), not by the kernel: the
    /// name is a guess from where, and `tcp_v4_rcv` frees both a SYN no socket wanted and a
    /// retransmitted SYN a pending request answered.
    pub fn by_location(self) -> bool {
        matches!(self, Reason::Drop { code, .. } if code >= LOCATION_CODES)
    }
}

/// Reason numbers to the kernel's own names and classes, for this kernel.
///
/// The names are leaked once per process (a few kilobytes): every event then refers to a
/// borrowed name instead of a fresh allocation.
#[derive(Clone, Debug, Default)]
pub struct ReasonTable {
    drop: HashMap<u32, (&'static str, DropClass)>,
    reset: HashMap<u32, &'static str>,
    /// Before 5.17: the kernel's functions, to name a drop by where it happened.
    symbols: Option<std::sync::Arc<location::Symbols>>,
}

/// Codes given to drops named by their location (no kernel uses them).
const LOCATION_CODES: u32 = 0xfff0_0000;

fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

impl ReasonTable {
    /// From the kernel's `code -> name` maps.
    pub fn new(drop: HashMap<u32, String>, reset: HashMap<u32, String>) -> Self {
        Self {
            drop: drop
                .into_iter()
                .map(|(code, name)| {
                    let class = DropClass::of_name(&name);
                    (code, (leak(name), class))
                })
                .collect(),
            reset: reset
                .into_iter()
                .map(|(code, name)| (code, leak(name)))
                .collect(),
            symbols: None,
        }
    }

    /// Adds the names `other` has and this table lacks.
    pub fn fill_from(&mut self, other: ReasonTable) {
        if self.drop.is_empty() {
            self.drop = other.drop;
        }
        if self.reset.is_empty() {
            self.reset = other.reset;
        }
    }

    /// On a kernel whose `kfree_skb` has no reason: name drops by the function that freed
    /// them, resolved through `symbols`.
    pub fn by_location(&mut self, symbols: location::Symbols) {
        for (i, name) in location::NAMES.iter().enumerate() {
            self.drop
                .insert(LOCATION_CODES + i as u32, (name, DropClass::of_name(name)));
        }
        self.symbols = Some(std::sync::Arc::new(symbols));
    }

    /// The reason of a drop freed at `location`, when reasons come from locations and the
    /// function there tells one.
    pub fn drop_reason_at(&self, location: u64) -> Option<Reason> {
        let function = self.symbols.as_ref()?.function_at(location)?;
        let name = location::reason_of_function(function)?;
        let i = location::NAMES.iter().position(|n| *n == name)?;
        Some(self.drop_reason(LOCATION_CODES + i as u32))
    }

    /// A drop reason number as an event carries it.
    pub fn drop_reason(&self, code: u32) -> Reason {
        let class = self.drop.get(&code).map_or(DropClass::Other, |(_, c)| *c);
        Reason::Drop { code, class }
    }

    /// The drop reasons of `class`, as numbers (for the kernel's bitmaps).
    pub fn drop_codes(&self, wanted: impl Fn(DropClass) -> bool) -> Vec<u32> {
        let mut codes: Vec<u32> = self
            .drop
            .iter()
            .filter(|(_, (_, class))| wanted(*class))
            .map(|(code, _)| *code)
            .collect();
        codes.sort_unstable();
        codes
    }

    /// The kernel's name of a reason. Since 6.4 the high 16 bits of a drop reason name a
    /// subsystem; an unknown number is named as such.
    pub fn name(&self, reason: Reason) -> Name {
        match reason {
            Reason::Drop { code, .. } => {
                if let Some((name, _)) = self.drop.get(&code) {
                    return Name::Borrowed(name);
                }
                if code >> 16 != 0 {
                    return format!("SUBSYS_{}_{}", code >> 16, code & 0xffff).into();
                }
                format!("DROP_REASON_{code}").into()
            }
            Reason::Reset { code } => match self.reset.get(&code) {
                Some(name) => Name::Borrowed(name),
                None => format!("RST_REASON_{code}").into(),
            },
        }
    }

    /// A table from `(code, name)` pairs, for tests.
    #[cfg(test)]
    pub fn for_tests(drop: &[(u32, &str)], reset: &[(u32, &str)]) -> Self {
        let owned = |pairs: &[(u32, &str)]| {
            pairs
                .iter()
                .map(|(c, n)| (*c, n.to_string()))
                .collect::<HashMap<_, _>>()
        };
        Self::new(owned(drop), owned(reset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_name() {
        assert_eq!(DropClass::of_name("NO_SOCKET"), DropClass::NoSocket);
        assert_eq!(DropClass::of_name("NETFILTER_DROP"), DropClass::Filter);
        assert_eq!(DropClass::of_name("TC_INGRESS"), DropClass::Filter);
        assert_eq!(
            DropClass::of_name("TCP_LISTEN_OVERFLOW"),
            DropClass::Overload
        );
        assert_eq!(DropClass::of_name("CPU_BACKLOG"), DropClass::Overload);
        assert_eq!(DropClass::of_name("QUEUE_PURGE"), DropClass::Teardown);
        assert_eq!(DropClass::of_name("TCP_CSUM"), DropClass::Other);
    }

    #[test]
    fn numbers_resolve_once_to_classes_and_names() {
        let t = ReasonTable::for_tests(&[(2, "NO_SOCKET"), (5, "NETFILTER_DROP")], &[(1, "X")]);
        assert_eq!(
            t.drop_reason(5),
            Reason::Drop {
                code: 5,
                class: DropClass::Filter
            }
        );
        assert_eq!(t.name(t.drop_reason(2)), "NO_SOCKET");
        assert_eq!(t.name(t.drop_reason(999)), "DROP_REASON_999");
        assert_eq!(t.name(t.drop_reason(0x0002_0005)), "SUBSYS_2_5");
        assert_eq!(t.name(Reason::Reset { code: 1 }), "X");
        assert_eq!(t.name(Reason::Reset { code: 77 }), "RST_REASON_77");
        assert_eq!(t.drop_codes(DropClass::decides_attempts), [2, 5]);
    }
}
