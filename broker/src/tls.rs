//! TLS on the broker's listeners (`[broker.tls]`): the certificate and key both listeners
//! present, and optionally a CA whose client certificates consoles and/or MCP clients must show
//! (mutual TLS).
//!
//! The files are re-read when they change (checked every few seconds) and on SIGHUP (with the
//! rest of the configuration, in `serve`): new
//! connections get the new certificate, open ones keep theirs. A reload that fails (a key that
//! does not match, a half-written file) is logged and the previous certificate stays in use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tollgate_shared::sync::{Mutex, RwLock};
use tollgate_shared::tls;

/// Which connections must show a client certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Consoles only.
    Console,
    /// MCP clients only.
    Mcp,
    /// Both listeners.
    Both,
}

/// `[broker.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain (PEM), the broker's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign the client certificates to require.
    pub client_ca: Option<PathBuf>,
    /// Where client certificates are required (when `client_ca` is set).
    pub client_auth: ClientAuth,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The MCP listener (`listen`).
    Mcp,
    /// The console listener (`console_listen`).
    Console,
    /// The admin listener (`admin_listen`): never asks for client certificates.
    Admin,
}

struct Configs {
    mcp: Arc<ServerConfig>,
    console: Arc<ServerConfig>,
    admin: Arc<ServerConfig>,
}

/// The TLS configuration of both listeners, reloaded when its files change.
pub struct Tls {
    settings: TlsSettings,
    configs: RwLock<Configs>,
    /// The files' modification times and sizes when last read.
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Tls {
    /// Read the certificate, key and client CA; fails with a message naming the file at fault.
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, String> {
        let stamp = stamps(&settings);
        let configs = build(&settings)?;
        Ok(Arc::new(Tls {
            settings,
            configs: RwLock::new(configs),
            stamp: Mutex::new(stamp),
        }))
    }

    /// An acceptor with the current certificate for a new connection on `side`.
    pub fn acceptor(&self, side: Side) -> TlsAcceptor {
        let c = self.configs.read();
        TlsAcceptor::from(match side {
            Side::Mcp => c.mcp.clone(),
            Side::Console => c.console.clone(),
            Side::Admin => c.admin.clone(),
        })
    }

    /// Re-read the files if they changed since the last read (or always, when `force`).
    /// Returns whether a new configuration is in use.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let now = stamps(&self.settings);
        {
            let mut last = self.stamp.lock();
            if !force && *last == now {
                return Ok(false);
            }
            *last = now;
        }
        let configs = build(&self.settings)?;
        *self.configs.write() = configs;
        Ok(true)
    }

    /// Reload whenever the files change (checked every `every`), until the process ends.
    /// SIGHUP reloads them too (see `serve`).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.reload_logged(false);
        }
    }

    /// [`Tls::reload`], logging what happened; whether the certificate in use is sound.
    pub fn reload_logged(&self, force: bool) -> bool {
        match self.reload(force) {
            Ok(true) => {
                tracing::info!(
                    cert = %self.settings.cert.display(),
                    "TLS certificate reloaded: new connections use it, open ones keep theirs"
                );
                true
            }
            Ok(false) => true,
            Err(e) => {
                tracing::error!(
                    "cannot reload the TLS certificate, still using the previous one: {e}"
                );
                false
            }
        }
    }
}

fn stamps(s: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    [Some(&s.cert), Some(&s.key), s.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn build(s: &TlsSettings) -> Result<Configs, String> {
    let certs = tls::load_certs(&s.cert)?;
    let key = tls::load_key(&s.key)?;
    let verifier = match &s.client_ca {
        None => None,
        Some(ca) => Some(
            WebPkiClientVerifier::builder_with_provider(
                Arc::new(tls::roots_from(ca)?),
                tls::provider(),
            )
            .build()
            .map_err(|e| format!("client_ca {}: {e}", ca.display()))?,
        ),
    };
    let make = |side: Side| -> Result<Arc<ServerConfig>, String> {
        let wants = verifier.as_ref().filter(|_| {
            matches!(
                (s.client_auth, side),
                (ClientAuth::Both, _)
                    | (ClientAuth::Console, Side::Console)
                    | (ClientAuth::Mcp, Side::Mcp)
            )
        });
        let builder = ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match wants {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| {
                format!(
                    "the certificate {} and key {} do not go together: {e}",
                    s.cert.display(),
                    s.key.display()
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Configs {
        mcp: make(Side::Mcp)?,
        console: make(Side::Console)?,
        admin: make(Side::Admin)?,
    })
}
