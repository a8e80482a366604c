//! The commands for a PostgreSQL `[store]`: `migrate` applies the schema, `check-store`
//! measures the database from this machine before brokers run on it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_store::postgres::{Pool, Settings, schema};

use crate::config::{self, StoreSpec};

/// The `[store]` of a config that must be PostgreSQL.
pub(super) fn settings(config_path: &Path, command: &str) -> anyhow::Result<Settings> {
    let cfg = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    match cfg.store {
        StoreSpec::Postgres(s) => Ok(*s),
        StoreSpec::Sled => anyhow::bail!(
            "{} has no [store] kind = \"postgres\": {command} is for a PostgreSQL store (the embedded sled store needs none)",
            config_path.display()
        ),
    }
}

/// A runtime for one command.
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `migrate`: bring the database's schema to this broker's version.
pub(super) fn migrate(config_path: &Path) -> anyhow::Result<()> {
    let settings = settings(config_path, "migrate")?;
    runtime()?.block_on(async {
        let mut client = settings.connect().await?;
        let (before, after) = schema::migrate(&mut client).await?;
        if before == after {
            println!("the schema is already at version {after}; nothing to do");
        } else {
            println!("schema migrated from version {before} to {after}");
        }
        Ok(())
    })
}

/// What `check-store` measured.
struct Measured {
    round_trip_p50: Duration,
    round_trip_p99: Duration,
    commits_per_s_one: f64,
    commits_per_s_pool: f64,
    pool: usize,
}

/// `check-store`: round trips and commit rates against the configured database, in a temporary
/// table (nothing is left behind).
pub(super) fn check_store(config_path: &Path, commits: usize, json: bool) -> anyhow::Result<()> {
    let settings = settings(config_path, "check-store")?;
    let m = runtime()?.block_on(measure(settings, commits.max(10)))?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "round_trip_p50_ms": ms(m.round_trip_p50),
                "round_trip_p99_ms": ms(m.round_trip_p99),
                "commits_per_s_one_connection": m.commits_per_s_one,
                "commits_per_s_pool": m.commits_per_s_pool,
                "pool_size": m.pool,
            })
        );
    } else {
        println!("PostgreSQL store:");
        println!(
            "  round trip (SELECT 1): p50 {:.2} ms, p99 {:.2} ms",
            ms(m.round_trip_p50),
            ms(m.round_trip_p99)
        );
        println!(
            "  durable commits per second, one connection: {:.0}",
            m.commits_per_s_one
        );
        println!(
            "  durable commits per second, {} connections (pool_size): {:.0}",
            m.pool, m.commits_per_s_pool
        );
        println!("  a held call costs one commit; decisions one each; allowed calls are grouped");
    }
    Ok(())
}

async fn measure(settings: Settings, commits: usize) -> anyhow::Result<Measured> {
    let pool = Arc::new(Pool::new(settings));
    let mut rtt = Vec::with_capacity(200);
    {
        let conn = pool.get().await?;
        schema::check(&conn).await?;
        for _ in 0..200 {
            let t = Instant::now();
            conn.simple_query("SELECT 1").await?;
            rtt.push(t.elapsed());
        }
    }
    rtt.sort();
    let body = vec![0u8; 2048];
    let one = {
        let conn = pool.get().await?;
        conn.batch_execute("CREATE TEMP TABLE tollgate_check (n int, body bytea)")
            .await?;
        let t = Instant::now();
        for n in 0..commits as i32 {
            conn.execute("INSERT INTO tollgate_check VALUES ($1, $2)", &[&n, &body])
                .await?;
        }
        commits as f64 / t.elapsed().as_secs_f64()
    };
    let size = pool.settings().pool_size;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..size {
        let (pool, body) = (pool.clone(), body.clone());
        let share = commits / size + usize::from(w < commits % size);
        tasks.push(tokio::spawn(async move {
            // A temporary table is per connection, so each holds its own.
            let mut conn = pool.get().await?;
            conn.batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS tollgate_check (n int, body bytea)",
            )
            .await?;
            for n in 0..share as i32 {
                let tx = conn.transaction().await?;
                tx.execute("INSERT INTO tollgate_check VALUES ($1, $2)", &[&n, &body])
                    .await?;
                tx.commit().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let pooled = commits as f64 / t.elapsed().as_secs_f64();
    let at = |q: f64| rtt[((rtt.len() - 1) as f64 * q) as usize];
    Ok(Measured {
        round_trip_p50: at(0.5),
        round_trip_p99: at(0.99),
        commits_per_s_one: one,
        commits_per_s_pool: pooled,
        pool: size,
    })
}
