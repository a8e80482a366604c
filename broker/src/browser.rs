//! Defences against web pages: a page in an approver's or a developer's browser can make
//! requests to the broker (on loopback, or on the LAN), and a DNS-rebinding page can make them
//! look same-origin. Two checks, on both listeners:
//!
//! - **`Origin`**, which browsers send on cross-origin requests and WebSocket handshakes: it
//!   must be a loopback origin (`http://localhost:*`, `http://127.0.0.1:*`, `http://[::1]:*`)
//!   or one listed in `[broker] allowed_origins`. It is parsed strictly (`scheme://host[:port]`
//!   and nothing else), so `http://127.0.0.1:80@evil.example` or `http://[::1]evil.example` are
//!   not mistaken for loopback.
//! - **`Host`**, which a rebound page's same-origin request (with no `Origin`) still carries
//!   with the attacker's name: it must be an IP address, `localhost`, or a name listed in
//!   `[broker] allowed_hosts`.
//!
//! Requests from programs (SDKs, the console, curl) send no `Origin` and an IP or a configured
//! name as `Host`, and are not affected.

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode, header};

/// The origins and host names browsers may use.
#[derive(Debug, Clone, Default)]
pub struct Browsers {
    /// Origins allowed besides loopback ones, lower case, as `scheme://host[:port]`.
    pub allowed_origins: Vec<String>,
    /// Host names (without port) allowed besides IP addresses and `localhost`, lower case.
    pub allowed_hosts: Vec<String>,
}

/// A request a browser page may have made, refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its `Origin` is not allowed.
    #[error(
        "Origin {0:?} not allowed: add it to allowed_origins in [broker] if this browser app should reach the broker"
    )]
    Origin(String),
    /// Its `Host` is not allowed.
    #[error(
        "Host {0:?} not allowed: name the broker by an IP address or localhost, or add the name to allowed_hosts in [broker] (a DNS-rebinding defence)"
    )]
    Host(String),
}

impl Refused {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }
}

/// `host[:port]` split strictly: a bracketed IPv6 address or a name of letters, digits, dots
/// and hyphens, then nothing or `:` and digits. `None` for anything else.
fn split_authority(s: &str) -> Option<(&str, Option<&str>)> {
    let (host, rest) = if let Some(v6) = s.strip_prefix('[') {
        let end = v6.find(']')?;
        (&s[..end + 2], &v6[end + 1..])
    } else {
        let end = s.find(':').unwrap_or(s.len());
        (&s[..end], &s[end..])
    };
    let port = match rest {
        "" => None,
        r => {
            let p = r.strip_prefix(':')?;
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(p)
        }
    };
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    let ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        None => name_ok(host),
    };
    ok.then_some((host, port))
}

/// The address a host names, if it is an IP literal.
fn ip_of(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse().ok(),
        None => host.parse().ok(),
    }
}

/// Whether `origin` is a loopback origin, parsed strictly.
fn loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    match split_authority(rest) {
        Some((host, _)) => {
            host.eq_ignore_ascii_case("localhost") || ip_of(host).is_some_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

impl Browsers {
    /// Settings as configured (compared case-insensitively).
    pub fn new(origins: &[String], hosts: &[String]) -> Browsers {
        Browsers {
            allowed_origins: origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
            allowed_hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Check a request's `Origin` and `Host`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refused> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let o = origin.to_str().unwrap_or_default();
            let lower = o.to_ascii_lowercase();
            if !(loopback_origin(&lower) || self.allowed_origins.contains(&lower)) {
                return Err(Refused::Origin(
                    String::from_utf8_lossy(origin.as_bytes()).into(),
                ));
            }
        }
        if let Some(host) = headers.get(header::HOST) {
            let h = host.to_str().unwrap_or_default().to_ascii_lowercase();
            let ok = match split_authority(&h) {
                Some((name, _)) => {
                    ip_of(name).is_some()
                        || name == "localhost"
                        || self.allowed_hosts.iter().any(|a| a == name)
                }
                None => false,
            };
            if !ok {
                return Err(Refused::Host(
                    String::from_utf8_lossy(host.as_bytes()).into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(b: &Browsers, origin: Option<&str>, host: Option<&str>) -> Result<(), Refused> {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("value"));
        }
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_str(v).expect("value"));
        }
        b.check(&h)
    }

    #[test]
    fn loopback_origins_pass_and_lookalikes_do_not() {
        let b = Browsers::new(&["https://console.example.com".into()], &[]);
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8443",
            "http://127.0.0.2:80",
            "HTTPS://Console.Example.com",
        ] {
            assert_eq!(check(&b, Some(ok), None), Ok(()), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:80@evil.example",
            "http://[::1]evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://evil.example",
            "null",
            "file://",
            "http://127.0.0.1:80/path",
            "http://[::1:80",
            "http://127.0.0.1:",
        ] {
            assert!(
                matches!(check(&b, Some(bad), None), Err(Refused::Origin(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts_must_be_addresses_localhost_or_configured_names() {
        let b = Browsers::new(&[], &["Tollgate.Internal".into()]);
        for ok in [
            "127.0.0.1:8080",
            "10.0.0.5",
            "[::1]:8080",
            "localhost:8080",
            "tollgate.internal:8080",
        ] {
            assert_eq!(check(&b, None, Some(ok)), Ok(()), "{ok}");
        }
        assert_eq!(check(&b, None, None), Ok(()), "no Host: not a browser");
        for bad in [
            "rebind.evil.example:8080",
            "127.0.0.1@evil:80",
            "localhost:80x",
            "[::1]x",
        ] {
            assert!(
                matches!(check(&b, None, Some(bad)), Err(Refused::Host(_))),
                "{bad}"
            );
        }
    }
}
