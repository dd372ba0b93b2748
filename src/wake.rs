//! A wake-up flag for threads that sleep until there is work: the outbox raises it when new
//! deliveries are committed, the daemon when it stops or a sink is resumed.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A generation counter that sleepers wait on. Raising it wakes every sleeper; a sleeper that
/// remembers the generation it last saw never misses a raise that happened in between.
#[derive(Debug, Default)]
pub struct Wake {
    generation: Mutex<u64>,
    changed: Condvar,
    /// For sleepers on an async runtime.
    notify: tokio::sync::Notify,
}

impl Wake {
    /// A new flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every sleeper.
    pub fn raise(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        self.changed.notify_all();
        self.notify.notify_waiters();
    }

    /// Sleeps (asynchronously) until the generation differs from `seen`.
    pub async fn changed(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.generation() != seen {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps until the generation differs from `seen` or `timeout` passes; returns the
    /// generation then.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = crate::config::units::later(Instant::now(), timeout);
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        while *g == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_raise_before_the_wait_is_not_missed() {
        let w = Wake::new();
        let seen = w.generation();
        w.raise();
        assert_eq!(w.wait(seen, Duration::from_secs(60)), seen + 1);
    }

    #[test]
    fn a_raise_from_another_thread_wakes_the_sleeper() {
        let w = Arc::new(Wake::new());
        let seen = w.generation();
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.wait(seen, Duration::from_secs(60)));
        w.raise();
        assert_eq!(t.join().unwrap(), seen + 1);
    }
}
