//! An output buffer that parallel tasks write disjoint parts of.

/// Raw pointer to an output slice, shared by rayon tasks that each write a disjoint set of
/// elements. Tasks reach the pointer through [`SharedOut::ptr`] so closures capture the whole
/// wrapper (which is `Send + Sync`), not the bare pointer field.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: callers guarantee that concurrent writers touch disjoint elements and that the
// buffer outlives the parallel section.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> SharedOut {
        SharedOut(out.as_mut_ptr())
    }

    #[inline]
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}
