//! Certificates and mutual TLS with pinned peers.
//!
//! There is no CA: each node has a self-signed certificate from `syncd keygen`,
//! and each side pins the other's certificate by its SHA-256 fingerprint. The
//! handshake signature is still verified against the pinned key, so holding a
//! copy of the certificate without the private key gets an attacker nothing.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::{Config, PeerPin};
use crate::wire::ALPN;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
}

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s
            .trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        // Byte-wise: a non-ASCII character must be an error, not a slice
        // through the middle of it; and only hex digits (from_str_radix
        // would take a sign).
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return Err(format!("\"{s}\" is not a SHA-256 fingerprint; expected \"sha256:\" and 64 hex digits as printed by `syncd keygen`"));
        }
        let digit = |c: u8| {
            (c as char)
                .to_digit(16)
                .map(|d| d as u8)
                .ok_or_else(|| format!("\"{s}\" contains a non-hex digit"))
        };
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *o = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Ok(Fingerprint(out))
    }
}

/// Writes `node.crt` and `node.key` (mode 0600) into `dir` and returns the fingerprint.
pub fn keygen(dir: &Path, name: &str) -> Result<Fingerprint, TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let ferr = |p: &Path, e: std::io::Error| TlsError::File {
        path: p.display().to_string(),
        msg: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| ferr(dir, e))?;
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
    let crt = dir.join("node.crt");
    let key = dir.join("node.key");
    for p in [&crt, &key] {
        if p.exists() {
            return Err(TlsError::File {
                path: p.display().to_string(),
                msg: "already exists; refusing to overwrite a node identity (remove it first)"
                    .into(),
            });
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .map_err(|e| ferr(&key, e))?;
    std::io::Write::write_all(&mut f, ck.key_pair.serialize_pem().as_bytes())
        .map_err(|e| ferr(&key, e))?;
    std::fs::write(&crt, ck.cert.pem()).map_err(|e| ferr(&crt, e))?;
    Ok(Fingerprint::of(ck.cert.der()))
}

pub fn load_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        msg: format!("not a PEM certificate ({e}); use the node.crt written by `syncd keygen`"),
    })
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        msg: format!("not a PEM private key ({e}); use the node.key written by `syncd keygen`"),
    })
}

pub fn cert_fingerprint(path: &Path) -> Result<Fingerprint, TlsError> {
    Ok(Fingerprint::of(load_cert(path)?.as_ref()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one certificate: the pinned one.
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>, who: &str) -> Result<(), rustls::Error> {
        let got = Fingerprint::of(cert.as_ref());
        if got == self.pin {
            Ok(())
        } else {
            tracing::warn!(presented = %got, pinned = %self.pin, "refusing {who}: certificate is not the pinned one");
            Err(rustls::Error::General(format!(
                "{who} certificate {got} does not match the pinned {}",
                self.pin
            )))
        }
    }

    fn v12(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn v13(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, "standby")
            .map(|_| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.v12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.v13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, "primary")
            .map(|_| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.v12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.v13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// Our identity and the peer we accept.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub peer: Fingerprint,
}

impl Identity {
    pub fn from_config(c: &Config) -> Result<Identity, TlsError> {
        let peer = match &c.peer_pin {
            PeerPin::Cert(p) => cert_fingerprint(p)?,
            PeerPin::Fingerprint(f) => *f,
        };
        Ok(Identity {
            cert: load_cert(&c.cert)?,
            key: load_key(&c.key)?,
            peer,
        })
    }
}

/// Bidirectional streams a peer may have open at once.
pub const MAX_STREAMS: u32 = 16;

/// The largest UDP payload QUIC may use (IPv6's limit; IPv4's is higher).
const MAX_UDP_PAYLOAD: u16 = 65_527;

/// A QUIC endpoint on `addr` that accepts datagrams up to
/// [`MAX_UDP_PAYLOAD`] (quinn's default endpoint tells the peer 1,472).
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        // As `UdpSocket::bind` would: `[::]` takes IPv4 peers too.
        let _ = socket.set_only_v6(false);
    }
    grow_buffers(&socket);
    socket.bind(&addr.into())?;
    quinn::Endpoint::new(cfg, server, socket.into(), Arc::new(quinn::TokioRuntime))
}

/// What the QUIC socket asks for each way (the kernel doubles it, within
/// its limits).
const SOCKET_BUFFER: usize = 8 << 20;

/// A bulk transfer fills the default receive buffer (~200 KiB) within
/// milliseconds whenever the receiving thread waits for a core: a
/// 100,000-file resync on 2 cores had 1,236 and 2,179 datagrams dropped
/// there (`UdpRcvbufErrors`), none with 8 MiB; each is sent again and cuts
/// the sending rate. The kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`; a root daemon
/// (CAP_NET_ADMIN) may go past the receive cap.
fn grow_buffers(socket: &socket2::Socket) {
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let recv = || socket.recv_buffer_size().unwrap_or(0);
    if recv() < SOCKET_BUFFER {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER);
    }
    let send = socket.send_buffer_size().unwrap_or(0);
    if recv() < SOCKET_BUFFER {
        tracing::info!(
            recv = recv(),
            "the QUIC socket's receive buffer is held small by net.core.rmem_max; \
             a busy receiver may drop datagrams (set net.core.rmem_max = 8388608: README, Transport)"
        );
    }
    tracing::debug!(recv = recv(), send, "UDP socket buffers");
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Generous windows: loopback and LAN links are fast and the standby
    // drains quickly; small defaults would cap bulk throughput.
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    // What the peer may open at once: the control stream and up to 15 file
    // streams (each a worker thread on the standby); no unidirectional ones.
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(6)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    let p = provider();
    let verifier = Arc::new(Pinned {
        pin: id.peer,
        provider: p.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(q));
    sc.transport_config(transport());
    Ok(sc)
}

pub fn client_config(id: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    let p = provider();
    let verifier = Arc::new(Pinned {
        pin: id.peer,
        provider: p.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(q));
    cc.transport_config(transport());
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trip_and_errors() {
        let f = Fingerprint::of(b"x");
        assert_eq!(f.to_string().parse::<Fingerprint>().unwrap(), f);
        assert!("sha256:zz".parse::<Fingerprint>().is_err());
        assert!(format!("sha256:{}", "g".repeat(64))
            .parse::<Fingerprint>()
            .is_err());
    }

    #[test]
    fn hostile_fingerprints_are_errors_not_panics() {
        // 64 bytes, but multi-byte characters: slicing by byte used to panic
        let s = format!("sha256:a{}a", "é".repeat(31));
        assert!(s.parse::<Fingerprint>().is_err());
        // a sign is not a hex digit
        assert!("+f".repeat(32).parse::<Fingerprint>().is_err());
        assert!("-0".repeat(32).parse::<Fingerprint>().is_err());
        assert_eq!(
            "AB".repeat(32).parse::<Fingerprint>().unwrap(),
            Fingerprint([0xab; 32])
        );
    }

    #[test]
    fn keygen_writes_private_key_0600_and_refuses_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = keygen(d.path(), "n").unwrap();
        assert_eq!(cert_fingerprint(&d.path().join("node.crt")).unwrap(), f);
        let mode = std::fs::metadata(d.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keygen(d.path(), "n").is_err());
        load_key(&d.path().join("node.key")).unwrap();
    }
}
