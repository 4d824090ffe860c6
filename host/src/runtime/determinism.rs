//! What time it is and what chance gives, inside a guest. Deterministic
//! handlers (the default) see the message's timestamp as the wall clock, a
//! monotonic clock that starts at zero for each call and moves only when the
//! guest sleeps, and randomness seeded from (topic, partition, offset): the
//! same message always gives the same outputs, which is what makes replay,
//! shadow comparison and conflict re-runs sound.
//!
//! Sleeping never blocks a worker past the call's deadline: a deterministic
//! guest's sleep passes in virtual time at once; a non-deterministic one
//! really waits, but only until the deadline, and a call that slept that far
//! ends as past its deadline whatever it returns.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::TryRng;
use sha2::{Digest, Sha256};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::sandbox::GuestState;
use crate::contract::Message;

/// The WASI monotonic-clock interface as the linker names it (wasmtime-wasi
/// 48 implements `wasi:*@0.2.12`; guests built for any 0.2.x match it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Where an instance's clocks and randomness come from.
pub(crate) enum Clocks {
    /// The message being handled: deterministic.
    Message(CallContext),
    /// The host's, with the monotonic clock counted from `origin` (kept here
    /// so that a sleep until an instant reads the clock the guest reads).
    Real { origin: Instant },
}

impl Clocks {
    pub(crate) fn new(deterministic: bool) -> Self {
        if deterministic {
            Clocks::Message(CallContext::new())
        } else {
            Clocks::Real {
                origin: Instant::now(),
            }
        }
    }

    /// Installs these clocks (and, for messages, this randomness) in a WASI
    /// context; real randomness is the builder's own.
    pub(crate) fn install(&self, wasi: &mut wasmtime_wasi::WasiCtxBuilder) {
        match self {
            Clocks::Message(call) => {
                wasi.wall_clock(WallClock(call.clone()))
                    .monotonic_clock(MonotonicClock(call.clone()))
                    .secure_random(Random(call.clone()))
                    .insecure_random(Random(call.clone()))
                    .insecure_random_seed(0x5eed);
            }
            Clocks::Real { origin } => {
                wasi.monotonic_clock(RealMonotonicClock(*origin));
            }
        }
    }

    /// Sets the clocks and the random seed for a call on `msg`.
    pub(crate) fn begin(&self, msg: &Message) {
        if let Clocks::Message(call) = self {
            call.begin(msg);
        }
    }
}

/// The clocks and randomness of one deterministic instance, reset for every call.
#[derive(Clone)]
pub(crate) struct CallContext(Arc<Mutex<CallState>>);

struct CallState {
    /// Milliseconds since the Unix epoch the wall clock reads.
    wall_ms: u64,
    /// Virtual nanoseconds since the call began.
    monotonic_ns: u64,
    random: SeededRandom,
}

impl CallContext {
    fn new() -> Self {
        CallContext(Arc::new(Mutex::new(CallState {
            wall_ms: 0,
            monotonic_ns: 0,
            random: SeededRandom::new(b"sluice:instantiate"),
        })))
    }

    fn begin(&self, msg: &Message) {
        let mut state = self.lock();
        state.wall_ms = msg.timestamp;
        state.monotonic_ns = 0;
        state.random.reseed(msg);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.0.lock().expect("call context lock")
    }
}

/// Real time, in nanoseconds since the instance was made.
struct RealMonotonicClock(Instant);

impl RealMonotonicClock {
    fn nanos(origin: Instant) -> u64 {
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl HostMonotonicClock for RealMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        RealMonotonicClock::nanos(self.0)
    }
}

struct WallClock(CallContext);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.0.lock().wall_ms)
    }
}

struct MonotonicClock(CallContext);

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.lock().monotonic_ns
    }
}

struct Random(CallContext);

impl TryRng for Random {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.lock().random.fill(dst);
        Ok(())
    }
}

/// SHA-256 in counter mode: the same seed gives the same bytes on every
/// host and every release, which a general-purpose generator does not promise.
struct SeededRandom {
    seed: [u8; 32],
    /// A message's place (topic, 0, partition, offset), not hashed into
    /// `seed` until the guest first asks for bytes: most handlers never do,
    /// and the two SHA-256 it takes were a cost on every call. Empty once
    /// hashed (a place never is).
    place: Vec<u8>,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRandom {
    fn new(seed: &[u8]) -> Self {
        SeededRandom {
            seed: Sha256::digest(seed).into(),
            place: Vec::new(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    /// Starts over from `msg`'s place: the bytes are those of
    /// `SeededRandom::new(&sha256(place))`, as in every release before.
    fn reseed(&mut self, msg: &Message) {
        self.place.clear();
        self.place.extend_from_slice(msg.topic.as_bytes());
        self.place.push(0);
        self.place.extend_from_slice(&msg.partition.to_be_bytes());
        self.place.extend_from_slice(&msg.offset.to_be_bytes());
        self.counter = 0;
        self.used = self.block.len();
    }

    fn fill(&mut self, mut dst: &mut [u8]) {
        if !self.place.is_empty() {
            self.seed = Sha256::digest(Sha256::digest(&self.place)).into();
            self.place.clear();
        }
        while !dst.is_empty() {
            if self.used == self.block.len() {
                let mut hash = Sha256::new();
                hash.update(self.seed);
                hash.update(self.counter.to_le_bytes());
                self.block = hash.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            let n = dst.len().min(self.block.len() - self.used);
            dst[..n].copy_from_slice(&self.block[self.used..self.used + n]);
            self.used += n;
            dst = &mut dst[n..];
        }
    }
}

/// Replaces WASI's sleeps (`subscribe-duration`, `subscribe-instant`) with
/// ones that never outlast the call's deadline, and that pass in virtual
/// time for deterministic guests.
pub(crate) fn add_sleeps_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |store: StoreContextMut<'_, GuestState>, (duration,): (u64,)| {
            Ok((sleep(store, |_| duration)?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |store: StoreContextMut<'_, GuestState>, (when,): (u64,)| {
            Ok((sleep(store, |now| when.saturating_sub(now))?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A pollable that is ready once `duration(now)` nanoseconds have passed on
/// the guest's monotonic clock.
fn sleep(
    mut store: StoreContextMut<'_, GuestState>,
    duration: impl Fn(u64) -> u64,
) -> wasmtime::Result<Resource<DynPollable>> {
    let state = store.data_mut();
    let wake = match state.clocks() {
        Clocks::Message(call) => {
            let mut call = call.lock();
            call.monotonic_ns = call
                .monotonic_ns
                .saturating_add(duration(call.monotonic_ns));
            Wake::Now
        }
        Clocks::Real { origin } => {
            let now = RealMonotonicClock::nanos(*origin);
            let until = Instant::now()
                .checked_add(Duration::from_nanos(duration(now)))
                .unwrap_or_else(far_future);
            match state.sleep_deadline() {
                // Woken at the deadline; the call then counts as past it.
                Some(deadline) if until > deadline => {
                    state.overslept();
                    Wake::At(deadline)
                }
                _ => Wake::At(until),
            }
        }
    };
    let table = state.table();
    let pollable = table.push(wake)?;
    subscribe(table, pollable)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// When a guest's sleep ends.
enum Wake {
    Now,
    At(Instant),
}

#[wasmtime_wasi::async_trait]
impl Pollable for Wake {
    async fn ready(&mut self) {
        if let Wake::At(until) = self {
            tokio::time::sleep_until((*until).into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64) -> Message {
        Message {
            topic: "orders".into(),
            partition: 3,
            offset,
            key: None,
            payload: vec![],
            headers: vec![],
            timestamp: 1_700_000_000_123,
        }
    }

    fn draw(context: &CallContext) -> [u8; 40] {
        let mut bytes = [0; 40];
        Random(context.clone()).try_fill_bytes(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_seed_hashed_late_gives_the_bytes_it_always_gave() {
        // Replays of recorded runs depend on these bytes staying the same.
        let mut place = b"orders\0".to_vec();
        place.extend_from_slice(&3i32.to_be_bytes());
        place.extend_from_slice(&7i64.to_be_bytes());
        let mut eager = SeededRandom::new(&Sha256::digest(&place));
        let mut expected = [0; 40];
        eager.fill(&mut expected);
        let context = CallContext::new();
        context.begin(&message(7));
        assert_eq!(draw(&context), expected);
    }

    #[test]
    fn a_call_sees_its_message_time_and_a_seed_of_its_own() {
        let context = CallContext::new();
        context.begin(&message(7));
        assert_eq!(
            WallClock(context.clone()).now(),
            Duration::from_millis(1_700_000_000_123)
        );
        assert_eq!(MonotonicClock(context.clone()).now(), 0);
        let first = draw(&context);
        assert_ne!(first, draw(&context), "the stream moves on within a call");

        // The same message again: the same numbers, from the start.
        context.begin(&message(7));
        assert_eq!(first, draw(&context));
        // Another offset: other numbers.
        context.begin(&message(8));
        assert_ne!(first, draw(&context));
    }
}
