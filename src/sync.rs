//! Locks that outlive a panicking holder.
//!
//! Every value the engine keeps behind a lock (metrics, the loaded heads and adapters, the
//! pipeline caches, the job list, the first device fault) changes by whole assignments or
//! counter updates, so a thread that panicked while holding one left it consistent. Taking
//! the value back from a poisoned lock keeps a server answering its other requests instead
//! of panicking on every later access.
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `m.lock()`, poisoned or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `l.read()`, poisoned or not.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// `l.write()`, poisoned or not.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
