//! A bounded LRU cache of prepared statements, one per connection.
//!
//! A statement evicted from the cache is dropped; tokio-postgres closes a named statement on the
//! server when its last handle is dropped, so the server's `pg_prepared_statements` stays as
//! bounded as the cache. Capacity 0 disables caching (for PgBouncer in transaction mode).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use lru::LruCache;
use serde::Serialize;

/// Hits, misses and evictions, shared by every connection of a pool.
#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl CacheCounters {
    /// A snapshot.
    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
        }
    }
}

/// Statement cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that had to prepare.
    pub misses: u64,
    /// Statements evicted (and closed on the server).
    pub evictions: u64,
}

/// The cache. `V` is `tokio_postgres::Statement` in use; generic for tests.
pub(crate) struct StatementCache<V> {
    lru: Option<LruCache<String, V>>,
    counters: Arc<CacheCounters>,
}

impl<V: Clone> StatementCache<V> {
    /// A cache of at most `capacity` statements (0 = no caching).
    pub(crate) fn new(capacity: usize, counters: Arc<CacheCounters>) -> Self {
        Self {
            lru: NonZeroUsize::new(capacity).map(LruCache::new),
            counters,
        }
    }

    /// True when caching is on.
    pub(crate) fn enabled(&self) -> bool {
        self.lru.is_some()
    }

    /// The statement for `sql`, marking it most recently used. Counts a hit or a miss.
    pub(crate) fn get(&mut self, sql: &str) -> Option<V> {
        let lru = self.lru.as_mut()?;
        match lru.get(sql) {
            Some(v) => {
                self.counters.hits.fetch_add(1, Relaxed);
                Some(v.clone())
            }
            None => {
                self.counters.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Caches `v` for `sql`; returns the statement it evicted or replaced, for the caller to
    /// drop outside any lock.
    pub(crate) fn insert(&mut self, sql: &str, v: V) -> Option<V> {
        let lru = self.lru.as_mut()?;
        if lru.contains(sql) {
            return lru.put(sql.to_owned(), v);
        }
        let evicted = lru.push(sql.to_owned(), v).map(|(_, old)| old);
        if evicted.is_some() {
            self.counters.evictions.fetch_add(1, Relaxed);
        }
        evicted
    }

    /// Forgets the statement for `sql` (its plan went stale).
    pub(crate) fn remove(&mut self, sql: &str) -> Option<V> {
        self.lru.as_mut()?.pop(sql)
    }

    /// Forgets everything and returns it, for the caller to drop outside any lock.
    pub(crate) fn drain(&mut self) -> Vec<V> {
        let mut out = Vec::with_capacity(self.len());
        if let Some(lru) = self.lru.as_mut() {
            while let Some((_, v)) = lru.pop_lru() {
                out.push(v);
            }
        }
        out
    }

    /// Statements cached.
    pub(crate) fn len(&self) -> usize {
        self.lru.as_ref().map_or(0, LruCache::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_evicting_least_recently_used() {
        let counters = Arc::new(CacheCounters::default());
        let mut c = StatementCache::new(3, Arc::clone(&counters));
        for i in 0..3 {
            assert!(c.get(&format!("q{i}")).is_none());
            assert!(c.insert(&format!("q{i}"), i).is_none());
        }
        assert_eq!(c.get("q0"), Some(0)); // q0 now most recent; q1 is the oldest
        assert_eq!(c.insert("q3", 3), Some(1));
        assert!(c.get("q1").is_none());
        for i in 4..5000 {
            c.insert(&format!("q{i}"), i);
            assert!(c.len() <= 3);
        }
        let s = counters.snapshot();
        assert_eq!(s.hits, 1);
        assert_eq!(s.misses, 4);
        assert_eq!(s.evictions, 1 + 4996);
    }

    #[test]
    fn reinserting_a_key_replaces_without_eviction() {
        let mut c = StatementCache::new(2, Arc::default());
        c.insert("a", 1);
        c.insert("b", 2);
        assert_eq!(c.insert("a", 10), Some(1));
        assert_eq!(c.get("a"), Some(10));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn capacity_zero_caches_nothing_and_counts_nothing() {
        let counters = Arc::new(CacheCounters::default());
        let mut c = StatementCache::new(0, Arc::clone(&counters));
        assert!(!c.enabled());
        assert_eq!(c.insert("a", 1), None);
        assert_eq!(c.get("a"), None);
        assert_eq!(c.len(), 0);
        assert_eq!(counters.snapshot(), CacheStats::default());
    }

    #[test]
    fn remove_and_drain_forget_statements() {
        let mut c = StatementCache::new(4, Arc::default());
        c.insert("a", 1);
        c.insert("b", 2);
        assert_eq!(c.remove("a"), Some(1));
        assert_eq!(c.get("a"), None);
        assert_eq!(c.drain(), vec![2]);
        assert_eq!(c.len(), 0);
    }
}
