//! Device timing: a mark is a CUDA event recorded on the stream. Events come
//! from a pool and go back to it when the mark is dropped, so recording an op
//! allocates nothing once the pool has warmed up.

use std::sync::{Arc, Mutex};

use cudarc::driver::sys;

use crate::device::{check, Device};
use crate::error::CudaResult;

struct Event(sys::CUevent);
unsafe impl Send for Event {}

pub(crate) struct EventPool {
    free: Mutex<Vec<Event>>,
}

impl EventPool {
    pub fn new() -> Arc<EventPool> {
        Arc::new(EventPool {
            free: Mutex::new(Vec::with_capacity(4096)),
        })
    }
}

impl Drop for EventPool {
    fn drop(&mut self) {
        let free = self.free.get_mut().unwrap_or_else(|e| e.into_inner());
        for e in free.drain(..) {
            unsafe {
                let _ = sys::cuEventDestroy_v2(e.0);
            }
        }
    }
}

/// A recorded point in the stream.
pub struct CudaMark {
    event: sys::CUevent,
    pool: Arc<EventPool>,
}

impl Drop for CudaMark {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(Event(self.event));
    }
}

pub(crate) fn record(dev: &Device, pool: &Arc<EventPool>) -> CudaResult<CudaMark> {
    dev.bind()?;
    let pooled = pool.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let event = match pooled {
        Some(e) => e.0,
        None => {
            let mut e = std::ptr::null_mut();
            check(
                unsafe { sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DEFAULT as u32) },
                "cuEventCreate",
            )?;
            e
        }
    };
    let mark = CudaMark {
        event,
        pool: pool.clone(),
    };
    check(
        unsafe { sys::cuEventRecord(event, dev.stream.0) },
        "cuEventRecord",
    )?;
    Ok(mark)
}

impl CudaMark {
    /// Block until the work queued before this mark is done.
    pub(crate) fn wait(&self, dev: &Device) -> CudaResult<()> {
        dev.bind()?;
        check(
            unsafe { sys::cuEventSynchronize(self.event) },
            "cuEventSynchronize (a kernel failed)",
        )
    }
}

/// Milliseconds between two marks; waits for the second.
pub(crate) fn elapsed_ms(dev: &Device, start: &CudaMark, end: &CudaMark) -> CudaResult<f64> {
    dev.bind()?;
    check(
        unsafe { sys::cuEventSynchronize(end.event) },
        "cuEventSynchronize",
    )?;
    let mut ms = 0f32;
    check(
        unsafe { sys::cuEventElapsedTime_v2(&mut ms, start.event, end.event) },
        "cuEventElapsedTime",
    )?;
    Ok(ms as f64)
}
