//! SSH signatures (OpenSSH's SSHSIG format, `ssh-keygen -Y sign`), made and checked with
//! `ring`: what an approver signs a decision with.
//!
//! Keys: `ssh-ed25519`, `ecdsa-sha2-nistp256`, and their FIDO variants
//! `sk-ssh-ed25519@openssh.com` and `sk-ecdsa-sha2-nistp256@openssh.com` (hardware keys, which
//! must have been touched: the user-presence flag is required, as `ssh-keygen -Y verify` does).
//! Signing goes through an ssh-agent (`SSH_AUTH_SOCK`: any key type, hardware keys and
//! passphrases stay where they are) or an unencrypted ed25519 key file.
//!
//! The format (PROTOCOL.sshsig): the armored blob holds the public key, the namespace and the
//! signature over `"SSHSIG" ‖ namespace ‖ reserved ‖ hash algorithm ‖ H(message)`.

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ring::signature::{self as sig, UnparsedPublicKey};

const MAGIC: &[u8] = b"SSHSIG";
const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const END: &str = "-----END SSH SIGNATURE-----";
const ED25519: &str = "ssh-ed25519";
const ECDSA_P256: &str = "ecdsa-sha2-nistp256";
const SK_ED25519: &str = "sk-ssh-ed25519@openssh.com";
const SK_ECDSA_P256: &str = "sk-ecdsa-sha2-nistp256@openssh.com";
/// FIDO authenticator data flag: the user touched the key.
const USER_PRESENT: u8 = 0x01;

/// What is wrong with a key or a signature, in words for the person who made it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// Not a key line this module reads.
    #[error("not an SSH public key ({0})")]
    BadKey(String),
    /// A key type we cannot check.
    #[error(
        "SSH key type {0} is not supported (use ssh-ed25519, ecdsa-sha2-nistp256 or their sk- FIDO variants)"
    )]
    KeyType(String),
    /// The armored signature does not parse.
    #[error("not an SSH signature ({0})")]
    BadSignature(String),
    /// Signed for another purpose.
    #[error("the signature is for namespace {found:?}, not {wanted:?}")]
    Namespace {
        /// In the signature.
        found: String,
        /// Expected.
        wanted: String,
    },
    /// Made by a key that is not among those allowed.
    #[error("the signing key {0} is not one of the signer's keys (or it was revoked)")]
    UnknownKey(String),
    /// The signature does not match the message.
    #[error("the signature does not match what was signed")]
    Invalid,
    /// A hardware key signed without being touched.
    #[error("the hardware key signed without user presence (touch)")]
    NoPresence,
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// An SSH public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: String,
    blob: Vec<u8>,
    comment: String,
}

impl PublicKey {
    /// Parse an OpenSSH public key line: `ssh-ed25519 AAAA… comment`.
    pub fn parse(line: &str) -> Result<PublicKey, SigError> {
        let mut parts = line.split_whitespace();
        let (Some(algorithm), Some(b64)) = (parts.next(), parts.next()) else {
            return Err(SigError::BadKey(
                "expected \"TYPE BASE64 [COMMENT]\"".into(),
            ));
        };
        let blob = STANDARD
            .decode(b64)
            .map_err(|e| SigError::BadKey(format!("base64: {e}")))?;
        let key = PublicKey::from_blob(&blob)?;
        if key.algorithm != algorithm {
            return Err(SigError::BadKey(format!(
                "the line says {algorithm} but the key is {}",
                key.algorithm
            )));
        }
        Ok(PublicKey {
            comment: parts.collect::<Vec<_>>().join(" "),
            ..key
        })
    }

    /// A key from its wire encoding.
    pub fn from_blob(blob: &[u8]) -> Result<PublicKey, SigError> {
        let mut r = Reader(blob);
        let algorithm = r.utf8().map_err(SigError::BadKey)?;
        match algorithm.as_str() {
            ED25519 | SK_ED25519 => {
                let k = r.string().map_err(SigError::BadKey)?;
                if k.len() != 32 {
                    return Err(SigError::BadKey("an ed25519 key has 32 bytes".into()));
                }
            }
            ECDSA_P256 | SK_ECDSA_P256 => {
                let curve = r.utf8().map_err(SigError::BadKey)?;
                let q = r.string().map_err(SigError::BadKey)?;
                if curve != "nistp256" || q.len() != 65 {
                    return Err(SigError::BadKey("not a P-256 point".into()));
                }
            }
            other => return Err(SigError::KeyType(other.to_string())),
        }
        if algorithm.starts_with("sk-") {
            r.utf8().map_err(SigError::BadKey)?;
        }
        if !r.0.is_empty() {
            return Err(SigError::BadKey("trailing bytes".into()));
        }
        Ok(PublicKey {
            algorithm,
            blob: blob.to_vec(),
            comment: String::new(),
        })
    }

    /// The key type, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The comment of the key line (often `user@host`).
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.blob);
        format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_ref()))
    }

    /// The key line without its comment: `TYPE BASE64`.
    pub fn to_openssh(&self) -> String {
        format!("{} {}", self.algorithm, STANDARD.encode(&self.blob))
    }

    /// Whether `signature` (its wire encoding) signs `data` under this key.
    fn check(&self, data: &[u8], signature: &[u8]) -> Result<(), SigError> {
        let mut k = Reader(&self.blob);
        let bad = |_| SigError::Invalid;
        k.string().map_err(bad)?;
        let mut s = Reader(signature);
        let algorithm = s.utf8().map_err(bad)?;
        if algorithm != self.algorithm {
            return Err(SigError::Invalid);
        }
        let raw = s.string().map_err(bad)?;
        match self.algorithm.as_str() {
            ED25519 => {
                let key = k.string().map_err(bad)?;
                verify(&sig::ED25519, key, data, raw)
            }
            ECDSA_P256 => {
                k.string().map_err(bad)?;
                let q = k.string().map_err(bad)?;
                verify(&sig::ECDSA_P256_SHA256_FIXED, q, data, &ecdsa_fixed(raw)?)
            }
            SK_ED25519 | SK_ECDSA_P256 => {
                let ed = self.algorithm == SK_ED25519;
                if !ed {
                    k.string().map_err(bad)?;
                }
                let key = k.string().map_err(bad)?;
                let application = k.string().map_err(bad)?;
                let flags = s.byte().map_err(bad)?;
                let counter = s.u32().map_err(bad)?;
                if flags & USER_PRESENT == 0 {
                    return Err(SigError::NoPresence);
                }
                // What a FIDO authenticator signs: H(application) ‖ flags ‖ counter ‖ H(data).
                let mut signed = Vec::with_capacity(69);
                signed.extend_from_slice(
                    ring::digest::digest(&ring::digest::SHA256, application).as_ref(),
                );
                signed.push(flags);
                signed.extend_from_slice(&counter.to_be_bytes());
                signed
                    .extend_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
                if ed {
                    verify(&sig::ED25519, key, &signed, raw)
                } else {
                    verify(
                        &sig::ECDSA_P256_SHA256_FIXED,
                        key,
                        &signed,
                        &ecdsa_fixed(raw)?,
                    )
                }
            }
            other => Err(SigError::KeyType(other.to_string())),
        }
    }
}

fn verify(
    alg: &'static dyn sig::VerificationAlgorithm,
    key: &[u8],
    data: &[u8],
    signature: &[u8],
) -> Result<(), SigError> {
    UnparsedPublicKey::new(alg, key)
        .verify(data, signature)
        .map_err(|_| SigError::Invalid)
}

/// An SSH ECDSA signature (`mpint r ‖ mpint s`) as the 64 fixed bytes `ring` checks.
fn ecdsa_fixed(raw: &[u8]) -> Result<Vec<u8>, SigError> {
    let mut r = Reader(raw);
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        let n = r.string().map_err(|_| SigError::Invalid)?;
        let n = match n {
            [0, rest @ ..] => rest,
            n => n,
        };
        if n.len() > 32 {
            return Err(SigError::Invalid);
        }
        out.extend(std::iter::repeat_n(0, 32 - n.len()));
        out.extend_from_slice(n);
    }
    Ok(out)
}

/// The bytes a key signs for `message` under `namespace`, hashed with `hash` (`sha512`, or
/// `sha256` in signatures made elsewhere).
fn signed_data(namespace: &str, hash: &str, message: &[u8]) -> Result<Vec<u8>, SigError> {
    let alg = match hash {
        "sha512" => &ring::digest::SHA512,
        "sha256" => &ring::digest::SHA256,
        other => return Err(SigError::BadSignature(format!("hash algorithm {other:?}"))),
    };
    let mut w = Vec::with_capacity(128);
    w.extend_from_slice(MAGIC);
    put_string(&mut w, namespace.as_bytes());
    put_string(&mut w, b"");
    put_string(&mut w, hash.as_bytes());
    put_string(&mut w, ring::digest::digest(alg, message).as_ref());
    Ok(w)
}

/// Check an armored SSH signature of `message` under `namespace`, made by one of `keys`: the
/// key that made it.
pub fn verify_armored<'k>(
    armored: &str,
    namespace: &str,
    message: &[u8],
    keys: impl IntoIterator<Item = &'k PublicKey>,
) -> Result<&'k PublicKey, SigError> {
    let parsed = Parsed::from_armored(armored)?;
    if parsed.namespace != namespace {
        return Err(SigError::Namespace {
            found: parsed.namespace,
            wanted: namespace.to_string(),
        });
    }
    let key = keys
        .into_iter()
        .find(|k| k.blob == parsed.key.blob)
        .ok_or_else(|| SigError::UnknownKey(parsed.key.fingerprint()))?;
    let data = signed_data(&parsed.namespace, &parsed.hash, message)?;
    key.check(&data, &parsed.signature)?;
    Ok(key)
}

struct Parsed {
    key: PublicKey,
    namespace: String,
    hash: String,
    signature: Vec<u8>,
}

impl Parsed {
    fn from_armored(armored: &str) -> Result<Parsed, SigError> {
        let text = armored.trim();
        let body = text
            .strip_prefix(BEGIN)
            .and_then(|t| t.strip_suffix(END))
            .ok_or_else(|| SigError::BadSignature(format!("expected {BEGIN} … {END}")))?;
        let b64: String = body.split_whitespace().collect();
        let blob = STANDARD
            .decode(b64)
            .map_err(|e| SigError::BadSignature(format!("base64: {e}")))?;
        let bad = SigError::BadSignature;
        let mut r = Reader(&blob);
        if r.take(6).map_err(bad)? != MAGIC {
            return Err(SigError::BadSignature("no SSHSIG magic".into()));
        }
        if r.u32().map_err(bad)? != 1 {
            return Err(SigError::BadSignature("unknown version".into()));
        }
        let key = PublicKey::from_blob(r.string().map_err(bad)?)?;
        let namespace = r.utf8().map_err(bad)?;
        r.string().map_err(bad)?;
        let hash = r.utf8().map_err(bad)?;
        let signature = r.string().map_err(bad)?.to_vec();
        Ok(Parsed {
            key,
            namespace,
            hash,
            signature,
        })
    }

    fn to_armored(&self) -> String {
        let mut w = Vec::with_capacity(256);
        w.extend_from_slice(MAGIC);
        w.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut w, &self.key.blob);
        put_string(&mut w, self.namespace.as_bytes());
        put_string(&mut w, b"");
        put_string(&mut w, self.hash.as_bytes());
        put_string(&mut w, &self.signature);
        let b64 = STANDARD.encode(w);
        let mut out = String::from(BEGIN);
        for chunk in b64.as_bytes().chunks(70) {
            out.push('\n');
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        }
        out.push('\n');
        out.push_str(END);
        out.push('\n');
        out
    }
}

/// Where a console's signatures come from.
pub enum Signer {
    /// An ssh-agent at this socket, signing with the key of this public key line (or, if
    /// `None`, its first key of a supported type).
    Agent {
        /// `SSH_AUTH_SOCK`.
        socket: std::path::PathBuf,
        /// Which of the agent's keys.
        key: Option<PublicKey>,
    },
    /// An unencrypted OpenSSH ed25519 private key.
    File {
        /// Its seed and public key.
        pair: Box<sig::Ed25519KeyPair>,
        /// The public key.
        public: PublicKey,
    },
}

impl Signer {
    /// A signer from an OpenSSH private key file (unencrypted ed25519; other keys sign through
    /// an agent).
    pub fn from_key_file(path: &Path) -> Result<Signer, SigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SigError::Sign(format!("cannot read {}: {e}", path.display())))?;
        let (pair, public) = openssh_ed25519(&text)
            .map_err(|why| SigError::Sign(format!("{}: {why}", path.display())))?;
        Ok(Signer::File {
            pair: Box::new(pair),
            public,
        })
    }

    /// Sign `message` under `namespace`: an armored SSH signature.
    pub fn sign(&self, namespace: &str, message: &[u8]) -> Result<String, SigError> {
        let data = signed_data(namespace, "sha512", message)?;
        let (key, signature) = match self {
            Signer::File { pair, public } => {
                let mut s = Vec::with_capacity(83);
                put_string(&mut s, ED25519.as_bytes());
                put_string(&mut s, pair.sign(&data).as_ref());
                (public.clone(), s)
            }
            Signer::Agent { socket, key } => agent_sign(socket, key.as_ref(), &data)?,
        };
        Ok(Parsed {
            key,
            namespace: namespace.to_string(),
            hash: "sha512".into(),
            signature,
        }
        .to_armored())
    }
}

/// Parse an unencrypted `openssh-key-v1` ed25519 private key.
fn openssh_ed25519(text: &str) -> Result<(sig::Ed25519KeyPair, PublicKey), String> {
    const BEGIN_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END_KEY: &str = "-----END OPENSSH PRIVATE KEY-----";
    let body = text
        .trim()
        .strip_prefix(BEGIN_KEY)
        .and_then(|t| t.strip_suffix(END_KEY))
        .ok_or("not an OpenSSH private key file")?;
    let b64: String = body.split_whitespace().collect();
    let blob = STANDARD.decode(b64).map_err(|e| format!("base64: {e}"))?;
    let mut r = Reader(&blob);
    if r.take(15)? != b"openssh-key-v1\0" {
        return Err("not an openssh-key-v1 key".into());
    }
    let cipher = r.utf8()?;
    if cipher != "none" {
        return Err(
            "the key is encrypted: load it into ssh-agent (ssh-add) and sign through SSH_AUTH_SOCK"
                .into(),
        );
    }
    r.string()?; // kdf name
    r.string()?; // kdf options
    if r.u32()? != 1 {
        return Err("the file holds more than one key".into());
    }
    let public = PublicKey::from_blob(r.string()?).map_err(|e| e.to_string())?;
    let mut p = Reader(r.string()?);
    if p.u32()? != p.u32()? {
        return Err("corrupt private section".into());
    }
    let algorithm = p.utf8()?;
    if algorithm != ED25519 {
        return Err(format!(
            "{algorithm} key files are not read here: add the key to ssh-agent and sign through SSH_AUTH_SOCK"
        ));
    }
    let pk = p.string()?;
    let sk = p.string()?;
    if sk.len() != 64 || pk.len() != 32 {
        return Err("corrupt ed25519 key".into());
    }
    let pair = sig::Ed25519KeyPair::from_seed_and_public_key(&sk[..32], pk)
        .map_err(|e| format!("the key does not check: {e}"))?;
    Ok((pair, public))
}

/// Ask the agent at `socket` to sign `data` with `key` (or its first usable key).
fn agent_sign(
    socket: &Path,
    key: Option<&PublicKey>,
    data: &[u8],
) -> Result<(PublicKey, Vec<u8>), SigError> {
    const REQUEST_IDENTITIES: u8 = 11;
    const IDENTITIES_ANSWER: u8 = 12;
    const SIGN_REQUEST: u8 = 13;
    const SIGN_RESPONSE: u8 = 14;
    let fail = |why: String| SigError::Sign(format!("ssh-agent at {}: {why}", socket.display()));
    let mut conn = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    let mut ask = |body: &[u8]| -> Result<Vec<u8>, SigError> {
        let mut msg = Vec::with_capacity(body.len() + 4);
        put_string(&mut msg, body);
        conn.write_all(&msg)
            .map_err(|e| fail(format!("cannot write: {e}")))?;
        let mut len = [0u8; 4];
        conn.read_exact(&mut len)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 256 * 1024 {
            return Err(fail("answer too long".into()));
        }
        let mut answer = vec![0u8; len];
        conn.read_exact(&mut answer)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        Ok(answer)
    };
    let chosen = match key {
        Some(k) => k.clone(),
        None => {
            let answer = ask(&[REQUEST_IDENTITIES])?;
            let mut r = Reader(&answer);
            if r.byte().map_err(fail)? != IDENTITIES_ANSWER {
                return Err(fail("it did not list its keys".into()));
            }
            let n = r.u32().map_err(fail)?;
            let mut found = None;
            for _ in 0..n {
                let blob = r.string().map_err(fail)?;
                r.string().map_err(fail)?;
                if let Ok(k) = PublicKey::from_blob(blob) {
                    found = Some(k);
                    break;
                }
            }
            found.ok_or_else(|| {
                fail("it holds no ed25519 or ECDSA P-256 key (ssh-add one)".into())
            })?
        }
    };
    let mut req = vec![SIGN_REQUEST];
    put_string(&mut req, &chosen.blob);
    put_string(&mut req, data);
    req.extend_from_slice(&0u32.to_be_bytes());
    let answer = ask(&req)?;
    let mut r = Reader(&answer);
    if r.byte().map_err(fail)? != SIGN_RESPONSE {
        return Err(fail(format!(
            "it refused to sign with {} (is that key loaded? `ssh-add -l`)",
            chosen.fingerprint()
        )));
    }
    let signature = r.string().map_err(fail)?.to_vec();
    Ok((chosen, signature))
}

fn put_string(w: &mut Vec<u8>, bytes: &[u8]) {
    w.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    w.extend_from_slice(bytes);
}

/// A cursor over SSH wire data.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn utf8(&mut self) -> Result<String, String> {
        String::from_utf8(self.string()?.to_vec()).map_err(|_| "not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let pair = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
        let mut blob = Vec::new();
        put_string(&mut blob, ED25519.as_bytes());
        put_string(&mut blob, sig::KeyPair::public_key(&pair).as_ref());
        Signer::File {
            pair: Box::new(pair),
            public: PublicKey::from_blob(&blob).expect("key"),
        }
    }

    fn public(s: &Signer) -> PublicKey {
        match s {
            Signer::File { public, .. } => public.clone(),
            Signer::Agent { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_signature_checks_only_for_its_message_namespace_and_key() {
        let s = file_signer();
        let key = public(&s);
        let other = public(&file_signer());
        let armored = s.sign("ns@v1", b"approve call 1").expect("sign");
        assert_eq!(
            verify_armored(&armored, "ns@v1", b"approve call 1", [&other, &key]),
            Ok(&key)
        );
        assert_eq!(
            verify_armored(&armored, "ns@v1", b"approve call 2", [&key]),
            Err(SigError::Invalid)
        );
        assert!(matches!(
            verify_armored(&armored, "other@v1", b"approve call 1", [&key]),
            Err(SigError::Namespace { .. })
        ));
        assert_eq!(
            verify_armored(&armored, "ns@v1", b"approve call 1", [&other]),
            Err(SigError::UnknownKey(key.fingerprint()))
        );
        assert_eq!(
            Parsed::from_armored(&armored).map(|p| p.key),
            Ok(key.clone())
        );
        let line = format!("{} alice@laptop", key.to_openssh());
        let parsed = PublicKey::parse(&line).expect("parse");
        assert_eq!(parsed.comment(), "alice@laptop");
        assert_eq!(parsed.fingerprint(), key.fingerprint());
    }

    #[test]
    fn bad_keys_and_signatures_are_named() {
        assert!(matches!(
            PublicKey::parse("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"),
            Err(SigError::BadKey(_) | SigError::KeyType(_))
        ));
        assert!(matches!(
            PublicKey::parse("garbage"),
            Err(SigError::BadKey(_))
        ));
        assert!(matches!(
            Parsed::from_armored(
                "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----"
            )
            .map(|p| p.key),
            Err(SigError::BadSignature(_))
        ));
    }
}
