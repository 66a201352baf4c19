//! The ruleset's text forms: `nft -a list ruleset` (rule bodies by handle, as an admin reads
//! them) and `iptables-save` (the options of xt matches nft only names).

use std::collections::HashMap;

/// `nft -a list ruleset` text: rule bodies by (family, table, chain, handle).
pub(super) fn parse_text(text: &str) -> HashMap<(String, String, String, u64), String> {
    let mut out = HashMap::new();
    let (mut family, mut table, mut chain) = (String::new(), String::new(), String::new());
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            let mut w = rest.split_whitespace();
            family = w.next().unwrap_or("").into();
            table = w.next().unwrap_or("").into();
        } else if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().unwrap_or("").into();
        } else if let Some((body, handle)) = t.rsplit_once("# handle ") {
            if let Ok(h) = handle.trim().parse::<u64>() {
                let body = strip_counters(body.trim());
                out.insert((family.clone(), table.clone(), chain.clone(), h), body);
            }
        }
    }
    out
}

/// "counter packets 3 bytes 180" changes every run; drop the numbers.
fn strip_counters(body: &str) -> String {
    let words: Vec<&str> = body.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "packets" || words[i] == "bytes" {
            i += 2;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

/// `iptables-save` output: the `-A CHAIN ...` lines of each (table, chain), in order — the
/// same order iptables-nft writes the chain's rules in.
pub(super) fn parse_iptables_save(
    text: &str,
    family: &str,
    out: &mut HashMap<(String, String, String), Vec<String>>,
) {
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or("").to_string();
            out.entry((family.to_string(), table.clone(), chain))
                .or_default()
                .push(line.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_save_lines_by_chain() {
        let mut out = HashMap::new();
        parse_iptables_save(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m connlimit --connlimit-above 10 -j REJECT\n-A INPUT -j f2b-x\n-A f2b-x -j RETURN\nCOMMIT\n*nat\n-A INPUT -j ACCEPT\n",
            "ip",
            &mut out,
        );
        let key = |t: &str| ("ip".to_string(), t.to_string(), "INPUT".to_string());
        assert_eq!(out[&key("filter")].len(), 2);
        assert_eq!(out[&key("nat")].len(), 1);
        assert!(out[&key("filter")][0].contains("--connlimit-above 10"));
    }

    #[test]
    fn counters_are_stripped() {
        assert_eq!(
            strip_counters("tcp dport 443 counter packets 3 bytes 180 drop"),
            "tcp dport 443 counter drop"
        );
    }
}
