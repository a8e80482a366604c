//! TLS shared by the broker and its clients: reading PEM files, the client side of a
//! connection to the broker (which CAs to trust, an optional client certificate), and
//! certificate errors told in one line that names what was expected and who signed what.
//!
//! Everything uses rustls with the `ring` provider. A client trusts the system's CA
//! certificates unless it is given a CA file (`--ca`), which then replaces them, as `curl
//! --cacert` does: a private CA is usually the only one a broker's certificate comes from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

/// The `ring` crypto provider every Tollgate TLS configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, in file order (a certificate, then its intermediates).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected \"-----BEGIN CERTIFICATE-----\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "cannot read a private key from {}: {e} (expected a PEM \"PRIVATE KEY\" block)",
            path.display()
        )
    })
}

/// A root store with the certificates of `path`.
pub fn roots_from(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{} is not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// How a client connects to the broker over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) for brokers that ask for one (mutual TLS).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

/// Whose certificate a client checks, for its error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// What the certificate is ("the broker's certificate").
    pub what: &'static str,
    /// What to do about a certificate from a CA nobody said to trust.
    pub untrusted: &'static str,
    /// What to do when the CA given did not sign it.
    pub wrong_ca: &'static str,
    /// What picks up a renewed certificate, said after "renew it".
    pub renewal: &'static str,
}

impl Peer {
    /// A Tollgate broker (consoles, the bridge, the CLI).
    pub const BROKER: Peer = Peer {
        what: "the broker's certificate",
        untrusted: "pass --ca FILE (or ca = in console.toml) with the CA certificate that signed it",
        wrong_ca: "the CA given with --ca (or ca = in console.toml) did not sign it: pass the CA that did",
        renewal: "; the broker picks up new certificate files without a restart",
    };
    /// A PostgreSQL server (the broker's shared store).
    pub const POSTGRES: Peer = Peer {
        what: "PostgreSQL's certificate",
        untrusted: "name the CA certificate that signed it with ca = \"FILE\" in [store]",
        wrong_ca: "the CA named by [store] ca did not sign it: name the CA that did",
        renewal: "",
    };
}

impl ClientTls {
    /// The rustls client configuration: the trusted CAs, the client certificate if any, and a
    /// verifier whose errors say what was wrong with the broker's certificate.
    pub fn config(&self) -> Result<rustls::ClientConfig, String> {
        self.config_for(Peer::BROKER)
    }

    /// [`ClientTls::config`] for a connection to `peer`, whose errors name it.
    pub fn config_for(&self, peer: Peer) -> Result<rustls::ClientConfig, String> {
        let provider = provider();
        let roots = match &self.ca {
            Some(ca) => roots_from(ca)?,
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(
                        "no system CA certificates found: pass --ca FILE with the CA that signed the broker's certificate".into(),
                    );
                }
                roots
            }
        };
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("cannot use the CA certificates: {e}"))?;
        let verifier = Arc::new(Explaining {
            inner,
            private_ca: self.ca.is_some(),
            peer,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    format!(
                        "the client certificate {} and key {} do not go together: {e}",
                        cert.display(),
                        key.display()
                    )
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("a client certificate needs both --cert and --key".into()),
        };
        Ok(config)
    }
}

/// Checks the broker's certificate as webpki does, but words a failure for the person at the
/// terminal: which name was expected and which the certificate has, who signed it, when it
/// expired.
#[derive(Debug)]
struct Explaining {
    inner: Arc<WebPkiServerVerifier>,
    private_ca: bool,
    peer: Peer,
}

/// A certificate error already worded for people.
#[derive(Debug)]
struct Worded(String);

impl fmt::Display for Worded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Worded {}

impl ServerCertVerifier for Explaining {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                Error::InvalidCertificate(c) => {
                    let names = Names::of(end_entity);
                    let text = word(&c, &names, server_name, self.private_ca, self.peer);
                    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                        Worded(text),
                    ))))
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn word(
    e: &CertificateError,
    names: &Names,
    server_name: &ServerName<'_>,
    private_ca: bool,
    peer: Peer,
) -> String {
    let wanted = server_name.to_str();
    let cert = format!("{} ({})", peer.what, names.subject_and_issuer());
    match e {
        CertificateError::UnknownIssuer => {
            let hint = if private_ca {
                peer.wrong_ca
            } else {
                peer.untrusted
            };
            format!("{cert} is signed by a CA this client does not trust: {hint}")
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let has = if presented.is_empty() {
                "no names in subjectAltName".to_string()
            } else {
                presented
                    .iter()
                    .map(|p| bare_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "{cert} is for {has}, not {:?}: connect with one of its names, or reissue it with \"{}\" in its subjectAltName",
                expected.to_str(),
                expected.to_str()
            )
        }
        CertificateError::NotValidForName => format!(
            "{cert} is not valid for {wanted:?}: reissue it with \"{wanted}\" in its subjectAltName"
        ),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "{cert} expired at {} (it is now {}): renew it{}",
            crate::clock::rfc3339_seconds(not_after.as_secs() * 1000),
            crate::clock::rfc3339_seconds(time.as_secs() * 1000),
            peer.renewal
        ),
        CertificateError::Expired => format!("{cert} has expired: renew it"),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "{cert} is not valid before {} (it is now {}): check the clocks of both machines",
            crate::clock::rfc3339_seconds(not_before.as_secs() * 1000),
            crate::clock::rfc3339_seconds(time.as_secs() * 1000)
        ),
        other => format!("{cert} was refused: {other:?}"),
    }
}

/// `DnsName("a.example")` or `IpAddress(10.0.0.1)` (how webpki lists a certificate's names) as
/// the bare name.
fn bare_name(presented: &str) -> &str {
    let inner = presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(presented);
    inner.trim_matches('"')
}

/// What a client-side TLS failure means, in one line, found anywhere in an error's chain; `None`
/// when the error is not about TLS.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Error>() {
            return Some(describe_rustls(r));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<Error>()
        {
            return Some(describe_rustls(r));
        }
        cur = err.source();
    }
    None
}

fn describe_rustls(e: &Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        Error::InvalidCertificate(CertificateError::Other(o)) => o.0.to_string(),
        Error::InvalidCertificate(c) => format!("the broker's certificate was refused: {c:?}"),
        Error::AlertReceived(A::CertificateRequired) | Error::AlertReceived(A::HandshakeFailure) => {
            "the broker asks for a client certificate (mutual TLS) and refused the connection without a valid one: pass --cert and --key".into()
        }
        Error::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown) => {
            "the broker refused this client certificate: it is not signed by the CA the broker trusts for clients ([broker.tls] client_ca)".into()
        }
        Error::AlertReceived(A::CertificateExpired) => {
            "the broker refused this client certificate: it has expired".into()
        }
        Error::InvalidMessage(_) => {
            "the other end does not speak TLS on this port: use ws:// (or http://) for a broker without [broker.tls]".into()
        }
        other => format!("TLS: {other}"),
    }
}

/// The common names of a certificate's subject and issuer, read from its DER.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    /// The subject's CN.
    pub subject: Option<String>,
    /// The issuer's CN.
    pub issuer: Option<String>,
}

impl Names {
    /// The names of a DER certificate (both `None` when it cannot be read).
    pub fn of(der: &[u8]) -> Names {
        names(der).unwrap_or_default()
    }

    fn subject_and_issuer(&self) -> String {
        let or = |n: &Option<String>| n.clone().unwrap_or_else(|| "no common name".into());
        if self.subject.is_some() && self.subject == self.issuer {
            format!("CN={}, self-signed", or(&self.subject))
        } else {
            format!(
                "CN={}, signed by CN={}",
                or(&self.subject),
                or(&self.issuer)
            )
        }
    }
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3, commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

fn names(der: &[u8]) -> Option<Names> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    let (_, _, rest) = tlv(rest)?; // serial number
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, issuer, rest) = tlv(rest)?;
    let (_, _, rest) = tlv(rest)?; // validity
    let (_, subject, _) = tlv(rest)?;
    Some(Names {
        subject: common_name(subject),
        issuer: common_name(issuer),
    })
}

fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (tag, set, rest) = tlv(name)?;
        name = rest;
        if tag != SET {
            continue;
        }
        let (SEQUENCE, attr, _) = tlv(set)? else {
            continue;
        };
        let (OID, oid, value) = tlv(attr)? else {
            continue;
        };
        if oid == COMMON_NAME {
            let (_, text, _) = tlv(value)?;
            return Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate made with
    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=tollgate-test-ca -days 1`.
    const SELF_SIGNED: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUP//2Ihc0JnYZ1lY6FRT6+5o/E+AwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQdG9sbGdhdGUtdGVzdC1jYTAeFw0yNjExMzAxMjU5MzRaFw0y
NjEyMDExMjU5MzRaMBsxGTAXBgNVBAMMEHRvbGxnYXRlLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAQeNEMTU5dx2Yfi5t2iGF/BkhSIER+FroAH9gk1
QjDhgpdl+rWopR9OlEWIb6g8F0M9bks66wfD7sLEg06sLCuvo1MwUTAdBgNVHQ4E
FgQUEPkC0TbaVlKFDw0Xl8uElvJynMswHwYDVR0jBBgwFoAUEPkC0TbaVlKFDw0X
l8uElvJynMswDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBHKLjc
gW+8pdEygeQfs910VLcmnwJgysrVgDY/jD9MuwIhALKbjxcJM1hsFz52tQnbEUEb
tPqwT2Zx2SHFSTh8fo07
-----END CERTIFICATE-----
";

    #[test]
    fn a_certificates_names_are_read_and_garbage_is_not() {
        let der = CertificateDer::from_pem_slice(SELF_SIGNED.as_bytes()).expect("pem");
        let names = Names::of(&der);
        assert_eq!(names.subject.as_deref(), Some("tollgate-test-ca"));
        assert_eq!(names.issuer.as_deref(), Some("tollgate-test-ca"));
        assert_eq!(
            names.subject_and_issuer(),
            "CN=tollgate-test-ca, self-signed"
        );
        assert_eq!(Names::of(b"\x30\x85garbage"), Names::default());
        assert_eq!(Names::of(&der[..40]), Names::default());
        for cut in 0..der.len() {
            let _ = Names::of(&der[..cut]);
        }
    }

    #[test]
    fn presented_names_are_shown_bare() {
        assert_eq!(bare_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("plain"), "plain");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let t = ClientTls {
            ca: None,
            cert: Some("c.pem".into()),
            key: None,
        };
        let dir = std::env::temp_dir().join(format!("tg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, SELF_SIGNED).expect("write");
        let err = ClientTls {
            ca: Some(ca.clone()),
            ..t
        }
        .config()
        .expect_err("no key");
        assert!(err.contains("--cert and --key"), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here").expect("write");
        let err = ClientTls {
            ca: Some(empty),
            ..Default::default()
        }
        .config()
        .expect_err("no certs");
        assert!(err.contains("holds no certificate"), "{err}");
        ClientTls {
            ca: Some(ca),
            ..Default::default()
        }
        .config()
        .expect("a CA alone is enough");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
