//! TLS as Cloudflare sees it (`diagnose --hostname`, `agent --hostname`): from the origin
//! itself, a handshake to each watched TLS port with a listener, with the site's hostname as
//! SNI, as the edge makes it under Full and Full (Strict); the chain judged as the edge judges
//! it. The result per port is a [`TlsCheck`]; a failing one becomes a `tls_failure` cause
//! (525 handshake failed, 526 invalid certificate) in [`crate::verdict::tls`].

mod handshake;
mod validate;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::{CertificateDer, UnixTime};

pub use validate::{CertificateInfo, ChainProblem, TrustStores, TrustedBy};

use crate::origin::listeners::Listener;

/// The ports Cloudflare reaches the origin on with HTTPS.
pub const TLS_PORTS: [u16; 6] = [443, 2053, 2083, 2087, 2096, 8443];

/// One handshake's time limit (connect included).
const LIMIT: Duration = Duration::from_secs(5);

/// What the check found on one port for one hostname.
#[derive(Clone, Debug)]
pub struct TlsCheck {
    pub port: u16,
    pub hostname: String,
    /// Where the handshake went (the listener, or this interface's address for a wildcard).
    pub address: Option<SocketAddr>,
    /// Works under Full (Strict): handshake done and certificate valid for the hostname.
    pub ok: bool,
    /// The handshake completed (what Full needs).
    pub handshake_ok: bool,
    pub protocol: Option<&'static str>,
    pub cipher: Option<String>,
    /// The chain the server sent, leaf first.
    pub certificates: Vec<CertificateInfo>,
    /// The leaf is valid for the hostname (None: no certificate seen).
    pub name_matches: Option<bool>,
    /// Which trust store accepted the chain, when one did.
    pub trusted_by: Option<TrustedBy>,
    /// Why the chain is not valid for Full (Strict).
    pub chain_problem: Option<ChainProblem>,
    /// Days until the leaf expires (negative: expired that many days ago).
    pub days_to_expiry: Option<i64>,
    /// Seconds until the leaf expires (negative when expired), for the metric.
    pub expiry_secs: Option<i64>,
    /// What failed: `no_listener`, `tcp_refused`, `timeout`, `alert`, `no_shared_version`,
    /// `no_shared_cipher`, `not_tls`, `closed`, `other`.
    pub failure: Option<&'static str>,
    /// The failure in words.
    pub detail: Option<String>,
    /// The error Cloudflare shows for this: 525 (handshake fails, Full and Strict), 526
    /// (invalid certificate, Strict only), 521 (nothing listens); none when it works.
    pub cloudflare_error: Option<u16>,
}

/// `--hostname` and `--tls-ca`, checked before anything is loaded.
#[derive(Clone)]
pub struct TlsSettings {
    pub hostnames: Vec<String>,
    pub given_roots: Vec<CertificateDer<'static>>,
}

impl TlsSettings {
    pub fn from_args(hostnames: &[String], ca: Option<&Path>) -> Result<Option<Self>> {
        for h in hostnames {
            let valid = !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
                })
                && rustls::pki_types::ServerName::try_from(h.as_str()).is_ok();
            if !valid {
                bail!(
                    "--hostname {}: not a DNS name (give the site's name as visitors type it, e.g. example.com)",
                    crate::ranges::validate::quote(h)
                );
            }
        }
        let given_roots = match ca {
            Some(path) => {
                let text = crate::ranges::validate::read_capped(path)
                    .with_context(|| format!("--tls-ca {}", path.display()))?;
                let certs = validate::pem_certificates(&text);
                if certs.is_empty() {
                    bail!(
                        "--tls-ca {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
                        path.display()
                    );
                }
                certs
            }
            None => Vec::new(),
        };
        if hostnames.is_empty() {
            if ca.is_some() {
                bail!("--tls-ca needs --hostname: the TLS check runs only for a hostname");
            }
            return Ok(None);
        }
        Ok(Some(Self {
            hostnames: hostnames.to_vec(),
            given_roots,
        }))
    }
}

/// The watched TLS ports to check, each with the address to connect to: a listener's own
/// address, or `local` (this interface's address) for a wildcard one. A watched TLS port
/// nothing listens on is checked only when it was asked for by name (`--port`), and then
/// reported as `no_listener`.
pub fn targets(
    watched: &[u16],
    explicit_ports: bool,
    listeners: &[Listener],
    local: &[IpAddr],
) -> Vec<(u16, Option<SocketAddr>)> {
    let mut out = Vec::new();
    for &port in watched.iter().filter(|p| TLS_PORTS.contains(p)) {
        let on_port: Vec<&Listener> = listeners.iter().filter(|l| l.port == port).collect();
        let target = on_port
            .iter()
            .find(|l| !l.addr.is_unspecified() && !l.addr.is_loopback() && l.netns.is_none())
            .map(|l| SocketAddr::new(l.addr, port))
            .or_else(|| {
                on_port.first().map(|l| {
                    let want_v6 = l.addr.is_ipv6();
                    let addr = local
                        .iter()
                        .find(|a| a.is_ipv6() == want_v6)
                        .or(local.first())
                        .copied()
                        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                    SocketAddr::new(addr, port)
                })
            });
        if target.is_some() || explicit_ports {
            out.push((port, target));
        }
    }
    out
}

/// Runs the check for one port and hostname (blocking: up to 5 s).
pub fn check(
    port: u16,
    address: Option<SocketAddr>,
    hostname: &str,
    stores: &TrustStores,
) -> TlsCheck {
    let mut c = TlsCheck {
        port,
        hostname: hostname.to_string(),
        address,
        ok: false,
        handshake_ok: false,
        protocol: None,
        cipher: None,
        certificates: Vec::new(),
        name_matches: None,
        trusted_by: None,
        chain_problem: None,
        days_to_expiry: None,
        expiry_secs: None,
        failure: None,
        detail: None,
        cloudflare_error: None,
    };
    let Some(addr) = address else {
        c.failure = Some("no_listener");
        c.detail = Some(format!("nothing listens on port {port}"));
        c.cloudflare_error = Some(521);
        return c;
    };
    let h = handshake::run(addr, hostname, LIMIT);
    c.certificates = h.chain.iter().filter_map(validate::describe).collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if let Some(leaf) = c.certificates.first() {
        let secs = leaf.not_after_unix - now;
        c.expiry_secs = Some(secs);
        c.days_to_expiry = Some(secs.div_euclid(86_400));
    }
    match h.result {
        Err(f) => {
            c.failure = Some(f.kind());
            c.detail = Some(f.describe());
            c.cloudflare_error = Some(if f == handshake::Failure::Refused {
                521
            } else {
                525
            });
        }
        Ok(agreed) => {
            c.handshake_ok = true;
            c.protocol = Some(agreed.protocol);
            c.cipher = Some(agreed.cipher);
            match stores.judge(&h.chain, hostname, UnixTime::now()) {
                Ok(by) => {
                    c.ok = true;
                    c.trusted_by = Some(by);
                    c.name_matches = Some(true);
                }
                Err(problem) => {
                    // Whether the name matches, apart from the other problem.
                    c.name_matches = (!h.chain.is_empty()).then(|| {
                        problem != ChainProblem::WrongName
                            && name_matches(&c.certificates, hostname)
                    });
                    c.chain_problem = Some(problem);
                    c.cloudflare_error = Some(526);
                }
            }
        }
    }
    c
}

/// Whether the leaf's names cover `hostname` (one `*.` label allowed), for the report when
/// another problem made the verifier stop first.
fn name_matches(certs: &[CertificateInfo], hostname: &str) -> bool {
    let Some(leaf) = certs.first() else {
        return false;
    };
    let host = hostname.to_ascii_lowercase();
    leaf.sans.iter().any(|san| {
        let san = san.to_ascii_lowercase();
        match san.strip_prefix("*.") {
            Some(rest) => host
                .split_once('.')
                .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
            None => san == host,
        }
    })
}

impl TlsCheck {
    /// One line for the text report: "443: TLS 1.3, certificate for example.com valid until
    /// 2027-03-01, chain OK for Full (Strict)".
    pub fn line(&self) -> String {
        let p = self.port;
        let leaf = self.certificates.first();
        let until = leaf
            .map(|l| l.not_after.get(..10).unwrap_or(&l.not_after).to_string())
            .unwrap_or_default();
        if self.ok {
            let by = match self.trusted_by {
                Some(TrustedBy::CloudflareOriginCa) => " (Cloudflare Origin CA)",
                Some(TrustedBy::GivenCa) => " (the CA given with --tls-ca)",
                _ => "",
            };
            return format!(
                "{p}: {}, certificate for {} valid until {until}{by}, chain OK for Full (Strict)",
                self.protocol.unwrap_or("TLS"),
                self.hostname
            );
        }
        if let Some(problem) = &self.chain_problem {
            let what = match (problem, self.days_to_expiry) {
                (ChainProblem::Expired, Some(d)) => {
                    format!("certificate expired {} days ago", -d)
                }
                (ChainProblem::WrongName, _) => format!(
                    "certificate is not valid for {} (it names {})",
                    self.hostname,
                    leaf.map(|l| l.sans.join(", ")).unwrap_or_default()
                ),
                (p, _) => p.describe().trim_start_matches("the ").to_string(),
            };
            return format!(
                "{p}: {what} → Cloudflare shows 526 under Full (Strict); Full still connects ({})",
                self.protocol.unwrap_or("TLS")
            );
        }
        format!(
            "{p}: TLS handshake for {} failed: {} → Cloudflare shows {} under Full and Full (Strict)",
            self.hostname,
            self.detail.as_deref().unwrap_or("unknown"),
            self.cloudflare_error.unwrap_or(525)
        )
    }
}

/// What the TLS check needs of a window's report.
pub struct TlsTargets<'a> {
    pub ports: &'a [u16],
    pub listeners: &'a [crate::origin::listeners::Listener],
}

/// Every watched TLS port with a listener, for every hostname (blocking).
pub fn check_targets(
    tls: &TlsSettings,
    view: &TlsTargets<'_>,
    iface: &str,
    explicit_ports: bool,
) -> Vec<TlsCheck> {
    let stores = TrustStores::load(tls.given_roots.clone());
    let local = crate::sys::netinfo::addresses(iface);
    let targets = targets(view.ports, explicit_ports, view.listeners, &local);
    let mut out = Vec::new();
    for host in &tls.hostnames {
        for (port, addr) in &targets {
            out.push(check(*port, *addr, host, &stores));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str, port: u16) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            port,
            accept_queue: 0,
            backlog: Some(128),
            netns: None,
            container: None,
            pid: None,
            comm: None,
            role: None,
            inode: None,
            overflows: None,
        }
    }

    #[test]
    fn tls_ports_with_listeners_are_checked_at_a_reachable_address() {
        let local = ["192.0.2.1".parse().unwrap()];
        let listeners = [listener("0.0.0.0", 443), listener("0.0.0.0", 80)];
        let t = targets(&[80, 443, 8443], false, &listeners, &local);
        assert_eq!(t, vec![(443, Some("192.0.2.1:443".parse().unwrap()))]);
        // Asked for by name: a port with no listener is reported as such.
        let t = targets(&[443, 8443], true, &listeners, &local);
        assert_eq!(t[1], (8443, None));
        // A listener on a specific address is checked there.
        let t = targets(&[443], false, &[listener("198.51.100.7", 443)], &local);
        assert_eq!(t[0].1, Some("198.51.100.7:443".parse().unwrap()));
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(TlsSettings::from_args(&["example.com".into()], None).is_ok());
        assert!(TlsSettings::from_args(&["exa mple.com".into()], None).is_err());
        assert!(TlsSettings::from_args(&["".into()], None).is_err());
        assert!(TlsSettings::from_args(&[], None).unwrap().is_none());
    }

    #[test]
    fn wildcards_cover_one_label() {
        let cert = CertificateInfo {
            subject: String::new(),
            sans: vec!["*.example.com".into(), "example.com".into()],
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            not_after_unix: 0,
        };
        let certs = [cert];
        assert!(name_matches(&certs, "www.example.com"));
        assert!(name_matches(&certs, "example.com"));
        assert!(!name_matches(&certs, "a.b.example.com"));
        assert!(!name_matches(&certs, "example.org"));
    }
}
