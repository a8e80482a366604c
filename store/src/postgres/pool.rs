//! A small pool of PostgreSQL connections: at most `size` open, each reused until it breaks.
//!
//! Nothing fancier is needed: every statement the store sends is short, a broken connection is
//! dropped and a new one opened on the next use, and the semaphore keeps a burst of holds from
//! opening more connections than the server was sized for.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tollgate_shared::sync::Mutex;

use crate::StoreError;

/// How long data sent to PostgreSQL may stay unacknowledged before the connection fails.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The connection settings (parsed from a `postgres://` URL or a `key=value` string).
    pub config: Config,
    /// TLS to the server (`None`: plain TCP or a Unix socket, as `sslmode=disable` asks).
    /// With it, `sslmode=prefer` (the default) uses TLS when the server offers it and
    /// `sslmode=require` insists; the server's certificate is always verified.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections at most.
    pub pool_size: usize,
    /// Longest a statement may run before PostgreSQL cancels it.
    pub statement_timeout: Duration,
    /// This broker's name among those sharing the database (see [`super::PgStore`]).
    pub node: String,
    /// How long a broker may stay silent before another adopts its open calls.
    pub node_timeout: Duration,
    /// How long writes nobody waits for wait for more before they are committed (see
    /// `gather`).
    pub linger: Duration,
}

/// A connection's driver task: it ends (with the error, if any) when the connection does.
pub type Driver = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

impl Settings {
    /// Settings from a URL, with defaults for the rest (no TLS).
    pub fn new(url: &str, node: impl Into<String>) -> Result<Settings, String> {
        let config: Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        Ok(Settings {
            config,
            tls: None,
            pool_size: 8,
            statement_timeout: Duration::from_secs(5),
            node: node.into(),
            node_timeout: Duration::from_secs(30),
            linger: crate::DEFAULT_LINGER,
        })
    }

    /// Open one connection (its driver on its own task) for the pool.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        let mut config = self.config.clone();
        config.options(format!(
            "-c statement_timeout={}",
            self.statement_timeout.as_millis().max(1)
        ));
        config.application_name("tollgate-broker");
        Ok(self.open(config, None).await?.0)
    }

    /// Open a connection with `config`; its driver sends the payload of every notification to
    /// `notes`, when given.
    pub(super) async fn open(
        &self,
        mut config: Config,
        notes: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<(Client, Driver), StoreError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A server cut off by the network (no reset, packets dropped) must fail the call that
        // waits on it, not hang it for TCP's quarter of an hour of retransmissions:
        // `statement_timeout` runs on the server, which never hears the statement. Data unacked
        // for `TCP_USER_TIMEOUT` fails a busy connection; keepalives fail an idle one (the
        // listener's) within about 16 s.
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        let tls = self
            .tls
            .as_ref()
            .filter(|_| config.get_ssl_mode() != SslMode::Disable);
        match tls {
            None => {
                let (client, connection) = config
                    .connect(NoTls)
                    .await
                    .map_err(|e| StoreError::pg("connect", e))?;
                Ok((client, tokio::spawn(drive(connection, notes))))
            }
            Some(tls) => {
                let (client, connection) = config
                    .connect(MakeRustlsConnect::new((**tls).clone()))
                    .await
                    .map_err(|e| StoreError::pg("connect", e))?;
                Ok((client, tokio::spawn(drive(connection, notes))))
            }
        }
    }
}

/// Run a connection, passing on notifications.
async fn drive<S, T>(
    mut connection: Connection<S, T>,
    notes: Option<mpsc::UnboundedSender<String>>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notes
                    && tx.send(n.payload().to_string()).is_err()
                {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "a PostgreSQL connection ended");
                return Err(e);
            }
            None => return Ok(()),
        }
    }
}

/// The pool.
pub struct Pool {
    settings: Settings,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

impl Pool {
    /// A pool that opens connections as they are needed.
    pub fn new(settings: Settings) -> Pool {
        let permits = Semaphore::new(settings.pool_size.max(1));
        Pool {
            settings,
            idle: Mutex::new(Vec::new()),
            permits,
        }
    }

    /// The settings it connects with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A connection: an idle one, or a new one.
    pub async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        loop {
            let Some(client) = self.idle.lock().pop() else {
                break;
            };
            if !client.is_closed() {
                return Ok(Conn {
                    client: Some(client),
                    pool: self,
                    _permit: permit,
                });
            }
        }
        let client = self.settings.connect().await?;
        Ok(Conn {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }
}

/// A connection taken from the pool; it goes back when dropped, unless it broke.
pub struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("taken only on drop")
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("taken only on drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool.idle.lock().push(client);
        }
    }
}
