//! Who wrote a rule: firewall managers name their tables, chains and sets in ways of their
//! own, so the fix can be given in the manager's terms (its command, its jail or zone) instead
//! of a raw nft rule it would overwrite on its next reload.

/// The tool that owns a table, chain or set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// fail2ban: `f2b-<jail>` chains (iptables actions), `addr-set-<jail>` sets in `f2b-table`
    /// (nftables action).
    Fail2ban { jail: Option<String> },
    /// ufw: `ufw-*` / `ufw6-*` chains.
    Ufw,
    /// firewalld: `table inet firewalld`; zones in chain names (`filter_IN_public_deny`).
    Firewalld { zone: Option<String> },
    /// Docker: `DOCKER*` chains; admins filter in DOCKER-USER.
    Docker,
    /// CrowdSec's firewall bouncer: `crowdsec*` tables, chains and sets.
    Crowdsec,
}

impl Owner {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fail2ban { .. } => "fail2ban",
            Self::Ufw => "ufw",
            Self::Firewalld { .. } => "firewalld",
            Self::Docker => "Docker",
            Self::Crowdsec => "CrowdSec",
        }
    }

    /// "fail2ban (jail nginx-http-auth)", "firewalld (zone public)".
    pub fn describe(&self) -> String {
        match self {
            Self::Fail2ban { jail: Some(j) } => format!("fail2ban (jail {j})"),
            Self::Firewalld { zone: Some(z) } => format!("firewalld (zone {z})"),
            other => other.name().to_string(),
        }
    }
}

/// The owner a table, a chain or a set name shows, most specific first.
pub fn owner_of(table: &str, chain: &str, set: Option<&str>) -> Option<Owner> {
    if let Some(set) = set {
        if let Some(jail) = set.strip_prefix("addr-set-") {
            return Some(Owner::Fail2ban {
                jail: Some(jail.to_string()),
            });
        }
        if set.starts_with("crowdsec") {
            return Some(Owner::Crowdsec);
        }
    }
    if let Some(jail) = chain.strip_prefix("f2b-") {
        let jail = (jail != "chain").then(|| jail.to_string());
        return Some(Owner::Fail2ban { jail });
    }
    if table.starts_with("f2b-") {
        return Some(Owner::Fail2ban { jail: None });
    }
    if chain.starts_with("ufw-") || chain.starts_with("ufw6-") {
        return Some(Owner::Ufw);
    }
    if table == "firewalld" {
        return Some(Owner::Firewalld {
            zone: firewalld_zone(chain),
        });
    }
    if chain.starts_with("DOCKER") {
        return Some(Owner::Docker);
    }
    let lower = chain.to_ascii_lowercase();
    if table.starts_with("crowdsec") || lower.starts_with("crowdsec") {
        return Some(Owner::Crowdsec);
    }
    None
}

/// The zone in a firewalld chain name: `filter_IN_public_deny` -> public (firewalld ≥ 0.6
/// names zone chains `filter_IN_<zone>[_allow|_deny|_log|_pre|_post]`).
fn firewalld_zone(chain: &str) -> Option<String> {
    let rest = chain.strip_prefix("filter_IN_")?;
    let zone = ["_allow", "_deny", "_log", "_pre", "_post"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
    (!zone.is_empty()).then(|| zone.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_by_name() {
        assert_eq!(
            owner_of("filter", "f2b-nginx-http-auth", None),
            Some(Owner::Fail2ban {
                jail: Some("nginx-http-auth".into())
            })
        );
        assert_eq!(
            owner_of("f2b-table", "f2b-chain", Some("addr-set-sshd")),
            Some(Owner::Fail2ban {
                jail: Some("sshd".into())
            })
        );
        assert_eq!(
            owner_of("f2b-table", "f2b-chain", None),
            Some(Owner::Fail2ban { jail: None })
        );
        assert_eq!(owner_of("filter", "ufw-user-input", None), Some(Owner::Ufw));
        assert_eq!(
            owner_of("firewalld", "filter_IN_public_deny", None),
            Some(Owner::Firewalld {
                zone: Some("public".into())
            })
        );
        assert_eq!(
            owner_of("firewalld", "filter_INPUT", None),
            Some(Owner::Firewalld { zone: None })
        );
        assert_eq!(owner_of("filter", "DOCKER-USER", None), Some(Owner::Docker));
        assert_eq!(
            owner_of("crowdsec", "crowdsec-chain", Some("crowdsec-blacklists")),
            Some(Owner::Crowdsec)
        );
        assert_eq!(
            owner_of("filter", "CROWDSEC_CHAIN", None),
            Some(Owner::Crowdsec)
        );
        assert_eq!(owner_of("filter", "INPUT", None), None);
    }
}
