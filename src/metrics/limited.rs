//! Log lines that may repeat at network speed (a failing backend, an exhausted fd table)
//! go through [`warn_limited!`]: at most one line per call site per second; the lines held
//! back are counted and reported with the next one that goes out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// One call site's state: the second it last logged in (since start, +1) and the lines
/// held back since.
pub struct Site {
    last: AtomicU64,
    held: AtomicU64,
}

impl Site {
    pub const fn new() -> Self {
        Site {
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held back)` when a line may go out now, `None` to hold this one back.
    pub fn admit(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last == now
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// `tracing::warn!` at most once per second per call site, saying how many were held back.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static SITE: $crate::metrics::limited::Site = $crate::metrics::limited::Site::new();
        if let Some(held) = SITE.admit() {
            if held > 0 {
                tracing::warn!("{} ({held} similar lines held back)", format_args!($($arg)+));
            } else {
                tracing::warn!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_and_a_count_of_the_rest() {
        let site = Site::new();
        assert_eq!(site.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(site.admit(), None);
        }
        // The next second lets one through, reporting the five held back.
        site.last.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(site.admit(), Some(5));
    }
}
