//! The host-wide budget of bytes held on handlers' behalf: the outputs of
//! messages whose effects have not finished (a publish is held until the
//! broker confirms it, for retries). A call reserves what it may return
//! (its handler's `max-output-bytes`) before it starts, and keeps what it
//! did return until its message is concluded; a call that cannot reserve
//! waits. So, over all partitions, what is held stays under
//! `max-in-flight-mib`, give or take one call's reservation: with nothing
//! held, a call is let through whatever it reserves, so that a cap below
//! one call's worth still makes progress.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Bytes held for handlers, and the cap.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    cap: u64,
    held: Mutex<u64>,
    /// Wakes callers waiting for room when bytes are given back.
    freed: Notify,
}

/// Bytes a message holds; given back when dropped.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl ByteBudget {
    /// A budget of `cap` bytes.
    pub(crate) fn new(cap: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            cap,
            held: Mutex::new(0),
            freed: Notify::new(),
        })
    }

    /// Holds `bytes` if they fit (or nothing is held), at once.
    pub(crate) fn try_hold(self: &Arc<Self>, bytes: u64) -> Option<HeldBytes> {
        let mut held = self.held.lock().expect("byte budget lock");
        if *held != 0 && held.saturating_add(bytes) > self.cap {
            return None;
        }
        *held += bytes;
        Some(HeldBytes {
            budget: self.clone(),
            bytes,
        })
    }

    /// Holds `bytes`, waiting until they fit.
    pub(crate) async fn hold(self: &Arc<Self>, bytes: u64) -> HeldBytes {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between wakes it.
            freed.as_mut().enable();
            if let Some(held) = self.try_hold(bytes) {
                return held;
            }
            freed.await;
        }
    }

    /// Waits until `bytes` would fit (nothing is held for them).
    pub(crate) async fn room_for(self: &Arc<Self>, bytes: u64) {
        drop(self.hold(bytes).await);
    }

    /// Whether nothing more fits (a lane should not fetch).
    pub(crate) fn is_full(&self) -> bool {
        *self.held.lock().expect("byte budget lock") >= self.cap
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> u64 {
        *self.held.lock().expect("byte budget lock")
    }

    /// The cap.
    pub(crate) fn cap(&self) -> u64 {
        self.cap
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        *self.held.lock().expect("byte budget lock") -= bytes;
        self.freed.notify_waiters();
    }
}

impl HeldBytes {
    /// Holds exactly `bytes` from now on: what a call returned, in place of
    /// what it reserved (more, past the cap, if it returned more).
    pub(crate) fn resize(&mut self, bytes: u64) {
        let mut held = self.budget.held.lock().expect("byte budget lock");
        *held = *held - self.bytes + bytes;
        drop(held);
        let shrunk = bytes < self.bytes;
        self.bytes = bytes;
        if shrunk {
            self.budget.freed.notify_waiters();
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_up_to_the_cap_and_one_reservation_past_it_when_empty() {
        let budget = ByteBudget::new(100);
        let mut first = budget.try_hold(60).unwrap();
        assert!(budget.try_hold(50).is_none(), "60 + 50 is over 100");
        let second = budget.try_hold(40).unwrap();
        assert!(budget.is_full());
        first.resize(10);
        assert_eq!(budget.held(), 50);
        drop(second);
        drop(first);
        assert_eq!(budget.held(), 0);
        // Nothing held: a reservation larger than the cap still goes.
        let big = budget.try_hold(500).unwrap();
        assert!(budget.try_hold(1).is_none());
        assert_eq!(big.bytes(), 500);
    }

    #[tokio::test]
    async fn a_waiting_holder_goes_once_bytes_are_given_back() {
        let budget = ByteBudget::new(100);
        let held = budget.try_hold(100).unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.hold(30).await.bytes() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), 30);
        assert_eq!(budget.held(), 0);
    }
}
