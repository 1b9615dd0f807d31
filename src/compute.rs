//! CPU-bound work of the data paths (cutting, hashing, compressing, sealing, decoding)
//! runs here: on a pool of one thread per core, so at most one piece per core at once.
//!
//! More pieces at once than cores would not finish sooner; they would only hold their
//! buffers longer and spread over more threads, and every thread keeps memory of its own
//! (the allocator's per-thread caches, a compression context). With tokio's blocking pool,
//! 16 concurrent uploads ran their pieces on up to 44 threads.

use std::sync::LazyLock;

/// One thread per core, named `artifactd-compute`. Its own threads, not tokio's blocking
/// pool: buffers are allocated by the same few threads however many transfers run, so the
/// allocator's per-thread heaps stay few and warm, where dozens of blocking threads each
/// held freed memory of their own.
static POOL: LazyLock<rayon::ThreadPool> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    rayon::ThreadPoolBuilder::new()
        .num_threads(cores)
        .thread_name(|_| "artifactd-compute".to_owned())
        .build()
        .expect("starting the compute threads")
});

/// Background work's pieces (cache warm-ups) run on a thread of their own, so they never
/// queue ahead of a client's on the pool above: measured, warm-ups sharing the pool made
/// reading a release series in order slower with prefetch than without (0.93).
static BACKGROUND_POOL: LazyLock<rayon::ThreadPool> = LazyLock::new(|| {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "artifactd-background".to_owned())
        .build()
        .expect("starting the background compute thread")
});

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `future` as background work: the pieces it hands to [`run`] go to the background
/// thread.
pub async fn in_background<F: std::future::Future>(future: F) -> F::Output {
    BACKGROUND.scope((), future).await
}

/// Why a piece of work returned nothing.
#[derive(Debug)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `work` on a compute thread once one is free. A caller that stops waiting leaves
/// the piece to finish on its own.
pub async fn run<T, F>(work: F) -> Result<T, Panicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    pool().spawn(move || {
        // Work whose caller went away (a cancelled transfer) would only delay live ones.
        if done.is_closed() {
            return;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a compute task panicked".to_owned());
            Panicked(message)
        });
        let _ = done.send(outcome);
    });
    result
        .await
        .map_err(|_| Panicked("a compute task ended without a result".to_owned()))?
}

/// The pool the caller's pieces run on: the background thread inside [`in_background`].
fn pool() -> &'static rayon::ThreadPool {
    if BACKGROUND.try_with(|_| ()).is_ok() {
        &BACKGROUND_POOL
    } else {
        &POOL
    }
}

/// How many threads run the caller's compute pieces (one per core, one for background work).
pub fn threads() -> usize {
    pool().current_num_threads()
}

/// Runs `work` over `items` cut into parts of at least `min_part` items, at most one part
/// per compute thread, each part a piece of its own (so other transfers' pieces queue
/// between them, never behind a piece waiting for its parts); the results in the parts'
/// order. Few items are one part.
pub async fn run_in_parts<T, R, F>(items: Vec<T>, min_part: usize, work: F) -> Result<Vec<R>, Panicked>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> R + Send + Sync + 'static,
{
    let per_part = items.len().div_ceil(threads()).max(min_part.max(1));
    let work = std::sync::Arc::new(work);
    let mut parts = Vec::new();
    let mut rest = items.into_iter().peekable();
    while rest.peek().is_some() {
        let part: Vec<T> = rest.by_ref().take(per_part).collect();
        let work = work.clone();
        parts.push(run(move || work(part)));
    }
    futures::future::try_join_all(parts).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_pieces_run_at_once_than_cores() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..(cores * 8) {
            let (running, most) = (running.clone(), most.clone());
            tasks.spawn(run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= cores, "{most} pieces ran at once on {cores} cores");
        assert!(most >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_keep_their_order_and_spread_over_the_threads() {
        let cores = threads();
        let items: Vec<usize> = (0..1000).collect();
        let parts = run_in_parts(items.clone(), 10, |part: Vec<usize>| {
            (part, std::thread::current().id())
        })
        .await
        .unwrap();
        assert_eq!(parts.len(), cores.min(100));
        let back: Vec<usize> = parts.iter().flat_map(|(part, _)| part.clone()).collect();
        assert_eq!(back, items);
        // Fewer items than a part's least: one part; none: no part.
        assert_eq!(
            run_in_parts(vec![1, 2, 3], 10, |p: Vec<i32>| p).await.unwrap(),
            [vec![1, 2, 3]]
        );
        assert!(
            run_in_parts(Vec::<i32>::new(), 10, |p| p)
                .await
                .unwrap()
                .is_empty()
        );
        // Background work has one thread: one part.
        let background = in_background(run_in_parts(items, 10, |p: Vec<usize>| p.len()))
            .await
            .unwrap();
        assert_eq!(background, [1000]);
    }

    #[tokio::test]
    async fn background_work_runs_on_its_own_thread() {
        let name = || std::thread::current().name().map(str::to_owned);
        let foreground = run(name).await.unwrap();
        let background = in_background(async { run(name).await.unwrap() }).await;
        assert_eq!(foreground.as_deref(), Some("artifactd-compute"));
        assert_eq!(background.as_deref(), Some("artifactd-background"));
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_its_thread_goes_on_working() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..(cores + 1) {
            let failed = run(|| panic!("deliberate")).await;
            assert!(failed.is_err());
        }
        assert_eq!(run(|| 7).await.unwrap(), 7);
    }
}
