//! The list of outputs a call returns, counted before it is copied out of
//! the guest: a guest returning a million outputs is stopped on the length
//! of its list, before the host allocates anything for them. (The bytes they
//! carry are bounded by the store's copy budget while they are copied, and
//! checked exactly afterwards.)

use std::cell::Cell;

use wasmtime::ValRaw;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};

thread_local! {
    /// The cap of the call running on this thread. Lifting is a static trait
    /// function with no access to the store, hence a thread-local; calls run
    /// start to end on one worker thread.
    static MAX_OUTPUTS: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Runs `call` with at most `cap` outputs allowed in what it returns.
pub(crate) fn with_max_outputs<R>(cap: usize, call: impl FnOnce() -> R) -> R {
    let previous = MAX_OUTPUTS.replace(cap);
    let result = call();
    MAX_OUTPUTS.set(previous);
    result
}

/// A guest returned more outputs than its cap.
#[derive(Debug, thiserror::Error)]
#[error("{count} outputs, over the cap of {cap} per call")]
pub(crate) struct OutputCountExceeded {
    pub(crate) count: usize,
    pub(crate) cap: usize,
}

/// `list<output>` as returned by `handle`: a `Vec` whose length is checked
/// before its elements are lifted.
pub(crate) struct OutputList<T>(pub(crate) Vec<T>);

fn check_count(count: u32) -> wasmtime::Result<()> {
    let count = count as usize;
    let cap = MAX_OUTPUTS.get();
    if count > cap {
        return Err(OutputCountExceeded { count, cap }.into());
    }
    Ok(())
}

// SAFETY: every item forwards to `Vec<T>`'s implementation, whose canonical
// ABI representation (pointer, length) this type shares exactly.
unsafe impl<T: ComponentType> ComponentType for OutputList<T> {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = <Vec<T> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<T> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: as above; the only addition is reading the length (the second
// word, flat or in memory) before delegating.
unsafe impl<T: Lift> Lift for OutputList<T> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        check_count(src[1].get_u32())?;
        <Vec<T> as Lift>::linear_lift_from_flat(cx, ty, src).map(OutputList)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let length = bytes
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| wasmtime::format_err!("list of outputs is not 8 bytes"))?;
        check_count(length)?;
        <Vec<T> as Lift>::linear_lift_from_memory(cx, ty, bytes).map(OutputList)
    }
}
