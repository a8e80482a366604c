//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps the memory a burst freed (thousands of held connections closing, a
//! whole queue decided at once) in its arenas, where fragmentation keeps it from being
//! returned: the broker's RSS would stay at its high-water mark. `malloc_trim(0)` walks every
//! arena and hands whole free pages back. It takes a while on a large heap and holds one
//! arena's lock at a time, which can stall a thread allocating in that arena, so it runs rarely
//! ([`EVERY`]) and on a blocking thread. `docs/performance.md` has the measurements, and why
//! capping glibc's arenas instead was tried and dropped.

use std::time::Duration;

/// How often the broker returns free memory to the operating system.
pub const EVERY: Duration = Duration::from_secs(60);

/// Set by [`soon`]: a burst of calls just ended.
static SOON: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// How long after [`soon`] the trim runs: time for the clients of a bulk decision to be
/// answered and their memory freed.
const SETTLE: Duration = Duration::from_secs(5);

/// Ask for a trim shortly, without waiting for the next period: many calls were just
/// resolved at once (a runaway loop rejected), so their memory is about to be free.
pub fn soon() {
    SOON.notify_one();
}

/// Start returning free memory every `every`, and [`SETTLE`] after a [`soon`] (glibc only;
/// other allocators return memory themselves or not at all).
pub fn start(every: Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = SOON.notified() => {
                    tokio::time::sleep(SETTLE).await;
                    tick.reset();
                }
            }
            let took = tokio::task::spawn_blocking(|| {
                let start = std::time::Instant::now();
                // SAFETY: malloc_trim has no preconditions; it takes glibc's own arena locks.
                unsafe { libc::malloc_trim(0) };
                start.elapsed()
            })
            .await;
            if let Ok(took) = took {
                tracing::debug!(
                    took_us = took.as_micros() as u64,
                    "returned free memory to the system"
                );
            }
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}
