//! What signed decisions cost (issue 22): the console building and signing the statement, and
//! the broker checking it, against the same decision unsigned, in one run.
//!
//! In process, on the broker's own queue over the in-memory store (so the figures are the
//! decision path's CPU, not disk syncs): calls are held, then decided one at a time and all at
//! once by fingerprint, unsigned and signed alternately. Signing is the console's real code
//! (`tollgate_console::signing::sign`, an ed25519 key file made by `ssh-keygen`, which reads
//! the key and recomputes each call's argument hash); checking is the broker's
//! (`Queue::decide_and_follow` with the signature: statement, key, every call as stored).
//!
//! Run: `cargo bench -p tollgate-bench --bench signing`. `TOLLGATE_BENCH_SMOKE=1` runs a few
//! rounds and a 500-call bulk decision only (CI), without asserting on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tollgate_broker::queue::Queue;
use tollgate_broker::queue::sample_call;
use tollgate_console::signing::{SignWith, sign};
use tollgate_policy::identity::Identity;
use tollgate_shared::console::{ClientMsg, Role, Target};
use tollgate_shared::signing::{Signing, SigningKey};
use tollgate_shared::sshsig::PublicKey;
use tollgate_shared::{CallRecord, Verdict};
use tollgate_store::memory::MemoryEngine;

fn key(dir: &std::path::Path) -> Result<(std::path::PathBuf, SigningKey)> {
    let path = dir.join("alice");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .output()
        .context("ssh-keygen (OpenSSH's client) is needed: ./dev test installs it")?;
    if !out.status.success() {
        bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = std::fs::read_to_string(path.with_extension("pub"))?;
    let public = PublicKey::parse(line.trim())?;
    Ok((
        path,
        SigningKey {
            key: line.trim().to_string(),
            fingerprint: public.fingerprint(),
            added_ms: 0,
            revoked_ms: None,
        },
    ))
}

/// Hold `n` calls of one pattern; their records as a console sees them.
async fn hold(queue: &Arc<Queue>, n: usize, round: usize) -> Result<Vec<Arc<CallRecord>>> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut call = sample_call(i);
        call.fingerprint = format!("{round:016x}").as_str().into();
        held.push(Arc::new(call.clone()));
        std::mem::forget(queue.hold(call).await?);
    }
    Ok(held)
}

struct Timed {
    sign: Duration,
    decide: Duration,
}

async fn decide(
    queue: &Arc<Queue>,
    who: &Identity,
    calls: &[Arc<CallRecord>],
    target: Target,
    signed: Option<&SignWith>,
) -> Result<Timed> {
    let mut msg = ClientMsg::Decide {
        req: None,
        target: target.clone(),
        verdict: Verdict::Reject,
        reason: Some("runaway".into()),
        block_for_ms: None,
        allow_next: None,
        signed: None,
    };
    let t = Instant::now();
    if let Some(with) = signed {
        sign(
            with,
            &who.name,
            &mut msg,
            &|id| calls.iter().find(|c| *c.id == *id).cloned(),
            &|| calls.to_vec(),
        )?;
    }
    let sign_took = t.elapsed();
    let ClientMsg::Decide { signed, .. } = msg else {
        unreachable!()
    };
    let t = Instant::now();
    let (results, _) = queue
        .decide_and_follow(
            who,
            &target,
            Verdict::Reject,
            Some("runaway"),
            None,
            signed.as_ref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let decide_took = t.elapsed();
    if results.len() != calls.len() || !results.iter().all(|r| r.ok) {
        bail!(
            "decided {} of {} calls: {:?}",
            results.iter().filter(|r| r.ok).count(),
            calls.len(),
            results.first()
        );
    }
    Ok(Timed {
        sign: sign_took,
        decide: decide_took,
    })
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let (rounds, bulk, bulk_rounds) = if smoke {
        (20, 500, 1)
    } else {
        (300, 10_000, 3)
    };
    let dir = tempfile_dir()?;
    let (key_path, signing_key) = key(&dir)?;
    let with = SignWith::File(key_path);
    let alice = Identity {
        name: "alice".into(),
        role: Role::Approver,
        servers: None,
        signing: Signing {
            keys: vec![signing_key],
            require_signature: false,
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = tollgate_store::Store::open(Arc::new(MemoryEngine::new())).await?;
        let queue = Queue::new(store, Duration::from_secs(60));
        let (mut one_unsigned, mut one_signed, mut one_sign) = (vec![], vec![], vec![]);
        for round in 0..rounds {
            // Alternately, so both see the same noise.
            for signed in [round % 2 == 0, round % 2 == 1] {
                let calls = hold(&queue, 1, round * 2 + usize::from(signed)).await?;
                let target = Target::Ids {
                    ids: vec![calls[0].id.to_string()],
                };
                let t = decide(&queue, &alice, &calls, target, signed.then_some(&with)).await?;
                if signed {
                    one_signed.push(t.decide);
                    one_sign.push(t.sign);
                } else {
                    one_unsigned.push(t.decide);
                }
            }
        }
        let (mut bulk_unsigned, mut bulk_signed, mut bulk_sign) = (vec![], vec![], vec![]);
        for round in 0..bulk_rounds {
            for signed in [round % 2 == 0, round % 2 == 1] {
                let tag = 1_000_000 + round * 2 + usize::from(signed);
                let calls = hold(&queue, bulk, tag).await?;
                let target = Target::Fingerprint {
                    fingerprint: format!("{tag:016x}"),
                };
                let t = decide(&queue, &alice, &calls, target, signed.then_some(&with)).await?;
                if signed {
                    bulk_signed.push(t.decide);
                    bulk_sign.push(t.sign);
                } else {
                    bulk_unsigned.push(t.decide);
                }
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (u1, s1, c1) = (median(&mut one_unsigned), median(&mut one_signed), median(&mut one_sign));
        let (ub, sb, cb) = (median(&mut bulk_unsigned), median(&mut bulk_signed), median(&mut bulk_sign));
        println!("\n## Signed decisions (medians; {rounds} single decisions, {bulk_rounds} bulk of {bulk}; in-memory store)\n");
        println!("| decision | unsigned: broker | signed: console signs | signed: broker checks and decides | broker signed/unsigned |");
        println!("|---|---|---|---|---|");
        println!(
            "| one call | {:.3} ms | {:.3} ms | {:.3} ms | {:.2}x |",
            ms(u1),
            ms(c1),
            ms(s1),
            s1.as_secs_f64() / u1.as_secs_f64()
        );
        println!(
            "| {bulk} calls by fingerprint | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x |",
            ms(ub),
            ms(cb),
            ms(sb),
            sb.as_secs_f64() / ub.as_secs_f64()
        );
        if smoke {
            println!("\n(smoke run: figures are not meaningful)");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tollgate-bench-signing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
