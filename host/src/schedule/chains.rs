//! Ordering chains. Handlers are pure, so only effects need ordering: a
//! message's effects start once the previous message on its chain has handed
//! its own over. The chain is the message key (`ordering = "key"`), the
//! whole partition (`"partition"`), or nothing (`"unordered"`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::config::Ordering;
use crate::source::parked::{ParkedKey, ParkedKeys};

/// What a chain is keyed by: a message key, or `None` for the partition's
/// single chain (and for keyless messages when ordering by key).
type ChainKey = Option<Vec<u8>>;

/// The latest message on a chain: the signal its successor waits for.
struct Tail {
    id: u64,
    done: oneshot::Receiver<()>,
}

/// The chains of one partition.
#[derive(Default)]
pub(crate) struct Chains {
    tails: Mutex<HashMap<ChainKey, Tail>>,
    ids: AtomicU64,
}

/// A message's place on its chain. Dropping it (done, failed or abandoned)
/// lets the next message of the chain go.
pub(crate) struct Link {
    wait: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    place: Option<(Arc<Chains>, ChainKey, u64)>,
}

impl Chains {
    /// Puts a message at the end of its chain.
    pub(crate) fn join(self: &Arc<Self>, ordering: Ordering, key: Option<&[u8]>) -> Link {
        let chain_key = match ordering {
            Ordering::Unordered => {
                return Link {
                    wait: None,
                    done: None,
                    place: None,
                };
            }
            Ordering::Partition => None,
            Ordering::Key => key.map(<[u8]>::to_vec),
        };
        let (done, signal) = oneshot::channel();
        let id = self.ids.fetch_add(1, AtomicOrdering::Relaxed);
        let previous = self
            .tails
            .lock()
            .expect("chains lock")
            .insert(chain_key.clone(), Tail { id, done: signal });
        Link {
            wait: previous.map(|tail| tail.done),
            done: Some(done),
            place: Some((self.clone(), chain_key, id)),
        }
    }

    /// Chains with a message on them.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tails.lock().expect("chains lock").len()
    }
}

impl Link {
    /// Whether the message may go at once (nothing before it on its chain).
    pub(crate) fn is_free(&self) -> bool {
        self.wait.is_none()
    }

    /// Waits until the previous message on the chain has handed its effects over.
    pub(crate) async fn wait(&mut self) {
        if let Some(previous) = self.wait.take() {
            // An error means the predecessor was dropped: it is done too.
            let _ = previous.await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        if let Some((chains, key, id)) = self.place.take() {
            let mut tails = chains.tails.lock().expect("chains lock");
            // Last on its chain: nobody will wait for it, the chain goes.
            if tails.get(&key).is_some_and(|tail| tail.id == id) {
                tails.remove(&key);
            }
        }
    }
}

/// Keys parked in a partition (`on-dead-letter = "park-key"`): their later
/// messages are dead-lettered behind the one that parked them, until they
/// are re-driven and un-parked.
#[derive(Default)]
pub(crate) struct Parked {
    keys: Mutex<HashMap<ChainKey, ParkedKey>>,
}

/// What an un-park did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unpark {
    /// Un-parked.
    Done,
    /// The key is not parked in the partition.
    NotParked,
    /// The partition has no lane in this host.
    NotAssigned,
    /// Messages of the key after the re-driven ones were dead-lettered
    /// behind it since: they are not re-driven yet, so it stays parked.
    Behind {
        /// The last offset held behind the key.
        last: i64,
    },
}

impl Parked {
    /// Parks a key at a message's offset; false if it was parked already.
    pub(crate) fn park(&self, key: Option<&[u8]>, offset: i64) -> bool {
        let mut keys = self.keys.lock().expect("parked lock");
        match keys.entry(key.map(<[u8]>::to_vec)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(ParkedKey {
                    at: offset,
                    last: offset,
                });
                true
            }
        }
    }

    /// Whether the message at `offset` is held behind its parked key (and
    /// so to be dead-lettered): only messages after the one that parked it
    /// are (that one, handled again after a crash, is tried again).
    pub(crate) fn hold(&self, key: Option<&[u8]>, offset: i64) -> bool {
        let mut keys = self.keys.lock().expect("parked lock");
        if keys.is_empty() {
            return false;
        }
        match keys.get_mut(&key.map(<[u8]>::to_vec)) {
            Some(parked) if offset > parked.at => {
                parked.last = parked.last.max(offset);
                true
            }
            _ => false,
        }
    }

    /// Whether a key is parked.
    pub(crate) fn is_parked(&self, key: Option<&[u8]>) -> bool {
        let keys = self.keys.lock().expect("parked lock");
        keys.contains_key(&key.map(<[u8]>::to_vec))
    }

    /// Adds keys parked by earlier runs (read back from the dead letters).
    pub(crate) fn restore(&self, parked: ParkedKeys) {
        let mut keys = self.keys.lock().expect("parked lock");
        for (key, restored) in parked {
            let known = keys.entry(key).or_insert(restored);
            known.at = known.at.min(restored.at);
            known.last = known.last.max(restored.last);
        }
    }

    /// Un-parks the keys parked at `offset` or later (their messages will be
    /// handled again).
    pub(crate) fn unpark_from(&self, offset: i64) {
        let mut keys = self.keys.lock().expect("parked lock");
        keys.retain(|_, parked| parked.at < offset);
    }

    /// Un-parks a key whose dead letters through offset `through` were
    /// re-driven, unless later ones were held behind it meanwhile.
    pub(crate) fn unpark(&self, key: Option<&[u8]>, through: i64) -> Unpark {
        let mut keys = self.keys.lock().expect("parked lock");
        let key = key.map(<[u8]>::to_vec);
        match keys.get(&key) {
            None => Unpark::NotParked,
            Some(parked) if parked.last > through => Unpark::Behind { last: parked.last },
            Some(_) => {
                keys.remove(&key);
                Unpark::Done
            }
        }
    }

    /// How many keys are parked.
    pub(crate) fn len(&self) -> usize {
        self.keys.lock().expect("parked lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn finished_in_time(link: &mut Link) -> bool {
        tokio::time::timeout(Duration::from_millis(50), link.wait())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn same_key_waits_other_keys_do_not() {
        let chains = Arc::new(Chains::default());
        let a1 = chains.join(Ordering::Key, Some(b"a"));
        let mut a2 = chains.join(Ordering::Key, Some(b"a"));
        let mut b1 = chains.join(Ordering::Key, Some(b"b"));
        assert!(finished_in_time(&mut b1).await, "another key goes at once");
        assert!(!finished_in_time(&mut a2).await, "same key waits");
        drop(a1);
        assert!(
            finished_in_time(&mut a2).await,
            "and goes when its predecessor is done"
        );
        drop((a2, b1));
        assert_eq!(chains.len(), 0, "finished chains are forgotten");
    }

    #[tokio::test]
    async fn partition_ordering_is_one_chain_and_unordered_none() {
        let chains = Arc::new(Chains::default());
        let first = chains.join(Ordering::Partition, Some(b"a"));
        let mut second = chains.join(Ordering::Partition, Some(b"b"));
        assert!(!finished_in_time(&mut second).await);
        drop(first);
        assert!(finished_in_time(&mut second).await);
        let _held = chains.join(Ordering::Unordered, Some(b"a"));
        let mut free = chains.join(Ordering::Unordered, Some(b"a"));
        assert!(finished_in_time(&mut free).await);
    }

    #[test]
    fn parked_keys() {
        let parked = Parked::default();
        assert!(!parked.hold(Some(b"k"), 6));
        assert!(parked.park(Some(b"k"), 5));
        assert!(!parked.park(Some(b"k"), 6), "already parked");
        assert!(parked.hold(Some(b"k"), 6));
        assert!(
            !parked.hold(Some(b"k"), 5),
            "the parking message is tried again"
        );
        assert!(!parked.hold(Some(b"j"), 6));
        assert!(!parked.hold(None, 6));
        assert!(parked.park(Some(b"j"), 9));
        parked.unpark_from(7);
        assert!(parked.hold(Some(b"k"), 10), "parked before the rewind");
        assert!(
            !parked.hold(Some(b"j"), 10),
            "parked by what is handled again"
        );
    }

    #[test]
    fn a_key_is_unparked_only_through_its_last_held_message() {
        let parked = Parked::default();
        assert_eq!(parked.unpark(Some(b"k"), 9), Unpark::NotParked);
        assert!(parked.park(Some(b"k"), 5));
        assert!(parked.hold(Some(b"k"), 8));
        assert_eq!(parked.unpark(Some(b"k"), 7), Unpark::Behind { last: 8 });
        assert!(parked.hold(Some(b"k"), 9), "still parked");
        assert_eq!(parked.unpark(Some(b"k"), 9), Unpark::Done);
        assert!(!parked.hold(Some(b"k"), 10));
        assert_eq!(parked.len(), 0);
    }

    #[test]
    fn restored_keys_keep_the_earliest_offset() {
        let parked = Parked::default();
        assert!(parked.park(Some(b"k"), 8));
        let at = |at| ParkedKey { at, last: at };
        parked.restore(ParkedKeys::from([
            (Some(b"k".to_vec()), at(3)),
            (Some(b"j".to_vec()), at(4)),
        ]));
        assert!(parked.hold(Some(b"k"), 4));
        assert!(!parked.hold(Some(b"j"), 4));
        assert!(parked.hold(Some(b"j"), 5));
    }
}
