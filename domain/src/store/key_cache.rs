//! Users of recently seen API keys, per process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a key's user is remembered, counted from when the read that found it
/// began. A deactivated user loses access within this time in every process (at
/// once in the process that deactivated them).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

/// The most keys remembered; past it the cache starts over.
const KEY_CACHE_SIZE: usize = 100_000;

/// Users of recently seen keys, so a request does not cost a database round trip to
/// say who sent it. Unknown keys are never remembered: a new key works at once.
#[derive(Debug)]
pub struct KeyCache<V> {
    inner: Mutex<Remembered<V>>,
}

#[derive(Debug)]
struct Remembered<V> {
    /// Each key's user and when the read that found it began.
    users: HashMap<String, (Instant, V)>,
    /// The last [`KeyCache::clear`]: what a read begun before it found may be stale.
    cleared_at: Option<Instant>,
}

impl<V> Default for KeyCache<V> {
    fn default() -> Self {
        KeyCache {
            inner: Mutex::new(Remembered {
                users: HashMap::new(),
                cleared_at: None,
            }),
        }
    }
}

impl<V: Clone> KeyCache<V> {
    pub(crate) fn get(&self, hash: &str) -> Option<V> {
        let inner = self.inner.lock().expect("key cache");
        inner
            .users
            .get(hash)
            .filter(|(read_at, _)| read_at.elapsed() < KEY_CACHE_TTL)
            .map(|(_, user)| user.clone())
    }

    /// Remembers the user a read begun at `read_at` found, unless the cache was
    /// cleared since that read began (it may have seen the user before the change).
    pub(crate) fn put(&self, hash: String, user: V, read_at: Instant) {
        let mut inner = self.inner.lock().expect("key cache");
        if inner.cleared_at.is_some_and(|cleared| read_at <= cleared) {
            return;
        }
        if inner.users.len() >= KEY_CACHE_SIZE {
            inner.users.clear();
        }
        inner.users.insert(hash, (read_at, user));
    }

    /// Forgets every key, after a change to who may do what; reads already under
    /// way are not remembered either.
    pub fn clear(&self) {
        let mut inner = self.inner.lock().expect("key cache");
        inner.users.clear();
        inner.cleared_at = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_begun_before_a_clear_is_not_remembered() {
        let cache = KeyCache::default();
        let before = Instant::now();
        cache.put("a".into(), 1, before);
        assert_eq!(cache.get("a"), Some(1));
        cache.clear();
        assert_eq!(cache.get("a"), None);
        cache.put("a".into(), 1, before);
        assert_eq!(cache.get("a"), None, "read before the clear");
        cache.put("a".into(), 2, Instant::now());
        assert_eq!(cache.get("a"), Some(2));
    }

    #[test]
    fn an_entry_expires_counted_from_its_read() {
        let cache = KeyCache::default();
        let Some(long_ago) = Instant::now().checked_sub(KEY_CACHE_TTL) else {
            return;
        };
        cache.put("a".into(), 1, long_ago);
        assert_eq!(cache.get("a"), None);
    }
}
