//! What can go wrong in the store, as values a caller can match on (and clone: one failed
//! group commit answers every write that was in it).

use std::path::PathBuf;
use std::sync::Arc;

/// A store operation failed.
///
/// Each variant's text says what failed and carries the cause's own text, so one line tells an
/// operator what happened (`cannot sync the journal to disk: No space left on device`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be opened.
    #[error("cannot open the store at {}: {cause}", dir.display())]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// What sled said.
        cause: Arc<sled::Error>,
    },
    /// Another process holds the store (sled allows one).
    #[error(
        "the store at {} is in use by another process (is a broker running with this data_dir? stop it, or ask it through the console API): {cause}",
        dir.display()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// What sled said.
        cause: Arc<sled::Error>,
    },
    /// A file operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The operating system's error.
        cause: Arc<std::io::Error>,
    },
    /// sled failed.
    #[error("{what}: {cause}")]
    Sled {
        /// What was being done.
        what: &'static str,
        /// What sled said.
        cause: Arc<sled::Error>,
    },
    /// Something read back is not what was written (or not written by this version).
    #[error("{what}: {cause}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it does not parse.
        cause: Arc<serde_json::Error>,
    },
    /// A value could not be encoded for writing.
    #[error("cannot encode a write for the store: {0}")]
    Encode(Arc<serde_json::Error>),
    /// A record whose id is not a UUID (ids are UUID v7, keys in time order).
    #[error("record id {0:?} is not a UUID")]
    BadId(String),
    /// The thread that applies committed groups to sled has stopped.
    #[error("the store's applier thread has stopped")]
    ApplierStopped,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// A committed group could not be applied to sled; it stays in the journal.
    #[error("a group could not be applied to sled; the journal is kept for the next start")]
    Unapplied,
    /// The task that writes groups has stopped.
    #[error("the store writer has stopped")]
    WriterStopped,
    /// PostgreSQL could not be reached or refused a statement.
    #[error("PostgreSQL: cannot {what}: {cause}")]
    Postgres {
        /// What was being done.
        what: &'static str,
        /// What PostgreSQL (or the connection to it) said, with its detail and hint.
        cause: String,
    },
    /// An approved call was claimed for forwarding already (it may have run).
    #[error(
        "call {0} was already claimed for forwarding, so it may have run; it is not sent again"
    )]
    AlreadyClaimed(String),
    /// The database's schema is not the one this broker runs against.
    #[error("{0}")]
    Schema(String),
}

impl StoreError {
    /// A file operation that failed, with what it was.
    pub fn io(what: impl Into<String>, cause: std::io::Error) -> StoreError {
        StoreError::Io {
            what: what.into(),
            cause: Arc::new(cause),
        }
    }

    /// A sled operation that failed.
    pub fn sled(what: &'static str, cause: sled::Error) -> StoreError {
        StoreError::Sled {
            what,
            cause: Arc::new(cause),
        }
    }

    /// A PostgreSQL operation that failed.
    pub fn pg(what: &'static str, cause: tokio_postgres::Error) -> StoreError {
        // The error's own text is often just "db error": the server's message (or the I/O
        // error under a connection failure) is in its source.
        let cause = match cause.as_db_error() {
            Some(db) => {
                let mut text = db.message().to_string();
                for extra in [db.detail(), db.hint()].into_iter().flatten() {
                    text.push_str(" (");
                    text.push_str(extra);
                    text.push(')');
                }
                text
            }
            // A certificate the store's TLS refused, worded for people.
            None if let Some(tls) = tollgate_shared::tls::describe(&cause) => {
                format!("the TLS handshake failed: {tls}")
            }
            None => {
                let mut text = cause.to_string();
                let mut source = std::error::Error::source(&cause);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                text
            }
        };
        StoreError::Postgres { what, cause }
    }

    /// Stored bytes that do not parse.
    pub fn corrupt(what: &'static str, cause: serde_json::Error) -> StoreError {
        StoreError::Corrupt {
            what,
            cause: Arc::new(cause),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> StoreError {
        StoreError::Encode(Arc::new(e))
    }
}
