//! Which certificates the range refresh trusts: the system's store, as the TLS check and
//! every other client on the origin use it — a TLS-inspecting proxy's root installed there
//! works for both or neither. A system without a store (a minimal container image) falls back
//! to the roots built into the binary, and says so once.

use std::sync::{Arc, Once};

use anyhow::{anyhow, Result};
use rustls::{ClientConfig, RootCertStore};

/// The roots to verify Cloudflare's API with, and where they came from.
pub fn roots() -> (RootCertStore, &'static str) {
    let mut store = RootCertStore::empty();
    let (added, _) =
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added > 0 {
        return (store, "system");
    }
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    (store, "built-in")
}

/// The TLS client configuration of the range refresh.
pub fn client_config() -> Result<ClientConfig> {
    let (store, source) = roots();
    if source == "built-in" {
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            tracing::warn!(
                "no system CA certificates found (install ca-certificates, or mount /etc/ssl/certs): the range refresh trusts the roots built into tracer"
            );
        });
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS configuration: {e}"))
        .map(|b| b.with_root_certificates(store).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_store_is_used_where_there_is_one() {
        // This machine has Debian's ca-certificates: the refresh must trust exactly those,
        // not the bundle compiled in.
        let system = rustls_native_certs::load_native_certs().certs.len();
        let (store, source) = roots();
        if system > 0 {
            assert_eq!(source, "system");
            assert!(store.len() <= system && !store.is_empty());
        } else {
            assert_eq!(source, "built-in");
            assert_eq!(store.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        }
        assert!(client_config().is_ok());
    }
}
