//! The recorded chain judged as Cloudflare's edge judges it under Full (Strict): valid now,
//! for the hostname, issued by a publicly trusted CA (the system's roots), by Cloudflare's
//! Origin CA (shipped here: browsers do not trust it, the edge does), or by a CA the admin
//! gave (`--tls-ca`, as Cloudflare's custom origin trust store). And each certificate
//! described for the report.

use std::sync::Arc;

use rustls::{
    client::{danger::ServerCertVerifier as _, WebPkiServerVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    CertificateError, RootCertStore,
};

/// Cloudflare's Origin CA roots (ECC and RSA, valid until 2029-08-15), as Cloudflare
/// publishes them at developers.cloudflare.com/ssl/static/origin_ca_{ecc,rsa}_root.pem.
const ORIGIN_CA_PEM: &str = include_str!("cloudflare-origin-ca.pem");

/// Which trust store accepted the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustedBy {
    /// A publicly trusted CA (this system's roots).
    System,
    /// Cloudflare's Origin CA: valid for Full (Strict), not for browsers.
    CloudflareOriginCa,
    /// A CA given with --tls-ca.
    GivenCa,
}

/// Why the chain is not valid for Full (Strict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainProblem {
    Expired,
    NotYetValid,
    WrongName,
    /// Self-signed, or issued by a CA no trust store knows.
    UntrustedIssuer,
    NoCertificate,
    Invalid,
}

impl TrustedBy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::CloudflareOriginCa => "cloudflare_origin_ca",
            Self::GivenCa => "given_ca",
        }
    }
}

impl ChainProblem {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongName => "wrong_name",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::NoCertificate => "no_certificate",
            Self::Invalid => "invalid",
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Self::Expired => "the certificate has expired",
            Self::NotYetValid => "the certificate is not valid yet (check the server's clock)",
            Self::WrongName => "the certificate is not valid for this hostname",
            Self::UntrustedIssuer => {
                "the certificate is self-signed or issued by a CA Cloudflare does not trust"
            }
            Self::NoCertificate => "the server sent no certificate",
            Self::Invalid => "the certificate chain is invalid",
        }
    }
}

/// The roots each judgement uses.
pub struct TrustStores {
    stores: Vec<(TrustedBy, Arc<RootCertStore>)>,
}

fn store_of(certs: impl IntoIterator<Item = CertificateDer<'static>>) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in certs {
        let _ = store.add(c);
    }
    Arc::new(store)
}

/// Certificates in PEM text (other text between them is ignored).
pub fn pem_certificates(text: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(text.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

impl TrustStores {
    /// The system's roots (what rustls-native-certs finds: the distribution's bundle), the
    /// Origin CA, and `given` (PEM certificates from --tls-ca).
    pub fn load(given: Vec<CertificateDer<'static>>) -> Self {
        let system = rustls_native_certs::load_native_certs().certs;
        let mut stores = vec![
            (TrustedBy::System, store_of(system)),
            (
                TrustedBy::CloudflareOriginCa,
                store_of(pem_certificates(ORIGIN_CA_PEM)),
            ),
        ];
        if !given.is_empty() {
            stores.push((TrustedBy::GivenCa, store_of(given)));
        }
        Self { stores }
    }

    /// The first store that accepts the chain for `hostname` at `now`, or the most telling
    /// problem (a wrong name or an expiry beats an unknown issuer: it is what to fix).
    pub fn judge(
        &self,
        chain: &[CertificateDer<'static>],
        hostname: &str,
        now: UnixTime,
    ) -> Result<TrustedBy, ChainProblem> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(ChainProblem::NoCertificate);
        };
        let Ok(name) = ServerName::try_from(hostname.to_string()) else {
            return Err(ChainProblem::WrongName);
        };
        let provider = super::handshake::provider();
        let mut worst = ChainProblem::UntrustedIssuer;
        for (by, roots) in &self.stores {
            if roots.is_empty() {
                continue;
            }
            let Ok(verifier) =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
            else {
                continue;
            };
            match verifier.verify_server_cert(leaf, intermediates, &name, &[], now) {
                Ok(_) => return Ok(*by),
                Err(rustls::Error::InvalidCertificate(e)) => {
                    let problem = match e {
                        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                            ChainProblem::Expired
                        }
                        CertificateError::NotValidYet
                        | CertificateError::NotValidYetContext { .. } => ChainProblem::NotYetValid,
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. } => {
                            ChainProblem::WrongName
                        }
                        CertificateError::UnknownIssuer => ChainProblem::UntrustedIssuer,
                        _ => ChainProblem::Invalid,
                    };
                    if problem != ChainProblem::UntrustedIssuer {
                        worst = problem;
                    }
                }
                Err(_) => worst = ChainProblem::Invalid,
            }
        }
        // A self-signed leaf (often marked as a CA, which webpki refuses as a leaf) is an
        // issuer nobody trusts, whatever else the verifier stopped at first.
        if worst == ChainProblem::Invalid && describe(leaf).is_some_and(|l| l.subject == l.issuer) {
            worst = ChainProblem::UntrustedIssuer;
        }
        Err(worst)
    }
}

/// One certificate of the chain, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    /// DNS names (and IP addresses) it is valid for.
    pub sans: Vec<String>,
    pub issuer: String,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    /// Unix seconds of not_after, for the expiry.
    pub not_after_unix: i64,
}

pub fn describe(cert: &CertificateDer<'_>) -> Option<CertificateInfo> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans = x
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let time = |t: ASN1Time| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64),
        )
        .to_string()
    };
    Some(CertificateInfo {
        subject: x.subject().to_string(),
        sans,
        issuer: x.issuer().to_string(),
        not_before: time(x.validity().not_before),
        not_after: time(x.validity().not_after),
        not_after_unix: x.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_ca_roots_load() {
        let roots = pem_certificates(ORIGIN_CA_PEM);
        assert_eq!(roots.len(), 2);
        for r in &roots {
            let info = describe(r).unwrap();
            assert!(info.issuer.contains("CloudFlare Origin SSL"), "{info:?}");
            assert_eq!(info.subject, info.issuer, "a root is self-issued");
            assert!(info.not_after.starts_with("2029-08-15"), "{info:?}");
        }
        let stores = TrustStores::load(Vec::new());
        assert!(stores
            .stores
            .iter()
            .any(|(by, s)| *by == TrustedBy::CloudflareOriginCa && s.len() == 2));
    }

    #[test]
    fn an_empty_chain_is_no_certificate() {
        let stores = TrustStores::load(Vec::new());
        assert_eq!(
            stores.judge(&[], "example.com", UnixTime::now()),
            Err(ChainProblem::NoCertificate)
        );
    }
}
