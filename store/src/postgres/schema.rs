//! The PostgreSQL schema: versioned migrations, applied by `tollgate-broker migrate` and
//! checked by every broker at start.
//!
//! Each migration runs in one transaction under an advisory lock, so two brokers (or two
//! `migrate` runs) never apply one twice. A broker runs only against the schema version it was
//! built for: an older one needs `migrate`, a newer one needs a newer broker.

use tokio_postgres::Client;

use crate::StoreError;
use crate::chain::GENESIS;

/// The advisory lock `migrate` takes (an arbitrary constant: "tollgate" in ASCII, truncated).
const MIGRATE_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// The migrations, in order; the schema's version is how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: calls, the audit chain and its head.
    "CREATE TABLE tollgate_calls (
        id text PRIMARY KEY,
        outcome text NOT NULL,
        -- The broker that holds the call's client (its stream, task or session).
        node text NOT NULL,
        open boolean NOT NULL,
        -- Set once, just before an approved call is sent upstream: never sent twice.
        claimed boolean NOT NULL DEFAULT false,
        record bytea NOT NULL
    );
    CREATE INDEX tollgate_calls_open ON tollgate_calls (id) WHERE open;
    CREATE TABLE tollgate_audit (
        seq bigint PRIMARY KEY,
        at_ms bigint NOT NULL,
        call_id text NOT NULL,
        outcome text NOT NULL,
        server text NOT NULL,
        tool text NOT NULL,
        client text NOT NULL,
        approvers jsonb NOT NULL,
        entry bytea NOT NULL
    );
    CREATE INDEX tollgate_audit_call ON tollgate_audit (call_id, seq);
    CREATE INDEX tollgate_audit_outcome ON tollgate_audit (outcome, seq);
    CREATE INDEX tollgate_audit_server ON tollgate_audit (server, seq);
    CREATE INDEX tollgate_audit_client ON tollgate_audit (client, seq);
    CREATE INDEX tollgate_audit_approvers ON tollgate_audit USING gin (approvers);
    -- One row: the chain's last sequence number and hash, locked by every append so entries
    -- from all brokers form one chain in one order.
    CREATE TABLE tollgate_chain_head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        seq bigint NOT NULL,
        hash text NOT NULL
    );
    INSERT INTO tollgate_chain_head (seq, hash) VALUES (0, '@GENESIS@');",
    // 2: the identities every broker shares (an entry of the token file per row).
    "CREATE TABLE tollgate_identities (
        name text PRIMARY KEY,
        entry bytea NOT NULL
    );",
    // 3: brokers alive, so a survivor adopts the calls of one that stopped for good.
    "CREATE TABLE tollgate_nodes (
        node text PRIMARY KEY,
        seen_ms bigint NOT NULL
    );",
    // 4: temporary rules, so a pattern blocked or allowed from one broker's console holds on
    // every broker, and an allowance is used up once across them.
    "CREATE TABLE tollgate_temp_rules (
        id text PRIMARY KEY,
        kind text NOT NULL,
        created_ms bigint NOT NULL,
        until_ms bigint NOT NULL,
        -- Allow rules: the calls still let through (counted down under the row's lock).
        remaining integer,
        hits bigint NOT NULL DEFAULT 0,
        -- The rule as made (its counters are the columns above).
        rule bytea NOT NULL
    );",
];

/// The schema version this broker runs against.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// The schema version of the database (0 when Tollgate has never been migrated into it).
pub async fn version(client: &Client) -> Result<i32, StoreError> {
    let exists = client
        .query_one("SELECT to_regclass('tollgate_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| StoreError::pg("read the schema version", e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT version FROM tollgate_schema", &[])
        .await
        .map_err(|e| StoreError::pg("read the schema version", e))?;
    Ok(row.get(0))
}

/// Refuse a schema this broker was not built for, saying what to do.
pub async fn check(client: &Client) -> Result<(), StoreError> {
    match version(client).await? {
        v if v == VERSION => Ok(()),
        0 => Err(StoreError::Schema(
            "the PostgreSQL database has no Tollgate schema yet: run `tollgate-broker migrate --config <file>` once".into(),
        )),
        v if v < VERSION => Err(StoreError::Schema(format!(
            "the PostgreSQL database's Tollgate schema is version {v}, older than this broker's ({VERSION}): run `tollgate-broker migrate --config <file>` (brokers of the old version must be stopped first)"
        ))),
        v => Err(StoreError::Schema(format!(
            "the PostgreSQL database's Tollgate schema is version {v}, newer than this broker knows ({VERSION}): a newer broker migrated it; run that version here too"
        ))),
    }
}

/// Apply the migrations the database lacks; returns the versions before and after.
pub async fn migrate(client: &mut Client) -> Result<(i32, i32), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| StoreError::pg("begin the migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(|e| StoreError::pg("lock the schema for migration", e))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS tollgate_schema (version integer NOT NULL)")
        .await
        .map_err(|e| StoreError::pg("create the schema version table", e))?;
    let before: i32 = match tx
        .query_opt("SELECT version FROM tollgate_schema", &[])
        .await
        .map_err(|e| StoreError::pg("read the schema version", e))?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO tollgate_schema (version) VALUES (0)", &[])
                .await
                .map_err(|e| StoreError::pg("start the schema version", e))?;
            0
        }
    };
    if before > VERSION {
        return Err(StoreError::Schema(format!(
            "the database's Tollgate schema is version {before}, newer than this broker knows ({VERSION}): nothing was changed"
        )));
    }
    for sql in &MIGRATIONS[before as usize..] {
        tx.batch_execute(&sql.replace("@GENESIS@", GENESIS))
            .await
            .map_err(|e| StoreError::pg("apply a migration", e))?;
    }
    tx.execute("UPDATE tollgate_schema SET version = $1", &[&VERSION])
        .await
        .map_err(|e| StoreError::pg("record the schema version", e))?;
    tx.commit()
        .await
        .map_err(|e| StoreError::pg("commit the migration", e))?;
    Ok((before, VERSION))
}
