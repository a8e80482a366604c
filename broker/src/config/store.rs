//! `[store]`: where held calls, the audit chain and the queue live. `kind = "sled"` (the
//! default) is the embedded store of one machine, in `[broker] data_dir`; `kind = "postgres"`
//! is a PostgreSQL database several brokers share (`docs/high-availability.md`).

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tollgate_shared::tls::ClientTls;
use tollgate_store::postgres::Settings;
use tollgate_store::postgres::SslMode;
use toml::Spanned;

use super::Validator;

/// Where the broker keeps its state.
#[derive(Debug, Clone, Default)]
pub enum StoreSpec {
    /// sled in `[broker] data_dir`.
    #[default]
    Sled,
    /// A PostgreSQL database, possibly shared with other brokers.
    Postgres(Box<Settings>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    kind: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    node: Option<Spanned<String>>,
    pool_size: Option<Spanned<i64>>,
    statement_timeout: Option<Spanned<String>>,
    node_timeout: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

impl Validator<'_> {
    /// TLS to PostgreSQL, unless the URL says `sslmode=disable`: the server's certificate is
    /// checked against `ca` (else the system's CAs), and `cert`/`key` are shown when the server
    /// asks for a client certificate.
    fn store_tls(
        &mut self,
        base: &Path,
        ca: &Option<Spanned<String>>,
        cert: &Option<Spanned<String>>,
        key: &Option<Spanned<String>>,
        settings: &Settings,
        url: &Spanned<String>,
    ) -> Option<Arc<rustls::ClientConfig>> {
        let path = |v: &Option<Spanned<String>>| v.as_ref().map(|v| base.join(v.get_ref()));
        let mode = settings.config.get_ssl_mode();
        if mode == SslMode::Disable {
            if let Some(c) = ca {
                self.problem(
                    c.span(),
                    "[store] ca is set, but the url says sslmode=disable".into(),
                    Some("remove sslmode=disable from the url (or set sslmode=require)"),
                );
            }
            return None;
        }
        let tls = ClientTls {
            ca: path(ca),
            cert: path(cert),
            key: path(key),
        };
        let chosen = tls != ClientTls::default();
        match tls.config_for(tollgate_shared::tls::Peer::POSTGRES) {
            Ok(c) => Some(Arc::new(c)),
            // No CA to check a server with, and none asked for: the server is used without TLS
            // unless the url insists.
            Err(_) if !chosen && mode == SslMode::Prefer => None,
            Err(e) => {
                let span = ca
                    .as_ref()
                    .or(cert.as_ref())
                    .map_or_else(|| url.span(), Spanned::span);
                self.problem(
                    span,
                    format!("[store]: TLS to PostgreSQL: {e}"),
                    Some("ca = \"/etc/tollgate/pg-ca.pem\" names the CA that signed the server's certificate; cert and key go together"),
                );
                None
            }
        }
    }
}

/// This machine's host name, for the default node name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "broker".into())
}

impl Validator<'_> {
    pub(super) fn store(&mut self, base: &Path, raw: RawStore, listen_port: u16) -> StoreSpec {
        let kind = raw.kind.as_ref().map(|k| k.get_ref().as_str());
        match kind {
            None | Some("sled") => {
                for (key, span) in [
                    ("url", raw.url.as_ref().map(Spanned::span)),
                    ("node", raw.node.as_ref().map(Spanned::span)),
                    ("pool_size", raw.pool_size.as_ref().map(Spanned::span)),
                    ("ca", raw.ca.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        self.problem(
                            span,
                            format!("[store] {key} is for kind = \"postgres\"; the sled store lives in [broker] data_dir"),
                            Some("add kind = \"postgres\" to [store], or remove the key"),
                        );
                    }
                }
                StoreSpec::Sled
            }
            Some("postgres") => self.postgres(base, raw, listen_port),
            Some(other) => {
                if let Some(k) = &raw.kind {
                    self.problem(
                        k.span(),
                        format!("[store] kind {other:?} is neither \"sled\" nor \"postgres\""),
                        Some("\"sled\" (the default) keeps everything in [broker] data_dir on this machine; \"postgres\" shares it with other brokers"),
                    );
                }
                StoreSpec::Sled
            }
        }
    }

    fn postgres(&mut self, base: &Path, raw: RawStore, listen_port: u16) -> StoreSpec {
        let Some(url) = raw.url else {
            let span = raw.kind.as_ref().map(Spanned::span).unwrap_or(0..0);
            self.problem(
                span,
                "[store] kind = \"postgres\" needs url".into(),
                Some("url = \"${TOLLGATE_PG_URL}\", with TOLLGATE_PG_URL=postgres://user:password@host/db in the broker's environment"),
            );
            return StoreSpec::Sled;
        };
        let Some(expanded) = self.expanded(&url, "[store]", "url") else {
            return StoreSpec::Sled;
        };
        let node = raw
            .node
            .map(Spanned::into_inner)
            .unwrap_or_else(|| format!("{}:{listen_port}", hostname()));
        let mut settings = match Settings::new(&expanded, node) {
            Ok(s) => s,
            Err(e) => {
                self.problem(
                    url.span(),
                    format!("[store] url: {e}"),
                    Some("postgres://user:password@host:5432/database, or host=/run/postgresql dbname=tollgate"),
                );
                return StoreSpec::Sled;
            }
        };
        if let Some(p) = raw.pool_size {
            match usize::try_from(*p.get_ref()) {
                Ok(n) if (1..=1000).contains(&n) => settings.pool_size = n,
                _ => self.problem(
                    p.span(),
                    format!(
                        "[store] pool_size {} is not between 1 and 1000",
                        p.get_ref()
                    ),
                    None,
                ),
            }
        }
        // The defaults are `Settings::new`'s.
        settings.statement_timeout = self.duration(
            raw.statement_timeout,
            settings.statement_timeout,
            "statement_timeout",
        );
        settings.node_timeout =
            self.duration(raw.node_timeout, settings.node_timeout, "node_timeout");
        settings.tls = self.store_tls(base, &raw.ca, &raw.cert, &raw.key, &settings, &url);
        if settings.config.get_hosts().is_empty() {
            self.problem(
                url.span(),
                "[store] url names no host".into(),
                Some("postgres://user:password@host:5432/database"),
            );
        }
        StoreSpec::Postgres(Box::new(settings))
    }
}

#[cfg(test)]
mod tests {
    use super::super::check;
    use super::*;

    const BASE: &str = "[broker]\nauth = \"none\"\nlisten = \"127.0.0.1:9000\"\n[[server]]\nname = \"fs\"\ncommand = [\"true\"]\n";

    fn problems(store: &str) -> String {
        let err = check(&format!("{BASE}{store}")).expect_err("invalid");
        err.problems
            .iter()
            .map(|p| format!("{}:{} {}", p.line, p.column, p.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn sled_is_the_default_and_postgres_keys_need_the_postgres_kind() {
        assert!(matches!(check(BASE).expect("valid").store, StoreSpec::Sled));
        let p = problems("[store]\nurl = \"postgres://h/db\"\n");
        assert!(
            p.contains("8:7 [store] url is for kind = \"postgres\""),
            "{p}"
        );
        let p = problems("[store]\nkind = \"mysql\"\n");
        assert!(p.contains("neither \"sled\" nor \"postgres\""), "{p}");
    }

    #[test]
    fn a_postgres_store_takes_its_url_from_the_environment_and_names_its_node() {
        let p = problems("[store]\nkind = \"postgres\"\n");
        assert!(p.contains("needs url"), "{p}");
        let p = problems("[store]\nkind = \"postgres\"\nurl = \"${TOLLGATE_TEST_UNSET_PG_URL}\"\n");
        assert!(
            p.contains("the environment variable TOLLGATE_TEST_UNSET_PG_URL is not set"),
            "{p}"
        );
        let p =
            problems("[store]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\npool_size = 0\n");
        assert!(p.contains("pool_size 0 is not between 1 and 1000"), "{p}");
        let c = check(&format!(
            "{BASE}[store]\nkind = \"postgres\"\nurl = \"postgres://tg@db.internal:5433/tollgate\"\nstatement_timeout = \"2s\"\n"
        ))
        .expect("valid");
        let StoreSpec::Postgres(s) = c.store else {
            panic!("not postgres")
        };
        assert_eq!(s.statement_timeout, std::time::Duration::from_secs(2));
        assert_eq!(s.pool_size, 8);
        assert!(s.node.ends_with(":9000"), "host name and port: {}", s.node);
        assert_eq!(s.config.get_ports(), &[5433]);
    }
}
