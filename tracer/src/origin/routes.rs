//! The way back: which route the origin takes to reach an edge peer (policy rules included),
//! and how strictly the arrival interface filters by reverse path. A handshake that never
//! completes while SYN-ACKs go out another interface is a return-path fault, not overload.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

/// The route the kernel picks for a reply from `local` to `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub peer: IpAddr,
    pub local: IpAddr,
    /// Output interface.
    pub dev: String,
    pub gateway: Option<IpAddr>,
    /// Source address the kernel would pick.
    pub prefsrc: Option<IpAddr>,
    /// Policy-routing table, when not main.
    pub table: Option<String>,
}

impl Route {
    /// "via 10.9.0.1 dev eth1 src 192.0.2.1 (table 100)"
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(g) = self.gateway {
            s += &format!("via {g} ");
        }
        s += &format!("dev {}", self.dev);
        if let Some(src) = self.prefsrc {
            s += &format!(" src {src}");
        }
        if let Some(t) = &self.table {
            s += &format!(" (table {t})");
        }
        s
    }
}

/// `ip -j route get PEER from LOCAL` in this namespace.
pub fn route_back(peer: IpAddr, local: IpAddr) -> Result<Route, String> {
    let (p, l) = (peer.to_string(), local.to_string());
    let out = super::run_tool("ip", &["-j", "-d", "route", "get", &p, "from", &l])
        .map_err(|e| format!("no route back to {peer} from {local}: {e}"))?;
    parse(&out, peer, local)
}

/// Parses `ip -j route get` output.
pub fn parse(json: &str, peer: IpAddr, local: IpAddr) -> Result<Route, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ip -j route get: {e}"))?;
    let r = v
        .as_array()
        .and_then(|a| a.first())
        .ok_or("ip -j route get: no route in the answer")?;
    let addr = |k: &str| r[k].as_str().and_then(|s| s.parse::<IpAddr>().ok());
    let dev = r["dev"]
        .as_str()
        .ok_or("ip -j route get: no output interface")?;
    let table = match &r["table"] {
        Value::String(t) if t != "main" => Some(t.clone()),
        Value::Number(n) if n.as_u64() != Some(254) => Some(n.to_string()),
        _ => None,
    };
    Ok(Route {
        peer,
        local,
        dev: dev.to_string(),
        gateway: addr("gateway"),
        prefsrc: addr("prefsrc"),
        table,
    })
}

/// Reverse-path filtering in effect on `iface` for IPv4: the larger of `all` and the
/// interface's own setting (0 off, 1 strict, 2 loose), as the kernel applies it.
pub fn rp_filter(iface: &str) -> Option<u8> {
    let read = |name: &str| -> Option<u8> {
        let path = format!("/proc/sys/net/ipv4/conf/{name}/rp_filter");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    };
    let own = read(iface);
    let all = read("all");
    own.into_iter().chain(all).max()
}

/// "strict (1)", "loose (2)", "off (0)".
pub fn rp_filter_text(mode: u8) -> String {
    match mode {
        0 => "off (0)".into(),
        1 => "strict (1)".into(),
        2 => "loose (2)".into(),
        n => format!("{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_policy_route_and_a_plain_one() {
        let peer = "173.245.48.10".parse().unwrap();
        let local = "192.0.2.1".parse().unwrap();
        let r = parse(
            r#"[{"dst":"173.245.48.10","gateway":"10.9.0.1","dev":"eth1","table":"100","prefsrc":"192.0.2.1","flags":[],"uid":0,"cache":[]}]"#,
            peer,
            local,
        )
        .unwrap();
        assert_eq!(r.dev, "eth1");
        assert_eq!(
            r.describe(),
            "via 10.9.0.1 dev eth1 src 192.0.2.1 (table 100)"
        );
        let r = parse(
            r#"[{"dst":"173.245.48.10","dev":"eth0","table":"main","prefsrc":"192.0.2.1","flags":[]}]"#,
            peer,
            local,
        )
        .unwrap();
        assert_eq!(r.describe(), "dev eth0 src 192.0.2.1");
        assert!(parse("[]", peer, local).is_err());
        assert!(parse("not json", peer, local).is_err());
    }
}
