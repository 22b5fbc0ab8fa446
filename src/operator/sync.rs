//! Locks whose data stays good when a holder panicked: every critical section in the
//! operator leaves its data consistent, so a poisoned lock is taken as it is rather than
//! stopping every later reconcile.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
