//! `--web.config.file`: TLS and basic authentication for the agent's endpoint, in the
//! exporter-toolkit format node_exporter and the other Prometheus exporters read, so one file
//! and one habit serve the whole fleet:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/cf521-tracer/tls.crt     # relative paths: to this file's directory
//!   key_file: /etc/cf521-tracer/tls.key
//!   client_ca_file: ca.crt                   # with client_auth_type
//!   client_auth_type: RequireAndVerifyClientCert
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...                   # bcrypt (htpasswd -nBC 10 prometheus)
//! ```
//!
//! Everything is checked at start, each problem one line naming the fix. The certificate and
//! key are read again when their files change (cert-manager, certbot renewals), at most once
//! a second; a renewal that does not load keeps the previous pair and says so.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use serde::Deserialize;

/// Config, certificate and key files are small: anything larger is a mistake.
const MAX_FILE: u64 = 1 << 20;
/// A renewed certificate is looked for at most this often.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    tls_server_config: Option<TlsFormat>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFormat {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    min_version: Option<String>,
}

/// The endpoint's TLS and users, as `--web.config.file` set them.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    users: BTreeMap<String, String>,
    /// SHA-256 of the last `user:password` each user passed with: bcrypt costs tens of
    /// milliseconds, and Prometheus sends the same credentials every scrape.
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

/// Reads a file named by the config (following symlinks: certbot's live/ files are links),
/// only a regular file and at most [`MAX_FILE`] bytes.
fn read_small(path: &Path, what: &str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("the {what} {} is not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        bail!("the {what} {} is larger than 1 MiB", path.display());
    }
    Ok(bytes)
}

/// The certificate chain and key of `cert` and `key`, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read_small(cert, "certificate file")?)
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() {
        bail!(
            "the certificate file {} holds no PEM certificate",
            cert.display()
        );
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read_small(key, "key file")?).map_err(|_| {
        anyhow!(
            "the key file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| anyhow!("the key in {} cannot sign: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        anyhow!(
            "the key in {} does not belong to the certificate in {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

/// Serves the certificate, reading it again when its files change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    mtimes: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().ok()?;
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            let now = mtimes(&self.cert, &self.key);
            if now.is_some() && now != s.mtimes {
                s.mtimes = now;
                match certified_key(&self.cert, &self.key) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "the endpoint's certificate changed: serving the new one");
                        s.key = Arc::new(k);
                    }
                    Err(e) => tracing::warn!(
                        "the endpoint's certificate changed but does not load ({e:#}): still serving the previous one"
                    ),
                }
            }
        }
        Some(s.key.clone())
    }
}

fn tls_config(t: &TlsFormat, dir: &Path) -> Result<ServerConfig> {
    let (cert, key) = (dir.join(&t.cert_file), dir.join(&t.key_file));
    let loaded = certified_key(&cert, &key)?;
    let resolver = Reloading {
        cert: cert.clone(),
        key: key.clone(),
        state: Mutex::new(Loaded {
            key: Arc::new(loaded),
            mtimes: mtimes(&cert, &key),
            checked: Instant::now(),
        }),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(v) => {
            bail!("tls_server_config.min_version {v}: this endpoint speaks TLS12 and TLS13 only")
        }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| anyhow!("TLS configuration: {e}"))?;
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match (auth, &t.client_ca_file) {
        ("NoClientCert", None) => builder.with_no_client_auth(),
        ("NoClientCert", Some(_)) => bail!(
            "tls_server_config.client_ca_file is set but client_auth_type is NoClientCert: set client_auth_type to RequireAndVerifyClientCert or VerifyClientCertIfGiven"
        ),
        ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", Some(ca)) => {
            let ca = dir.join(ca);
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(
                CertificateDer::pem_slice_iter(&read_small(&ca, "client CA file")?)
                    .filter_map(Result::ok),
            );
            if added == 0 {
                bail!("the client CA file {} holds no usable PEM certificate", ca.display());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| anyhow!("the client CA file {}: {e}", ca.display()))?,
            )
        }
        ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", None) => {
            bail!("tls_server_config.client_auth_type {auth} needs client_ca_file")
        }
        (other, _) => bail!(
            "tls_server_config.client_auth_type {other}: use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        ),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A bcrypt hash as htpasswd and the exporter-toolkit write it.
fn check_hash(user: &str, hash: &str) -> Result<()> {
    if user.is_empty() || user.contains(':') {
        bail!("basic_auth_users: the user name {user:?} is empty or holds a colon");
    }
    hash.parse::<bcrypt::HashParts>().map_err(|_| {
        anyhow!(
            "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 {user}`, the part after the colon)"
        )
    })?;
    Ok(())
}

impl WebConfig {
    /// No TLS, no users: what the endpoint is without `--web.config.file`.
    pub fn open() -> Self {
        Self {
            tls: None,
            users: BTreeMap::new(),
            verified: Mutex::default(),
        }
    }

    /// Reads and checks `path`; every problem is one line naming the fix.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_small(path, "web config")?;
        let file: FileFormat = if text.iter().all(u8::is_ascii_whitespace) {
            FileFormat::default()
        } else {
            serde_norway::from_slice(&text).map_err(|e| {
                anyhow!(
                    "{}: {} (the exporter-toolkit format: tls_server_config, basic_auth_users)",
                    path.display(),
                    e.to_string().replace('\n', " ")
                )
            })?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = match &file.tls_server_config {
            Some(t) => Some(Arc::new(
                tls_config(t, dir).with_context(|| path.display().to_string())?,
            )),
            None => None,
        };
        for (user, hash) in &file.basic_auth_users {
            check_hash(user, hash).with_context(|| path.display().to_string())?;
        }
        Ok(Self {
            tls,
            users: file.basic_auth_users,
            verified: Mutex::default(),
        })
    }

    pub fn asks_password(&self) -> bool {
        !self.users.is_empty()
    }

    /// Does the request's `Authorization` header carry a configured user's password? (Always
    /// when no users are configured.) Slow on a cache miss: run it off the async threads.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let digest = sha256(&user, &password);
        if let Ok(v) = self.verified.lock() {
            if v.get(&user).is_some_and(|d| *d == digest) {
                return true;
            }
        }
        // An unknown user costs as much as a known one: the time tells no names.
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.as_str(), true),
            None => (self.users.values().next().map_or("", String::as_str), false),
        };
        let ok = bcrypt::verify(&password, hash).unwrap_or(false) && known;
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                v.insert(user, digest);
            }
        }
        ok
    }
}

fn sha256(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(b":");
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, value) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/output/testdata/web")
    }

    /// A config file written next to the test certificates (relative paths resolve there).
    fn config(name: &str, text: &str) -> Result<WebConfig> {
        let dir = std::env::temp_dir().join(format!("t521-web-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["server.crt", "server.key", "other.key"] {
            std::fs::copy(testdata().join(f), dir.join(f)).unwrap();
        }
        let path = dir.join("web.yml");
        std::fs::write(&path, text).unwrap();
        let c = WebConfig::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        c
    }

    fn err(name: &str, text: &str) -> String {
        match config(name, text) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn tls_and_users_load() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let c = config(
            "ok",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\nbasic_auth_users:\n  prometheus: {hash}\n"
            ),
        )
        .unwrap();
        assert!(c.tls.is_some() && c.asks_password());
        // An empty file is no TLS and no users, as node_exporter reads it.
        let c = config("empty", "\n").unwrap();
        assert!(c.tls.is_none() && !c.asks_password());
    }

    #[test]
    fn each_mistake_is_one_line_naming_the_fix() {
        for (name, text, wanted) in [
            ("unknown", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [x]\n", "unknown field `cipher_suites`"),
            ("typo", "basic_auth_user:\n  a: b\n", "unknown field `basic_auth_user`"),
            ("missing", "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n", "cannot read the certificate file"),
            ("mismatch", "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n", "does not belong to the certificate"),
            ("notpem", "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n", "holds no PEM certificate"),
            ("version", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS11\n", "TLS12 and TLS13 only"),
            ("noca", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
            ("authtype", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Maybe\n", "use NoClientCert"),
            ("plain", "basic_auth_users:\n  prometheus: hunter2\n", "htpasswd -nBC 10 prometheus"),
            ("colon", "basic_auth_users:\n  \"a:b\": $2y$04$abcdefghijklmnopqrstuu5EqyVB3bUfNjb5DGH8NzQOGZkqD.mOi\n", "holds a colon"),
        ] {
            let e = err(name, text);
            assert!(e.contains(wanted), "{name}: {e}");
            assert!(!e.contains('\n'), "{name}: more than one line: {e}");
        }
    }

    #[test]
    fn passwords_are_checked_and_remembered() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let c = config(
            "users",
            &format!("basic_auth_users:\n  prometheus: {hash}\n"),
        )
        .unwrap();
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(!c.authorized(None));
        assert!(!c.authorized(Some(b"Bearer abc")));
        assert!(!c.authorized(Some(basic("prometheus", "wrong").as_bytes())));
        assert!(!c.authorized(Some(basic("nobody", "s3cret").as_bytes())));
        assert!(c.authorized(Some(basic("prometheus", "s3cret").as_bytes())));
        // Remembered: the second check is a digest compare, and a wrong password still fails.
        assert!(c.verified.lock().unwrap().contains_key("prometheus"));
        assert!(c.authorized(Some(basic("prometheus", "s3cret").as_bytes())));
        assert!(!c.authorized(Some(basic("prometheus", "s3cret2").as_bytes())));
        // Without users, every request passes.
        assert!(WebConfig::open().authorized(None));
    }

    #[test]
    fn basic_credentials_parse() {
        assert_eq!(
            basic_credentials(b"Basic dTpwOnE="),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(basic_credentials(b"Digest dTpw"), None);
        assert_eq!(
            basic_credentials(b"basic   dTpw"),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(basic_credentials(b"Basic !!!"), None);
    }
}
