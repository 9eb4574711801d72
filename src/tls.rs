//! TLS material from PEM files, for the connections hookbridge accepts (the ingress,
//! `server.tls`) and makes (subscribers, `subscriptions[].tls`).
//!
//! Certificates rotate on disk: cert-manager renews them, a mounted Secret is swapped. So
//! the material is not read once: every handshake asks for it, and at most once a second a
//! look at the files (size, modification time, inode: a Kubernetes `..data` symlink swap
//! changes the inode) says whether to read them again. New connections then use the new
//! material; connections already open keep theirs. A file that changes into something
//! unusable (half written, a key that does not match its certificate) is logged, and the
//! last good material stays in use until the files change again.
//!
//! Errors name the configuration key and the file, never the file's content.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{ServerTlsConfig, TlsConfig};

/// How often a handshake may look at the files for a change.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {} holds no PEM certificate{}", path.display(), reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NoCertificate {
        key: String,
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("{key}: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { key: String, path: PathBuf },
    #[error("{key}: the private key in {} does not match the certificate in {}", key_path.display(), cert_path.display())]
    Mismatch {
        key: String,
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// The one crypto provider of the process's TLS (ring, as the rest of hookbridge).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file (a chain: the end entity first).
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason: Some(e.to_string()),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason: None,
        });
    }
    Ok(certs)
}

fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        key: key.to_string(),
        path: path.to_path_buf(),
    })
}

/// A certificate chain and its private key, checked to belong together.
fn certified_key(at: &str, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(&format!("{at}.cert"), cert)?;
    let der = private_key(&format!("{at}.key"), key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Invalid {
            key: format!("{at}.key"),
            reason: format!("{}: {e}", key.display()),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                key: format!("{at}.key"),
                key_path: key.to_path_buf(),
                cert_path: cert.to_path_buf(),
            })
        }
        // The key type cannot say its public key: nothing to compare, accepted as rustls does.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(TlsError::Invalid {
            key: format!("{at}.cert"),
            reason: format!("{}: {e}", cert.display()),
        }),
    }
}

/// A verifier trusting the system's roots and the CA certificates of `ca`.
fn verifier_with(at: &str, ca: &Path) -> Result<rustls_platform_verifier::Verifier, TlsError> {
    let key = format!("{at}.ca");
    let extra = certificates(&key, ca)?;
    // Checked one by one, so a file holding something that is no CA certificate says so.
    let mut store = rustls::RootCertStore::empty();
    for cert in &extra {
        store.add(cert.clone()).map_err(|e| TlsError::Invalid {
            key: key.clone(),
            reason: format!("{}: not a usable CA certificate: {e}", ca.display()),
        })?;
    }
    rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider()).map_err(|e| {
        TlsError::Invalid {
            key,
            reason: e.to_string(),
        }
    })
}

/// What a file looked like when last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, Option<SystemTime>, u64)>);

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok(), m.ino())),
    )
}

type Load<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// Material built from files, built again when they change (see the module's comment).
pub struct Reloading<T> {
    /// The configuration key, for logs.
    key: String,
    paths: Vec<PathBuf>,
    load: Load<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

impl<T> Reloading<T> {
    /// Reads the material now: an error here is a start-up (or reload) error.
    fn new(key: String, paths: Vec<PathBuf>, load: Load<T>) -> Result<Reloading<T>, TlsError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let current = Arc::new(load()?);
        Ok(Reloading {
            key,
            paths,
            load,
            state: Mutex::new(State {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The material to use for a new connection.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().expect("tls state lock");
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
            if stamps != state.stamps {
                state.stamps = stamps;
                match (self.load)() {
                    Ok(material) => {
                        state.current = Arc::new(material);
                        tracing::info!(key = %self.key, "TLS files changed on disk; new connections use them");
                    }
                    Err(e) => {
                        tracing::warn!(key = %self.key, error = %e, "TLS files changed on disk but cannot be used; keeping the previous ones");
                    }
                }
            }
        }
        state.current.clone()
    }
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("key", &self.key)
            .field("paths", &self.paths)
            .finish()
    }
}

/// The ingress's certificate, read again when its files change.
#[derive(Debug)]
struct ServerCert(Reloading<CertifiedKey>);

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// A client certificate, read again when its files change.
#[derive(Debug)]
struct ClientCert(Reloading<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The system's roots plus a private CA, read again when the CA file changes.
#[derive(Debug)]
struct WithPrivateCa(Reloading<rustls_platform_verifier::Verifier>);

impl ServerCertVerifier for WithPrivateCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().supported_verify_schemes()
    }
}

/// A server's TLS: `at.cert` + `at.key`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(at: &str, tls: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let (Some(cert), Some(key)) = (tls.cert.clone(), tls.key.clone()) else {
        return Err(TlsError::Invalid {
            key: at.to_string(),
            reason: "set both `cert` and `key`".into(),
        });
    };
    let paths = vec![cert.clone(), key.clone()];
    let owner = at.to_string();
    let resolver = Reloading::new(
        at.to_string(),
        paths,
        Box::new(move || certified_key(&owner, &cert, &key)),
    )?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            key: at.to_string(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ServerCert(resolver)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: the system's roots, plus `at.ca` if set; `at.cert` + `at.key` as its
/// certificate if set.
pub fn client_config(at: &str, tls: &TlsConfig) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            key: at.to_string(),
            reason: e.to_string(),
        })?;
    let builder = match tls.ca.clone() {
        Some(ca) => {
            let owner = at.to_string();
            let verifier = Reloading::new(
                format!("{at}.ca"),
                vec![ca.clone()],
                Box::new(move || verifier_with(&owner, &ca)),
            )?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(WithPrivateCa(verifier)))
        }
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider()).map_err(|e| {
                TlsError::Invalid {
                    key: at.to_string(),
                    reason: e.to_string(),
                }
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    match (tls.cert.clone(), tls.key.clone()) {
        (Some(cert), Some(key)) => {
            let owner = at.to_string();
            let resolver = Reloading::new(
                at.to_string(),
                vec![cert.clone(), key.clone()],
                Box::new(move || certified_key(&owner, &cert, &key)),
            )?;
            Ok(builder.with_client_cert_resolver(Arc::new(ClientCert(resolver))))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(TlsError::Invalid {
            key: at.to_string(),
            reason: "set both `cert` and `key`, or neither".into(),
        }),
    }
}
