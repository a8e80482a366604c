//! The identities brokers sharing a database share: the token file's entries, one row each.
//! `tollgate-broker token` manages them when the config's `[store]` is PostgreSQL; every broker
//! reads them again each second ([`follow`]) into its [`Registry`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use tollgate_shared::console::Role;
use tollgate_shared::signing::Signing;

use super::Pool;
use crate::StoreError;
use crate::tokens::{self, Registry, TokenEntry, TokenError};

/// Every identity, by name.
pub async fn list(pool: &Pool) -> Result<Vec<TokenEntry>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query("SELECT entry FROM tollgate_identities ORDER BY name", &[])
        .await
        .map_err(|e| StoreError::pg("read the identities", e))?;
    rows.iter()
        .map(|r| {
            serde_json::from_slice(r.get(0))
                .map_err(|e| StoreError::corrupt("an identity in PostgreSQL", e))
        })
        .collect()
}

/// Why an identity could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// A bad name, or a name taken.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Create an identity; its token (shown once, never stored).
pub async fn add(
    pool: &Pool,
    name: &str,
    role: Role,
    servers: Option<Vec<String>>,
    signing: Signing,
) -> Result<String, AddError> {
    let (entry, token) = tokens::issue(name, role, servers, signing)?;
    let conn = pool.get().await?;
    let body = serde_json::to_vec(&entry).map_err(StoreError::from)?;
    let added = conn
        .execute(
            "INSERT INTO tollgate_identities (name, entry) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &body],
        )
        .await
        .map_err(|e| StoreError::pg("add the identity", e))?;
    if added == 0 {
        return Err(TokenError::Exists(name.to_string()).into());
    }
    Ok(token)
}

/// Change an identity in place (its keys), under its row's lock; false if there was none by
/// that name.
pub async fn update(
    pool: &Pool,
    name: &str,
    change: impl FnOnce(&mut TokenEntry),
) -> Result<bool, StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn
        .transaction()
        .await
        .map_err(|e| StoreError::pg("begin changing an identity", e))?;
    let Some(row) = tx
        .query_opt(
            "SELECT entry FROM tollgate_identities WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await
        .map_err(|e| StoreError::pg("read the identity", e))?
    else {
        return Ok(false);
    };
    let mut entry: TokenEntry = serde_json::from_slice(row.get(0))
        .map_err(|e| StoreError::corrupt("an identity in PostgreSQL", e))?;
    change(&mut entry);
    let body = serde_json::to_vec(&entry)?;
    tx.execute(
        "UPDATE tollgate_identities SET entry = $2 WHERE name = $1",
        &[&name, &body],
    )
    .await
    .map_err(|e| StoreError::pg("change the identity", e))?;
    tx.commit()
        .await
        .map_err(|e| StoreError::pg("commit the identity", e))?;
    Ok(true)
}

/// Remove an identity; false if there was none by that name.
pub async fn revoke(pool: &Pool, name: &str) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let gone = conn
        .execute("DELETE FROM tollgate_identities WHERE name = $1", &[&name])
        .await
        .map_err(|e| StoreError::pg("revoke the identity", e))?;
    Ok(gone > 0)
}

/// Read the identities into `registry` every `period` until it is dropped; a read that fails
/// keeps the identities read before (and is logged once until reads work again).
pub async fn follow(pool: Arc<Pool>, registry: Weak<Registry>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        match list(&pool).await {
            Ok(entries) => {
                if failing {
                    tracing::info!("the identities can be read from PostgreSQL again");
                }
                failing = false;
                registry.set(entries);
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "cannot read the identities from PostgreSQL; keeping those read before");
                }
                failing = true;
            }
        }
    }
}
