//! Locks that outlive a panic.
//!
//! A thread that panics while holding a std lock poisons it, and every later `lock()` returns
//! an error. Nothing the broker guards with a lock is left half-updated by a panic in a way a
//! later reader could misread (each critical section replaces whole values), so a poisoned lock
//! is used as it is instead of taking every later call down with it. These wrappers say that
//! once, instead of `unwrap_or_else(|p| p.into_inner())` at every use.

use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// A mutex whose [`lock`](Mutex::lock) ignores poisoning.
#[derive(Debug, Default)]
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex(std::sync::Mutex::new(value))
    }

    /// Wait for the lock (a std guard, so a `Condvar` can wait on it).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value, without locking (the mutex is not shared any more).
    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// A read-write lock whose guards ignore poisoning.
#[derive(Debug, Default)]
pub struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    /// A lock holding `value`.
    pub const fn new(value: T) -> RwLock<T> {
        RwLock(std::sync::RwLock::new(value))
    }

    /// Shared access.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_opens() {
        let m = Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("poison it");
        })
        .join();
        *m.lock() += 1;
        assert_eq!(*m.lock(), 2);
        let rw = Arc::new(RwLock::new(vec![1]));
        let held = rw.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.write();
            panic!("poison it");
        })
        .join();
        rw.write().push(2);
        assert_eq!(*rw.read(), vec![1, 2]);
    }
}

/// A value replaced whole while readers keep using the one they loaded: the broker's
/// reloadable configuration. A reader takes an `Arc` and keeps it for as long as it works on
/// one request; a reload stores a new `Arc` for the requests that start after it.
#[derive(Debug, Default)]
pub struct Live<T>(RwLock<std::sync::Arc<T>>);

impl<T> Live<T> {
    /// A live value, first `value`.
    pub fn new(value: T) -> Live<T> {
        Live(RwLock::new(std::sync::Arc::new(value)))
    }

    /// The value now.
    pub fn load(&self) -> std::sync::Arc<T> {
        self.0.read().clone()
    }

    /// Replace it; readers that loaded the old one keep it.
    pub fn store(&self, value: std::sync::Arc<T>) {
        *self.0.write() = value;
    }
}
