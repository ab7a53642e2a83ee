//! A decode team: persistent worker threads that spin between products.
//!
//! A decode token is ~100-200 small products (a few hundred KiB to a few MiB
//! of weights each, tens to hundreds of microseconds) separated by serial
//! ops of a few microseconds. Handing each product to the rayon pool
//! (`install`) parks the calling thread on a lock and wakes pool threads
//! that went to sleep between products: tens of microseconds per product on
//! the development machine, several percent of a token. The team instead
//! keeps `threads - 1` workers spinning on a generation counter for a short
//! while after each job (as llama.cpp's thread pool does), and the calling
//! thread takes a share of every job itself, so a hand-off costs an atomic
//! store and a cache-line transfer. Workers that see no job for
//! [`SPIN`] park on a condition variable, so an idle process burns no CPU.
//!
//! Each thread first takes its own tasks (task `i` of a job with as many
//! tasks as threads is thread `i`'s, so a row kernel's thread streams the
//! same rows token after token), each claimed on a line of its own; then
//! any task still unclaimed, so that the share of a thread that joins late
//! (slowed by something else on a shared machine) goes to one that is done.
//! A job's start and end touch no line that every thread writes: with a
//! shared task counter and a shared count of the workers in a job (four
//! contended read-modify-writes a thread a job, most of them in the burst
//! when every worker wakes at once), a job of 16 tasks of 2 us took 5.0-5.4
//! us on a 16-core Xeon; with the lines apart 3.9-4.0 us
//! (`examples/decode_products_bench.rs`), where a SmolLM2 decode product
//! at 16 threads takes 6-14 us.

use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks: longer than the serial
/// ops between two products of a decode step (norms, rope, attention of a
/// short context: tens of microseconds), shorter than a person notices as
/// a busy CPU.
const SPIN: Duration = Duration::from_millis(2);

/// Jobs of at most this many tasks claim each task on a line of its own;
/// larger ones (prefill's many small tasks) share one counter, whose cost
/// their tasks amortise.
const CLAIMS: usize = 64;

/// A worker's `busy` value while it is in no job (generations start at 1).
const IDLE: usize = 0;

/// A job: its tasks, on the calling thread's stack while `Team::run` runs
/// it. `generation` tags its claims; `next` is the shared counter of jobs
/// of more than [`CLAIMS`] tasks, on a line of its own.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync + 'a),
    tasks: usize,
    generation: usize,
    next: CachePadded<AtomicUsize>,
}

impl Job<'_> {
    /// Run the tasks thread `me` of `threads` gets: its own (`me`, `me +
    /// threads`, ...), then any other still unclaimed.
    fn take_tasks(&self, s: &Shared, me: usize, threads: usize) {
        if self.tasks > CLAIMS {
            loop {
                let t = self.next.fetch_add(1, Ordering::Relaxed);
                if t >= self.tasks {
                    break;
                }
                (self.f)(t);
            }
            return;
        }
        let g = self.generation;
        // Exclusive by the swap alone: the task's writes reach the caller
        // through `busy` (workers) or are the caller's own.
        let claim = |t: usize| s.claims[t].swap(g, Ordering::Relaxed) != g;
        for t in (me..self.tasks).step_by(threads.max(1)) {
            if claim(t) {
                (self.f)(t);
            }
        }
        for t in 0..self.tasks {
            if s.claims[t].load(Ordering::Relaxed) != g && claim(t) {
                (self.f)(t);
            }
        }
    }
}

/// What the caller and the workers share. `generation` and `job`, which
/// idle workers spin on and read once a job, share a line written by the
/// caller alone (twice a job); every other line a job touches is written by
/// one thread: a worker's `busy`, a task's claim.
struct Shared {
    head: CachePadded<Head>,
    /// Per worker (index `i - 1` for worker `i`): the generation of the job
    /// it is in, or [`IDLE`]. A worker sets it before it reads `job`; the
    /// caller clears `job` before it waits for every `busy` to leave its
    /// generation, so a worker either is waited for or sees no job.
    busy: Box<[CachePadded<AtomicUsize>]>,
    /// Per task slot (jobs of at most [`CLAIMS`] tasks): the generation
    /// that last claimed it.
    claims: Box<[CachePadded<AtomicUsize>]>,
    /// Threads a job is split over (the caller and the workers asked for).
    threads: usize,
    /// Workers parked (or about to park) on `wake`.
    sleeping: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
    /// A task panicked on a worker: the caller panics too once all are out.
    panicked: AtomicBool,
}

struct Head {
    /// Bumped for every job: what idle workers spin (then wait) on.
    generation: AtomicUsize,
    /// The job being run, or null.
    job: AtomicPtr<()>,
}

thread_local! {
    /// Set on team workers and on a caller inside `run`: a product started
    /// from inside a job runs serially instead of waiting on its own team.
    static IN_TEAM: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is running a team job (nested work runs serially).
pub fn in_team() -> bool {
    IN_TEAM.with(Cell::get)
}

thread_local! {
    /// The team that products started on this thread run on (see [`with`]).
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Run `f` with `team` as this thread's current team: the row kernels'
/// task loops (`matmul::try_for_each_task`) then run on it instead of the
/// rayon pool.
pub fn with<R>(team: &Team, f: impl FnOnce() -> R) -> R {
    struct Restore(*const Team);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(team)));
    f()
}

/// Run `f` on the current team, if this thread has one (see [`with`]).
pub fn current<R>(f: impl FnOnce(&Team) -> R) -> Option<R> {
    let t = CURRENT.with(Cell::get);
    // SAFETY: `with` sets the pointer from a reference that outlives its
    // closure and restores the previous value when the closure ends.
    (!t.is_null()).then(|| f(unsafe { &*t }))
}

pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held while a job runs: a second caller (another thread of the
    /// process using the same backend) runs its job serially rather than
    /// interleave with the first.
    running: Mutex<()>,
}

impl Team {
    /// A team of `threads` (the caller plus `threads - 1` workers). A worker
    /// that cannot be started leaves a smaller team, not an error: the
    /// caller and the others run the tasks the missing workers would have.
    pub fn new(threads: usize) -> Team {
        let threads = threads.max(1);
        let padded = |n: usize| {
            (0..n)
                .map(|_| CachePadded::new(AtomicUsize::new(IDLE)))
                .collect()
        };
        let shared = Arc::new(Shared {
            head: CachePadded::new(Head {
                generation: AtomicUsize::new(0),
                job: AtomicPtr::new(std::ptr::null_mut()),
            }),
            busy: padded(threads - 1),
            claims: padded(CLAIMS),
            threads,
            sleeping: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .filter_map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("metallic-team-{i}"))
                    .spawn(move || worker(&s, i))
                    .ok()
            })
            .collect();
        Team {
            shared,
            workers,
            running: Mutex::new(()),
        }
    }

    /// Threads that take part in a job: the workers and the caller.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(0)`, ..., `f(tasks - 1)` on the team and the calling thread;
    /// returns when every task is done. From inside a job, or while another
    /// thread's job runs, the tasks run on the calling thread in order.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        let guard = if self.workers.is_empty() || tasks == 1 || in_team() {
            None
        } else {
            self.running.try_lock().ok()
        };
        let Some(_guard) = guard else {
            (0..tasks).for_each(f);
            return;
        };
        let s = &*self.shared;
        // Only a caller holding `running` (or the team's drop) writes it.
        let generation = s.head.generation.load(Ordering::Relaxed) + 1;
        let job = Job {
            f,
            tasks,
            generation,
            next: CachePadded::new(AtomicUsize::new(0)),
        };
        s.head
            .job
            .store(&job as *const Job<'_> as *mut (), Ordering::SeqCst);
        s.head.generation.store(generation, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this notify after a parking worker's
            // last look at the generation (it holds the lock until it waits).
            drop(s.park.lock().unwrap_or_else(|e| e.into_inner()));
            s.wake.notify_all();
        }
        IN_TEAM.with(|c| c.set(true));
        // Closes the job and waits for the workers in it, also when a task
        // of this thread panics: `job` must outlive every worker's use.
        let close = Close(s, generation);
        job.take_tasks(s, 0, s.threads);
        drop(close);
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a task of the CPU decode team panicked");
        }
    }
}

/// Clears the published job and waits until no worker is inside it.
struct Close<'a>(&'a Shared, usize);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        let (s, generation) = (self.0, self.1);
        s.head.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        for b in s.busy.iter() {
            let mut spins = 0u32;
            while b.load(Ordering::SeqCst) == generation {
                spins = spins.wrapping_add(1);
                relax(spins);
            }
        }
        IN_TEAM.with(|c| c.set(false));
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.head.generation.fetch_add(1, Ordering::SeqCst);
        drop(s.park.lock().unwrap_or_else(|e| e.into_inner()));
        s.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One round of a wait loop: a pause instruction for the first rounds (a
/// hand-off between products takes a few microseconds), then a yield, so
/// that on a machine with more runnable threads than cores a waiting thread
/// gives its core to the one it waits for instead of spinning it away.
#[inline]
fn relax(spins: u32) {
    if spins < 256 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Worker `me` (1..threads): spin, then park, until a new generation; enter
/// its job if it is still the published one.
fn worker(s: &Shared, me: usize) {
    IN_TEAM.with(|c| c.set(true));
    let busy = &s.busy[me - 1];
    // The generation the team was created with, not a fresh load: a job or
    // the team's drop may bump it before this thread first runs.
    let mut seen = 0;
    loop {
        // Spin for a new generation, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        seen = loop {
            let g = s.head.generation.load(Ordering::SeqCst);
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            relax(spins);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut lock = s.park.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.head.generation.load(Ordering::SeqCst) == seen {
                    lock = s.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
            }
        };
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // Announce the generation, then read the job, then check that the
        // generation has not moved: the caller publishes a job before its
        // generation, so a job read before an unchanged generation is that
        // generation's, and its caller, which clears the job before it
        // reads `busy`, waits for this worker (sequentially consistent
        // order: either it sees `busy` or this thread sees the cleared job).
        busy.store(seen, Ordering::SeqCst);
        let job = s.head.job.load(Ordering::SeqCst) as *const Job<'static>;
        if !job.is_null() && s.head.generation.load(Ordering::SeqCst) == seen {
            // SAFETY: see above: the job's caller waits for `busy` to leave
            // `seen` before the job goes out of scope. Only the lifetime is
            // erased.
            let job: &Job<'_> = unsafe { &*job };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job.take_tasks(s, me, s.threads)
            }));
            if run.is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        // Release: the tasks' writes before the caller's return.
        busy.store(IDLE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_teams_of_every_size() {
        for threads in [1, 2, 3, 8] {
            let team = Team::new(threads);
            // Fewer, as many and more tasks than threads; both sides of
            // the claimed-slot limit.
            for tasks in [0, 1, 2, 7, CLAIMS, CLAIMS + 1, 100] {
                for _round in 0..50 {
                    let seen: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    team.run(tasks, &|t| {
                        seen[t].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(
                        seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                        "threads={threads} tasks={tasks}"
                    );
                }
            }
        }
    }

    #[test]
    fn parked_workers_wake_for_the_next_job() {
        let team = Team::new(3);
        let start = Instant::now();
        while team.shared.sleeping.load(Ordering::SeqCst) < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "workers never parked"
            );
            std::thread::sleep(SPIN);
        }
        let count = AtomicUsize::new(0);
        team.run(64, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_job_started_inside_a_job_runs_serially() {
        let team = Team::new(2);
        let count = AtomicUsize::new(0);
        team.run(4, &|_| {
            assert!(in_team());
            team.run(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
        assert!(!in_team());
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_leaves_the_team_usable() {
        let team = Team::new(3);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(30, &|t| assert!(t != 17, "task 17"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        team.run(30, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 30);
    }

    /// A decode product split over the team (the calling thread included)
    /// writes exactly what the same product on one thread does: the split
    /// only chooses which thread computes a row, never how.
    #[test]
    fn row_kernels_on_the_team_match_the_serial_product_bit_for_bit() {
        use crate::matmul::{self, FDOT, VECDOT};
        use metallic::backend::WeightView;
        use metallic_gguf::{quant, GgmlType, GgufFile, GgufWriter};

        let (n, k) = (1000, 896);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::F16,
        ] {
            let data: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0)
                .collect();
            let mut wr = GgufWriter::new();
            wr.add_tensor(
                "w",
                ty,
                &[k as u64, n as u64],
                quant::quantize(ty, &data).unwrap(),
            )
            .unwrap();
            let mut buf = Vec::new();
            wr.write_to(&mut buf).unwrap();
            let file = Arc::new(GgufFile::from_bytes(buf).unwrap());
            let view = WeightView::new(file.clone(), file.tensors()[0].clone());
            let w = crate::CpuLinear::new(&[view], None).unwrap();
            assert!(
                matmul::work(&w, 1) >= matmul::SERIAL_WORK,
                "the product must go parallel"
            );
            let team = Team::new(3);
            for m in [1, 3] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0)
                    .collect();
                for imp in [VECDOT, FDOT] {
                    let mut serial = vec![f32::NAN; m * n];
                    let one = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .unwrap();
                    one.install(|| matmul::run(imp, &x, &w, m, &mut serial))
                        .unwrap();
                    let mut teamed = vec![f32::NAN; m * n];
                    with(&team, || matmul::run(imp, &x, &w, m, &mut teamed)).unwrap();
                    let same = serial
                        .iter()
                        .zip(&teamed)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{} {} m={m}", ty.name(), matmul::IMPLS[imp].name);
                }
            }
        }
    }
}
