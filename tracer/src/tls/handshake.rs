//! One TLS handshake as Cloudflare's edge makes it to the origin: TLS 1.2 or 1.3, the AEAD
//! suites (ECDHE with AES-GCM or ChaCha20), SNI = the site's hostname. The certificate is
//! recorded, not judged here: Full mode accepts any certificate, Full (Strict) a valid one, so
//! the handshake must complete either way and [`super::validate`] decides afterwards.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
};

/// What the handshake got: the chain and the parameters, or why it failed.
#[derive(Debug)]
pub struct Handshake {
    pub chain: Vec<CertificateDer<'static>>,
    pub result: Result<Agreed, Failure>,
}

#[derive(Debug)]
pub struct Agreed {
    /// "TLS 1.3", "TLS 1.2".
    pub protocol: &'static str,
    /// The IANA name of the suite, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
}

/// Why a handshake did not complete, as the edge would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing accepted the TCP connection (RST): the port is closed there.
    Refused,
    /// No TCP answer, or no TLS answer, within the time limit.
    Timeout,
    /// The server sent a TLS alert (its name, e.g. "ProtocolVersion", "HandshakeFailure").
    Alert(String),
    /// The server accepts none of the protocol versions the edge offers (TLS 1.2, 1.3).
    NoSharedVersion,
    /// The server accepts none of the edge's cipher suites.
    NoSharedCipher,
    /// The server answered something that is not TLS (plain HTTP on a TLS port).
    NotTls,
    /// The server closed the connection during the handshake.
    Closed,
    Other(String),
}

impl Failure {
    /// `kind` in the JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Refused => "tcp_refused",
            Self::Timeout => "timeout",
            Self::Alert(_) => "alert",
            Self::NoSharedVersion => "no_shared_version",
            Self::NoSharedCipher => "no_shared_cipher",
            Self::NotTls => "not_tls",
            Self::Closed => "closed",
            Self::Other(_) => "other",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Refused => "the TCP connection was refused (nothing listens there)".into(),
            Self::Timeout => "no answer within the time limit".into(),
            Self::Alert(a) => format!("the server ended the handshake with the TLS alert {a}"),
            Self::NoSharedVersion => {
                "the server offers no protocol version Cloudflare accepts (TLS 1.2 or 1.3)".into()
            }
            Self::NoSharedCipher => {
                "the server offers no cipher suite Cloudflare's edge uses (ECDHE with AES-GCM or ChaCha20)".into()
            }
            Self::NotTls => "the server answered something that is not TLS (plain HTTP on a TLS port?)".into(),
            Self::Closed => "the server closed the connection during the handshake".into(),
            Self::Other(e) => e.clone(),
        }
    }
}

/// Records the server's chain and accepts it, but still checks the handshake's signatures
/// (the server must hold the certificate's key).
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut c) = self.chain.lock() {
            c.push(end_entity.clone().into_owned());
            c.extend(intermediates.iter().map(|i| i.clone().into_owned()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connects to `addr` and runs the handshake with SNI `hostname`, within `limit` in all.
pub fn run(addr: SocketAddr, hostname: &str, limit: Duration) -> Handshake {
    let provider = provider();
    let recorder = Arc::new(Recorder {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let result = attempt(addr, hostname, limit, provider, recorder.clone());
    let chain = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
    Handshake { chain, result }
}

fn attempt(
    addr: SocketAddr,
    hostname: &str,
    limit: Duration,
    provider: Arc<CryptoProvider>,
    recorder: Arc<Recorder>,
) -> Result<Agreed, Failure> {
    let started = Instant::now();
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Failure::Other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder)
        .with_no_client_auth();
    let name = ServerName::try_from(hostname.to_string())
        .map_err(|_| Failure::Other(format!("{hostname} is not a valid server name")))?;
    let mut conn =
        ClientConnection::new(Arc::new(config), name).map_err(|e| Failure::Other(e.to_string()))?;
    let mut tcp = TcpStream::connect_timeout(&addr, limit).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Failure::Timeout,
        _ => Failure::Other(e.to_string()),
    })?;
    while conn.is_handshaking() {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        let _ = tcp.set_read_timeout(Some(left));
        let _ = tcp.set_write_timeout(Some(left));
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) => return Err(classify(&e)),
        }
    }
    // Send the close_notify the edge would; the answer does not matter.
    conn.send_close_notify();
    let _ = conn.write_tls(&mut tcp);
    let _ = tcp.flush();
    let _ = tcp.read(&mut [0u8; 0]);
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
        _ => "TLS",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    Ok(Agreed { protocol, cipher })
}

/// rustls's error, in the edge's terms.
fn classify(e: &std::io::Error) -> Failure {
    use rustls::{AlertDescription, Error, PeerIncompatible, PeerMisbehaved};
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        return match tls {
            Error::AlertReceived(AlertDescription::ProtocolVersion) => Failure::NoSharedVersion,
            Error::AlertReceived(AlertDescription::HandshakeFailure)
            | Error::AlertReceived(AlertDescription::InsufficientSecurity) => {
                Failure::NoSharedCipher
            }
            Error::AlertReceived(a) => Failure::Alert(format!("{a:?}")),
            Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => Failure::NotTls,
            Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13)
            | Error::PeerIncompatible(PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig) => {
                Failure::NoSharedVersion
            }
            Error::PeerMisbehaved(PeerMisbehaved::SelectedUnofferedCipherSuite) => {
                Failure::NoSharedCipher
            }
            other => Failure::Other(other.to_string()),
        };
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Failure::Timeout,
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted => Failure::Closed,
        std::io::ErrorKind::InvalidData => Failure::NotTls,
        _ => Failure::Other(e.to_string()),
    }
}
