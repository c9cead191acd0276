//! Locking that survives a panic: the lowest layer, for every module.
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering from poisoning: a panicked holder must not take
/// the agent's control plane down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
