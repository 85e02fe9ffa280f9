//! An in-memory note of the events this execution environment has handled.
//!
//! It catches the redeliveries that land on the same warm environment (an SQS
//! batch retried after a partial failure, a visibility timeout that ran out, an
//! SNS invocation retried by Lambda), and nothing else: a cold start forgets,
//! and concurrent environments do not share it. In production, record the
//! idempotency key durably, in the same write as the side effect when you can
//! (DynamoDB `PutItem` with `attribute_not_exists(pk)`, or an upsert guarded by
//! `(commit_lsn, commit_idx)`); the templates' `handler.rs` shows both.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

/// A bounded set of idempotency keys; the oldest are forgotten first.
///
/// ```
/// use walcast_lambda::ProcessedKeys;
///
/// let processed = ProcessedKeys::with_capacity(10_000);
/// let key = "MTIzNDU2Nzg5OjA="; // metadata.idempotency_key
/// if !processed.contains(key) {
///     // ... do the work, then note it:
///     processed.insert(key.to_owned());
/// }
/// assert!(processed.contains(key));
/// ```
#[derive(Debug)]
pub struct ProcessedKeys {
    capacity: usize,
    inner: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl ProcessedKeys {
    /// Remembers at most `capacity` keys (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Keys::default()),
        }
    }

    /// Whether `key` was recorded (and not yet forgotten).
    pub fn contains(&self, key: &str) -> bool {
        self.keys().set.contains(key)
    }

    /// Records `key`, forgetting the oldest key if full.
    pub fn insert(&self, key: String) {
        let mut keys = self.keys();
        if keys.set.contains(&key) {
            return;
        }
        if keys.order.len() >= self.capacity {
            if let Some(oldest) = keys.order.pop_front() {
                keys.set.remove(&oldest);
            }
        }
        keys.set.insert(key.clone());
        keys.order.push_back(key);
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        // A panic while holding the lock cannot leave the set inconsistent
        // in a way that matters here: keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_when_full() {
        let keys = ProcessedKeys::with_capacity(2);
        keys.insert("a".into());
        keys.insert("b".into());
        keys.insert("a".into());
        assert!(keys.contains("a") && keys.contains("b"));
        keys.insert("c".into());
        assert!(!keys.contains("a"));
        assert!(keys.contains("b") && keys.contains("c"));
    }
}
