//! Routes that swallow the edge: for every watched range, the way this host would send a reply
//! there, against the way its default route goes. A VPC route `172.0.0.0/8` via a peering
//! connection takes Cloudflare's `172.64.0.0/13` with it; a null route or a VPN client's routes
//! do the same to others. Knowable before any traffic (Cloudflare shows 523, or 522).
//!
//! The kernel decides (`ip route get`, asked over netlink, policy rules included): nothing here re-implements
//! routing. Each range is asked about at its first address and at the first address of every
//! listed route lying inside it (a more specific route may take only part of a range); the
//! listing only names the route the kernel picked.

use std::{io, net::IpAddr};

use ipnet::IpNet;

use super::routes::{null_route_for, table_name, NullRoute, NullRouteEntry};
use crate::sys::netlink::{self, ListedRoute, RouteAnswer};

/// Where the kernel sends a reply to an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Out of an interface, maybe through a gateway, from a table (None: main).
    Via {
        dev: String,
        gateway: Option<IpAddr>,
        table: Option<String>,
    },
    /// Nowhere: a route of type unreachable, blackhole or prohibit.
    Null(NullRouteEntry),
    /// No route at all (the kernel said "Network is unreachable").
    None,
}

/// A watched range (or part of one) whose replies do not leave the way the default route goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misrouted {
    pub range: IpNet,
    /// The address the kernel was asked about.
    pub probe: IpAddr,
    /// The route that took it, as listed (`172.0.0.0/8`), when one is.
    pub prefix: Option<IpNet>,
    pub hop: Hop,
    /// The default route's way for this family, when there is one.
    pub default: Option<Hop>,
}

impl Misrouted {
    /// The route as `ip route` writes it: "172.0.0.0/8 via 10.8.0.1 dev tun0 table 100",
    /// "unreachable 173.245.48.0/20".
    pub fn route_text(&self) -> String {
        match &self.hop {
            Hop::Null(n) => n.describe(),
            Hop::None => "no route".into(),
            Hop::Via {
                dev,
                gateway,
                table,
            } => {
                let mut s = self
                    .prefix
                    .map_or_else(|| self.probe.to_string(), |p| p.to_string());
                if let Some(g) = gateway {
                    s += &format!(" via {g}");
                }
                s += &format!(" dev {dev}");
                if let Some(t) = table {
                    s += &format!(" table {t}");
                }
                s
            }
        }
    }

    /// What to do, in `ip` terms.
    pub fn fix(&self) -> String {
        let v6 = if self.range.addr().is_ipv6() {
            "-6 "
        } else {
            ""
        };
        let back = match &self.default {
            Some(Hop::Via { dev, gateway, .. }) => {
                let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                format!("ip {v6}route add {}{via} dev {dev}", self.range)
            }
            _ => format!(
                "ip {v6}route add {} via <your upstream gateway>",
                self.range
            ),
        };
        match &self.hop {
            Hop::Null(n) => format!(
                "replies to {} are dropped by `{}`: remove it (`{}`) unless it is meant to block Cloudflare",
                self.range,
                n.describe(),
                n.delete_command()
            ),
            Hop::None => format!(
                "this host has no route to {}: add one the way the internet is reached (`{back}`)",
                self.range
            ),
            Hop::Via { .. } => format!(
                "replies to {} leave by `{}`, not the default route: narrow that route so it no longer covers Cloudflare's range (in a cloud VPC, its route table's peering/VPN entry), or add the range back the default way, more specific than it (`{back}`)",
                self.range,
                self.route_text()
            ),
        }
    }
}

/// Where the kernel's answer for one address sends it (None: an answer with no interface).
pub fn hop_of(a: &RouteAnswer) -> Option<Hop> {
    if let Some(kind) = NullRoute::of_kind(a.kind) {
        return Some(Hop::Null(NullRouteEntry {
            kind,
            prefix: None,
            table: table_name(a.table),
        }));
    }
    Some(Hop::Via {
        dev: a.dev.clone()?,
        gateway: a.gateway,
        table: table_name(a.table),
    })
}

/// The addresses to ask about for `range`: its first address, and the first address of each
/// listed route strictly inside it (where part of it may go another way).
pub fn probes(range: IpNet, listed: &[ListedRoute]) -> Vec<IpAddr> {
    let mut out = vec![range.network()];
    for r in listed {
        if range.contains(&r.dst) && r.dst.prefix_len() > range.prefix_len() {
            out.push(r.dst.network());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Does `hop` leave the way `default` does? (The same interface and gateway; the table may
/// differ: a policy rule sending the edge through a copy of main is fine.)
pub fn same_way(hop: &Hop, default: &Hop) -> bool {
    match (hop, default) {
        (
            Hop::Via {
                dev: a,
                gateway: ga,
                ..
            },
            Hop::Via {
                dev: b,
                gateway: gb,
                ..
            },
        ) => a == b && ga == gb,
        _ => false,
    }
}

/// The most specific listed route of the hop's table that covers `probe`: the one the kernel
/// used, named.
fn prefix_for(probe: IpAddr, hop: &Hop, listed: &[ListedRoute]) -> Option<IpNet> {
    let Hop::Via { dev, table, .. } = hop else {
        return None;
    };
    listed
        .iter()
        .filter(|r| {
            r.dst.contains(&probe)
                && table_name(r.table) == *table
                && r.dev.as_ref().is_none_or(|d| d == dev)
        })
        .map(|r| r.dst)
        .max_by_key(IpNet::prefix_len)
}

/// Every watched range (or part of one) this host routes another way than its default route:
/// `get` asks the kernel for one address (`ip route get`; Err: the kernel's refusal), `listed`
/// is every route of every table of the family (`ip route show table all`). Pure given those,
/// so tests drive it with recorded answers.
pub fn misrouted(
    ranges: &[IpNet],
    default: Option<Hop>,
    listed: &[ListedRoute],
    get: impl Fn(IpAddr) -> io::Result<Hop>,
) -> Vec<Misrouted> {
    let mut out = Vec::new();
    for &range in ranges {
        for probe in probes(range, listed) {
            let hop = match get(probe) {
                Ok(Hop::Null(n)) if n.prefix.is_none() => {
                    Hop::Null(null_route_for(listed, n.kind, probe))
                }
                Ok(h) => h,
                Err(e) => match e.raw_os_error().and_then(NullRoute::of_errno) {
                    Some(kind) => Hop::Null(null_route_for(listed, kind, probe)),
                    None => Hop::None,
                },
            };
            let fine = match &default {
                Some(d) => same_way(&hop, d),
                // No default route, no reference way: only a null route is surely wrong.
                None => !matches!(hop, Hop::Null(_)),
            };
            if fine {
                continue;
            }
            let prefix = match &hop {
                Hop::Null(n) => n.prefix,
                _ => prefix_for(probe, &hop, listed),
            };
            // The part of the range the route takes: all of it when the route is as wide or
            // wider, else the route's own prefix.
            let part = match prefix {
                Some(p) if p.prefix_len() > range.prefix_len() => p,
                _ => range,
            };
            if out.iter().any(|m: &Misrouted| m.range == part) {
                continue;
            }
            out.push(Misrouted {
                range: part,
                probe,
                prefix,
                hop,
                default: default.clone(),
            });
        }
    }
    out
}

/// The audit on this host, in this network namespace: both families. A family whose routes
/// cannot be listed is left out (and said at debug level): nothing is claimed about it.
pub fn audit(v4: &[IpNet], v6: &[IpNet]) -> Vec<Misrouted> {
    let mut out = Vec::new();
    for (ranges, is_v6) in [(v4, false), (v6, true)] {
        if ranges.is_empty() {
            continue;
        }
        let listed = match netlink::routes_listed(is_v6) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("routes not listed ({e}): the range audit skips this family");
                continue;
            }
        };
        // The default route's way: where a public address (not in any watched range) goes.
        let public: IpAddr = if is_v6 {
            "2001:4860:4860::8888".parse().expect("an address")
        } else {
            "8.8.8.8".parse().expect("an address")
        };
        let default = netlink::route_get(public, None)
            .ok()
            .and_then(|a| hop_of(&a))
            .filter(|h| matches!(h, Hop::Via { .. }))
            // A default route that is itself one of the swallowing kinds is no reference.
            .filter(|_| listed.iter().any(|r| r.dst.prefix_len() == 0));
        let get = |a: IpAddr| {
            netlink::route_get(a, None).and_then(|answer| {
                hop_of(&answer).ok_or_else(|| io::Error::other("an answer with no interface"))
            })
        };
        out.extend(misrouted(ranges, default, &listed, get));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(dev: &str, gw: &str) -> Hop {
        Hop::Via {
            dev: dev.into(),
            gateway: Some(gw.parse().unwrap()),
            table: None,
        }
    }

    /// The case, recorded: `172.0.0.0/8 via 10.8.0.1 dev tun0` and `unreachable
    /// 173.245.48.0/20`, the default route via 192.0.2.254 dev eth0.
    #[test]
    fn the_swallowed_ranges_and_only_they_are_listed() {
        let listed: Vec<ListedRoute> = [
            "default via 192.0.2.254 dev eth0",
            "172.0.0.0/8 via 10.8.0.1 dev tun0",
            "unreachable 173.245.48.0/20",
            "192.0.2.0/24 dev eth0",
        ]
        .map(netlink::listed)
        .into();
        let ranges: Vec<IpNet> = [
            "173.245.48.0/20",
            "103.21.244.0/22",
            "172.64.0.0/13",
            "104.16.0.0/13",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        let get = |a: IpAddr| -> io::Result<Hop> {
            let s = a.to_string();
            if s.starts_with("172.") {
                Ok(via("tun0", "10.8.0.1"))
            } else if s.starts_with("173.245.") {
                Err(io::Error::from_raw_os_error(libc::EHOSTUNREACH))
            } else {
                Ok(via("eth0", "192.0.2.254"))
            }
        };
        let m = misrouted(&ranges, Some(via("eth0", "192.0.2.254")), &listed, get);
        let names: Vec<String> = m.iter().map(|m| m.range.to_string()).collect();
        assert_eq!(names, ["173.245.48.0/20", "172.64.0.0/13"]);
        assert_eq!(m[0].route_text(), "unreachable 173.245.48.0/20");
        assert!(
            m[0].fix()
                .contains("ip route del unreachable 173.245.48.0/20"),
            "{}",
            m[0].fix()
        );
        assert_eq!(m[1].route_text(), "172.0.0.0/8 via 10.8.0.1 dev tun0");
        assert!(
            m[1].fix()
                .contains("ip route add 172.64.0.0/13 via 192.0.2.254 dev eth0"),
            "{}",
            m[1].fix()
        );
        // All well: nothing listed.
        let ok = misrouted(&ranges, Some(via("eth0", "192.0.2.254")), &[], |_| {
            Ok(via("eth0", "192.0.2.254"))
        });
        assert!(ok.is_empty());
    }

    /// A route more specific than a range takes only its part: that part is listed, found by
    /// asking about the route's own first address.
    #[test]
    fn a_route_inside_a_range_names_its_part() {
        let listed: Vec<ListedRoute> = [
            "default via 192.0.2.254 dev eth0",
            "104.18.0.0/16 via 10.9.0.1 dev wg0 table 100",
        ]
        .map(netlink::listed)
        .into();
        let range: IpNet = "104.16.0.0/13".parse().unwrap();
        assert_eq!(
            probes(range, &listed),
            [
                "104.16.0.0".parse::<IpAddr>().unwrap(),
                "104.18.0.0".parse().unwrap()
            ]
        );
        let get = |a: IpAddr| -> io::Result<Hop> {
            Ok(if a.to_string().starts_with("104.18.") {
                Hop::Via {
                    dev: "wg0".into(),
                    gateway: Some("10.9.0.1".parse().unwrap()),
                    table: Some("100".into()),
                }
            } else {
                via("eth0", "192.0.2.254")
            })
        };
        let m = misrouted(&[range], Some(via("eth0", "192.0.2.254")), &listed, get);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].range.to_string(), "104.18.0.0/16");
        assert_eq!(
            m[0].route_text(),
            "104.18.0.0/16 via 10.9.0.1 dev wg0 table 100"
        );
    }

    #[test]
    fn route_answers_become_hops() {
        let answer = |kind, dev: Option<&str>| RouteAnswer {
            kind,
            table: netlink::MAIN_TABLE,
            dev: dev.map(String::from),
            gateway: Some("192.0.2.1".parse().unwrap()),
            prefsrc: None,
        };
        use netlink::RouteKind;
        assert_eq!(
            hop_of(&answer(RouteKind::Unicast, Some("eth0"))),
            Some(via("eth0", "192.0.2.1"))
        );
        assert!(matches!(
            hop_of(&answer(RouteKind::Blackhole, None)),
            Some(Hop::Null(NullRouteEntry {
                kind: NullRoute::Blackhole,
                prefix: None,
                ..
            }))
        ));
        assert_eq!(hop_of(&answer(RouteKind::Unicast, None)), None);
    }
}
