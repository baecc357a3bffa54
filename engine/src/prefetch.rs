//! A cache prefetch hint: the one place in the workspace that uses `unsafe`.
//!
//! The state update is bound by loads that miss the cache (a key's pane list, its partials,
//! its sets). The processor knows which keys the next rows touch before it reaches them, so it
//! asks the CPU to start loading their memory early, and the misses of several keys overlap
//! instead of waiting one after another. A plain read of that memory in a pass of its own did
//! not help (tried twice, see the README's performance section): a read must complete before
//! it retires, so the core stalls on it as it would on the miss itself.
//!
//! Why `unsafe` is acceptable here: `_mm_prefetch` is a hint. It never faults, whatever the
//! address (a dangling or null pointer is fine), and has no effect a program can observe other
//! than timing. Rust marks it `unsafe` to call only because it is a `#[target_feature(enable =
//! "sse")]` function, and SSE is part of the x86-64 baseline that every x86-64 target has.
//! Elsewhere the hint is a no-op.

/// Hints the CPU to start loading the cache line that holds `p` into every cache level.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see the module docs: SSE is in the x86-64 baseline, and a prefetch never faults
    // and does not dereference `p` in the language's sense.
    #[allow(unsafe_code)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
