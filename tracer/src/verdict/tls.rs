//! TLS check results into the report: a `tls_failure` cause for each failing port, with the
//! error Cloudflare shows (525 handshake, 526 certificate), its evidence and the fix. When the
//! TCP-level verdict is healthy (or nothing arrived during the window), a failing check is the
//! verdict: the connections work and the handshake on them does not.

use super::{Cause, Verdict};
use crate::tls::{ChainProblem, TlsCheck};

/// Adds a cause for each failing check on a `judged` port to the window's verdict and causes;
/// a failing check on another port (a control panel on 2083 the edge never reached) is a note:
/// it is not what Cloudflare's visitors meet, and must not page anyone. The view carries the
/// checks themselves.
pub fn apply(
    verdict: &mut Verdict,
    causes_now: &mut Vec<Cause>,
    notes: &mut Vec<String>,
    checks: &[TlsCheck],
    judged: &[u16],
) {
    let (failing, elsewhere): (Vec<&TlsCheck>, Vec<&TlsCheck>) = checks
        .iter()
        .filter(|c| !c.ok && c.failure != Some("no_listener"))
        .partition(|c| judged.contains(&c.port));
    for c in elsewhere {
        notes.push(format!(
            "{} — not judged: the edge reached no connection to port {} in this window (name the port with --port to judge it)",
            c.line(),
            c.port
        ));
    }
    let mut causes: Vec<Cause> = failing.iter().map(|c| cause_of(c)).collect();
    // 525 first: the handshake fails under both modes.
    causes.sort_by_key(|c| std::cmp::Reverse(c.cloudflare_error == Some(525)));
    if !causes.is_empty() && matches!(*verdict, Verdict::Healthy | Verdict::NeverArriving) {
        *verdict = Verdict::TlsFailure;
        let mut all = causes;
        // The TCP-level finding stays as a secondary cause (it says what did arrive).
        all.append(causes_now);
        *causes_now = all;
    } else {
        causes_now.append(&mut causes);
    }
}

fn cause_of(c: &TlsCheck) -> Cause {
    let mut evidence = vec![c.line()];
    if let Some(leaf) = c.certificates.first() {
        evidence.push(format!(
            "certificate: subject {}; names {}; issuer {}; valid {} to {}",
            leaf.subject,
            if leaf.sans.is_empty() {
                "none".to_string()
            } else {
                leaf.sans.join(", ")
            },
            leaf.issuer,
            leaf.not_before,
            leaf.not_after
        ));
    }
    if let Some(addr) = c.address {
        evidence.push(format!(
            "checked from this host: TLS to {addr} with SNI {}, TLS 1.2/1.3 and the edge's AEAD suites, as Cloudflare connects",
            c.hostname
        ));
    }
    let host = &c.hostname;
    let port = c.port;
    let next: Vec<String> = match (&c.chain_problem, c.failure) {
        (Some(ChainProblem::Expired), _) => vec![
            format!("Renew the certificate for {host} and reload the server (certbot: `certbot renew`, then reload nginx/Apache)."),
            "Or install a Cloudflare Origin CA certificate (SSL/TLS → Origin Server → Create Certificate): valid up to 15 years and trusted by Cloudflare under Full (Strict).".into(),
        ],
        (Some(ChainProblem::WrongName), _) => vec![
            format!("Serve a certificate whose names include {host} on port {port} (check the server block / virtual host that answers SNI {host})."),
            format!("Check it: openssl s_client -connect 127.0.0.1:{port} -servername {host} </dev/null | openssl x509 -noout -subject -ext subjectAltName"),
        ],
        (Some(ChainProblem::UntrustedIssuer), _) => vec![
            format!("Install a certificate for {host} from a public CA (Let's Encrypt: `certbot --nginx -d {host}`) or a Cloudflare Origin CA certificate (SSL/TLS → Origin Server → Create Certificate)."),
            "Or, if this CA is meant to be trusted, add it to Cloudflare's custom origin trust store; meanwhile Cloudflare's Full mode (not Strict) connects.".into(),
        ],
        (Some(ChainProblem::NotYetValid), _) => vec![
            "Check this host's clock (`timedatectl`), and the certificate's start date.".into(),
        ],
        (Some(_), _) => vec![format!("Install a valid certificate chain for {host} (leaf first, then the intermediates).")],
        (None, Some("no_shared_version")) => vec![
            "Enable TLS 1.2 and 1.3 on the server: nginx `ssl_protocols TLSv1.2 TLSv1.3;`, Apache `SSLProtocol -all +TLSv1.2 +TLSv1.3`; Cloudflare's edge does not connect with TLS 1.0 or 1.1.".into(),
        ],
        (None, Some("no_shared_cipher")) => vec![
            "Offer ECDHE suites with AES-GCM or ChaCha20 (nginx: `ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;`).".into(),
        ],
        (None, Some("not_tls")) => vec![
            format!("Port {port} answers plain HTTP: enable TLS there (nginx `listen {port} ssl;` with a certificate), or set Cloudflare's SSL/TLS mode to Flexible only if the origin really has no TLS (not recommended)."),
        ],
        (None, Some("tcp_refused")) => vec![format!("Nothing accepts connections on port {port}: start the server or fix its listen directive.")],
        (None, Some("timeout")) => vec![format!("The server accepts TCP on port {port} but does not answer the TLS handshake within 5 s: check it is not overloaded, and that TLS is configured on that port.")],
        _ => vec![format!("Check the server's TLS configuration on port {port}: openssl s_client -connect 127.0.0.1:{port} -servername {host} -tls1_2")],
    };
    let mut cause = Cause::new(Verdict::TlsFailure, 0, evidence, next);
    cause.cloudflare_error = c.cloudflare_error;
    cause
}

/// Edge handshakes on TLS ports that the origin reset or closed within a second: what a
/// failing TLS handshake looks like from the kernel (the alert, then the close). Said on the
/// primary cause, with the check that would tell, when it is most of the handshakes.
pub fn quick_close_hint(
    causes: &mut [Cause],
    quick_closes: &std::collections::BTreeMap<u16, u64>,
    handshakes: u64,
) {
    let tls: Vec<(u16, u64)> = quick_closes
        .iter()
        .filter(|(p, n)| crate::tls::TLS_PORTS.contains(p) && **n >= 3)
        .map(|(p, n)| (*p, *n))
        .collect();
    let total: u64 = tls.iter().map(|(_, n)| n).sum();
    let Some(first) = causes.first_mut() else {
        return;
    };
    if tls.is_empty() || total * 2 < handshakes {
        return;
    }
    let ports: Vec<String> = tls.iter().map(|(p, n)| format!("{n} on {p}")).collect();
    first.evidence.push(format!(
        "edge handshakes the origin reset or closed within a second of the SYN ({}): the pattern a failing TLS handshake leaves (the server's alert, then its close)",
        ports.join(", ")
    ));
    first.next_steps.push(
        "Check TLS as Cloudflare sees it: run again with --hostname YOUR.SITE (the certificate, its expiry and name, the protocol; 525/526 under Full and Full (Strict))."
            .into(),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn cause(v: Verdict) -> Cause {
        Cause::new(v, 3, vec!["e".into()], vec!["n".into()])
    }

    #[test]
    fn most_handshakes_closed_at_once_on_443_suggest_the_check() {
        let mut causes = vec![cause(Verdict::Healthy)];
        quick_close_hint(&mut causes, &BTreeMap::from([(443, 4)]), 5);
        assert!(causes[0].evidence[1].contains("4 on 443"));
        assert!(causes[0].next_steps[1].contains("--hostname"));
        // A few, or on a plain HTTP port, or a minority: nothing said.
        for (closes, handshakes) in [
            (BTreeMap::from([(443, 2)]), 2),
            (BTreeMap::from([(80, 9)]), 9),
            (BTreeMap::from([(443, 3)]), 10),
        ] {
            let mut causes = vec![cause(Verdict::Healthy)];
            quick_close_hint(&mut causes, &closes, handshakes);
            assert_eq!(causes[0].evidence.len(), 1, "{closes:?} of {handshakes}");
        }
    }

    fn self_signed(port: u16) -> TlsCheck {
        TlsCheck {
            port,
            hostname: "example.test".into(),
            address: Some(([192, 0, 2, 1], port).into()),
            ok: false,
            handshake_ok: true,
            protocol: Some("TLSv1.3"),
            cipher: None,
            certificates: Vec::new(),
            name_matches: Some(true),
            trusted_by: None,
            chain_problem: Some(ChainProblem::UntrustedIssuer),
            days_to_expiry: Some(30),
            expiry_secs: None,
            failure: None,
            detail: None,
            cloudflare_error: Some(526),
        }
    }

    /// A self-signed panel on 2096 the edge never reached is a note, not a `tls_failure`; the
    /// same check on a port the edge reached (or named with --port) is the verdict.
    #[test]
    fn only_ports_the_edge_reached_are_judged() {
        let healthy = || Cause::new(Verdict::Healthy, 5, Vec::new(), Vec::new());
        let (mut verdict, mut causes, mut notes) = (Verdict::Healthy, vec![healthy()], Vec::new());
        apply(
            &mut verdict,
            &mut causes,
            &mut notes,
            &[self_signed(2096)],
            &[443],
        );
        assert_eq!(verdict, Verdict::Healthy);
        assert_eq!(causes.len(), 1);
        assert!(
            notes[0].contains("not judged") && notes[0].contains("2096"),
            "{notes:?}"
        );
        let (mut verdict, mut causes, mut notes) = (Verdict::Healthy, vec![healthy()], Vec::new());
        apply(
            &mut verdict,
            &mut causes,
            &mut notes,
            &[self_signed(2096)],
            &[443, 2096],
        );
        assert_eq!(verdict, Verdict::TlsFailure);
        assert_eq!(causes[0].cloudflare_error, Some(526));
        assert!(notes.is_empty());
    }
}
