//! Users of recently seen API keys, per process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a key's user is remembered. A deactivated user loses access within this
/// time in every process (at once in the process that deactivated them).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

/// The most keys remembered; past it the cache starts over.
const KEY_CACHE_SIZE: usize = 100_000;

/// Users of recently seen keys, so a request does not cost a database round trip to
/// say who sent it. Unknown keys are never remembered: a new key works at once.
#[derive(Debug)]
pub struct KeyCache<V> {
    users: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V> Default for KeyCache<V> {
    fn default() -> Self {
        KeyCache {
            users: Mutex::default(),
        }
    }
}

impl<V: Clone> KeyCache<V> {
    pub(crate) fn get(&self, hash: &str) -> Option<V> {
        let users = self.users.lock().expect("key cache");
        users
            .get(hash)
            .filter(|(at, _)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(_, user)| user.clone())
    }

    pub(crate) fn put(&self, hash: String, user: V) {
        let mut users = self.users.lock().expect("key cache");
        if users.len() >= KEY_CACHE_SIZE {
            users.clear();
        }
        users.insert(hash, (Instant::now(), user));
    }

    /// Forgets every key, after a change to who may do what.
    pub fn clear(&self) {
        self.users.lock().expect("key cache").clear();
    }
}
