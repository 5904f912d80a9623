//! Cache-line hints for memory that another process reads next (shared-memory rings and
//! landing-region state words).
//!
//! It owns the hint instructions only; it must never read or write the memory it is given.

/// Tells the CPU that the cache line holding `ptr` is for another core: `cldemote` moves it
/// from this core's caches to the shared last level, so the other core's miss on it is served
/// there instead of by a snoop into this core. Only a hint, like a prefetch: it changes no
/// data and cannot fault, whatever `ptr` is, and processors without it execute it as a no-op
/// (its encoding is in the hint-NOP space).
#[inline]
pub(crate) fn demote(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: cldemote neither reads into the program nor writes, and cannot fault, whatever
    // the address; it touches no register but its address operand, and no flags.
    unsafe {
        std::arch::asm!(
            "cldemote [{line}]",
            line = in(reg) ptr,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}
