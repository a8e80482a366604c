//! The temporary rules brokers sharing a database share: a pattern blocked from one broker's
//! console is refused on every broker, and an allow rule's count is used up once across them.
//!
//! A row holds the rule as made; its counters (`remaining`, `hits`) are columns, changed under
//! the row's lock. Every change notifies the other brokers (kind `rules`), which read the rules
//! again; a broker also reads them again whenever its listener reconnects.

use tollgate_shared::console::{RuleKind, TempRule};

use super::{Pool, notify};
use crate::StoreError;

fn kind(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Block => "block",
        RuleKind::Allow => "allow",
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A row as a rule: the rule as made, with the counters of its columns.
fn row_rule(row: &tokio_postgres::Row) -> Result<TempRule, StoreError> {
    let mut rule: TempRule = serde_json::from_slice(row.get("rule"))
        .map_err(|e| StoreError::corrupt("a temporary rule in PostgreSQL", e))?;
    rule.remaining = row
        .get::<_, Option<i32>>("remaining")
        .map(|n| u32::try_from(n).unwrap_or(0));
    rule.hits = u64::try_from(row.get::<_, i64>("hits")).unwrap_or(0);
    Ok(rule)
}

/// The rules in force at `now_ms`, oldest first (expired and used-up rows are deleted on the
/// way).
pub async fn list(pool: &Pool, now_ms: u64) -> Result<Vec<TempRule>, StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "DELETE FROM tollgate_temp_rules WHERE until_ms <= $1 OR remaining = 0",
        &[&ms(now_ms)],
    )
    .await
    .map_err(|e| StoreError::pg("delete expired temporary rules", e))?;
    let rows = conn
        .query(
            "SELECT rule, remaining, hits FROM tollgate_temp_rules WHERE until_ms > $1 AND (remaining IS NULL OR remaining > 0) ORDER BY created_ms, id",
            &[&ms(now_ms)],
        )
        .await
        .map_err(|e| StoreError::pg("read the temporary rules", e))?;
    rows.iter().map(row_rule).collect()
}

/// Install a rule, telling the other brokers.
pub async fn add(pool: &Pool, node: &str, rule: &TempRule) -> Result<(), StoreError> {
    let body = serde_json::to_vec(rule)?;
    let remaining = rule.remaining.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let mut conn = pool.get().await?;
    let tx = conn
        .transaction()
        .await
        .map_err(|e| StoreError::pg("begin adding a temporary rule", e))?;
    tx.execute(
        "INSERT INTO tollgate_temp_rules (id, kind, created_ms, until_ms, remaining, hits, rule) VALUES ($1, $2, $3, $4, $5, 0, $6)",
        &[&rule.id, &kind(rule.kind), &ms(rule.created_ms), &ms(rule.until_ms), &remaining, &body],
    )
    .await
    .map_err(|e| StoreError::pg("add a temporary rule", e))?;
    notify(&tx, node, "rules", &rule.id).await?;
    tx.commit()
        .await
        .map_err(|e| StoreError::pg("commit a temporary rule", e))
}

/// Run `sql` (an `UPDATE` or `DELETE … RETURNING rule, remaining, hits` of rule `id`) and tell
/// the other brokers, in one transaction: the rule as returned, `None` if no row qualified.
async fn change(
    pool: &Pool,
    node: &str,
    id: &str,
    what: &'static str,
    sql: &str,
    now_ms: u64,
) -> Result<Option<TempRule>, StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn
        .transaction()
        .await
        .map_err(|e| StoreError::pg(what, e))?;
    let row = tx
        .query_opt(sql, &[&id, &ms(now_ms)])
        .await
        .map_err(|e| StoreError::pg(what, e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let rule = row_rule(&row)?;
    notify(&tx, node, "rules", id).await?;
    tx.commit().await.map_err(|e| StoreError::pg(what, e))?;
    Ok(Some(rule))
}

/// Remove a rule in force; the rule as it was, or `None` if none by that id was in force.
pub async fn remove(
    pool: &Pool,
    node: &str,
    id: &str,
    now_ms: u64,
) -> Result<Option<TempRule>, StoreError> {
    change(
        pool,
        node,
        id,
        "revoke a temporary rule",
        "DELETE FROM tollgate_temp_rules WHERE id = $1 AND until_ms > $2 AND (remaining IS NULL OR remaining > 0) RETURNING rule, remaining, hits",
        now_ms,
    )
    .await
}

/// Use one allowance of allow rule `id`: the rule with its count taken down, or `None` if it
/// has none left, expired or is gone (used up or revoked on another broker). A used-up rule's
/// row stays until the next read of the rules deletes it; it is not listed.
pub async fn take(
    pool: &Pool,
    node: &str,
    id: &str,
    now_ms: u64,
) -> Result<Option<TempRule>, StoreError> {
    change(
        pool,
        node,
        id,
        "use an allow rule",
        "UPDATE tollgate_temp_rules SET remaining = remaining - 1, hits = hits + 1
         WHERE id = $1 AND kind = 'allow' AND remaining > 0 AND until_ms > $2
         RETURNING rule, remaining, hits",
        now_ms,
    )
    .await
}

/// Count a call a block rule refused (shown to consoles; other brokers see it when they next
/// read the rules).
pub async fn hit(pool: &Pool, id: &str) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "UPDATE tollgate_temp_rules SET hits = hits + 1 WHERE id = $1",
        &[&id],
    )
    .await
    .map_err(|e| StoreError::pg("count a block rule's hit", e))?;
    Ok(())
}
