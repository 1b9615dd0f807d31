//! Large transfer buffers (a pack being filled, a span being decoded) are used again
//! rather than freed and allocated anew.
//!
//! Buffers of several MiB come and go many times a second under load. Freed, the
//! allocator keeps their pages for a while (and spreads them over its per-thread heaps), or
//! gives them back and faults them in again on the next allocation: measured with 16
//! concurrent 256 MiB uploads then downloads, the server's peak heap was 236 MiB while its
//! resident memory reached 600-650 MiB; with every large buffer given back at once it was
//! 276 MiB but downloads ran a quarter slower. Kept here instead, a buffer is neither.
//!
//! Buffers in use are bounded by the memory budget that pays for them. Idle ones are kept
//! up to a fixed floor, and beyond it up to what that budget has free (see
//! [`BufferPool::with_room`]): buffers in use and idle ones together stay within the
//! budget, and a download that reads several spans ahead, whose buffers come back and are
//! asked for again in bursts, finds them all again while the server is not busy.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Smaller buffers are left to the allocator.
pub const POOLED_MIN: usize = 1024 * 1024;

pub struct BufferPool {
    idle: Mutex<Idle>,
    idle_limit: usize,
    /// Free bytes of the budget that pays for buffers in use, when idle ones may take them.
    room: Option<Box<dyn Fn() -> usize + Send + Sync>>,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("idle_limit", &self.idle_limit)
            .field("idle_bytes", &self.idle_bytes())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl Idle {
    fn take_at(&mut self, at: usize) -> Vec<u8> {
        let buffer = self.buffers.remove(at);
        self.bytes -= buffer.capacity();
        buffer
    }
}

impl BufferPool {
    pub fn new(idle_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Idle::default()),
            idle_limit,
            room: None,
        })
    }

    /// A pool whose idle buffers may hold `idle_limit` bytes, and beyond that what `room`
    /// says the budget paying for buffers in use has free: when that budget fills, idle
    /// buffers past the floor are let go as buffers are asked for.
    pub fn with_room(idle_limit: usize, room: impl Fn() -> usize + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Idle::default()),
            idle_limit,
            room: Some(Box::new(room)),
        })
    }

    /// What idle buffers may hold now.
    fn limit(&self) -> usize {
        self.idle_limit.max(self.room.as_ref().map_or(0, |room| room()))
    }

    /// An empty buffer with room for at least `capacity` bytes: the smallest idle one
    /// that fits without being more than twice as large (a buffer holds as much memory as
    /// its capacity, while its holder's budget paid for what it asked), else a new one of
    /// the request's [`size_class`]. When nothing fits, the oldest idle buffer is freed, so
    /// buffers of sizes no longer asked for do not stay idle.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity < POOLED_MIN {
            return Vec::with_capacity(capacity);
        }
        let capacity = size_class(capacity);
        let limit = self.limit();
        // Freed once the lock is let go.
        let mut freed = Vec::new();
        let found = {
            let mut idle = self.idle.lock().expect("buffer pool lock");
            // The budget filled since these were kept: the oldest go.
            while idle.bytes > limit && !idle.buffers.is_empty() {
                freed.push(idle.take_at(0));
            }
            let fitting = idle
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, buffer)| (capacity..=2 * capacity).contains(&buffer.capacity()))
                .min_by_key(|(_, buffer)| buffer.capacity())
                .map(|(at, _)| at);
            match fitting {
                Some(at) => Some(idle.take_at(at)),
                None => {
                    if !idle.buffers.is_empty() {
                        freed.push(idle.take_at(0));
                    }
                    None
                }
            }
        };
        drop(freed);
        found.unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Takes a buffer back for reuse, or frees it when it is small or the pool is full.
    pub fn give(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity < POOLED_MIN {
            return;
        }
        buffer.clear();
        let limit = self.limit();
        let mut idle = self.idle.lock().expect("buffer pool lock");
        if idle.bytes + capacity <= limit {
            idle.bytes += capacity;
            idle.buffers.push(buffer);
        }
    }

    /// `buffer` as `Bytes` that come back to the pool once every slice of them is dropped.
    pub fn wrap(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() < POOLED_MIN {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Pooled {
            buffer,
            pool: self.clone(),
        })
    }

    /// Bytes held by idle buffers.
    pub fn idle_bytes(&self) -> usize {
        self.idle.lock().expect("buffer pool lock").bytes
    }
}

/// `capacity` rounded up to one of eight sizes a doubling (at most an eighth more). Packs
/// are their target size plus up to a chunk, and the spans that read them as long: asked
/// for exactly, half the buffers given back were a little too small for the next request,
/// so they were freed and a new one mapped and faulted in, page by page, for every pack
/// read. Rounded, one buffer serves them all. Untouched, the extra capacity takes no
/// memory.
fn size_class(capacity: usize) -> usize {
    let floor = 1usize << (usize::BITS - 1 - capacity.leading_zeros());
    capacity.next_multiple_of((floor / 8).max(1))
}

struct Pooled {
    buffer: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_is_dropped_and_is_used_again() {
        let pool = BufferPool::new(64 * MIB);
        let mut buffer = pool.take(4 * MIB);
        buffer.extend(std::iter::repeat_n(7u8, 4 * MIB));
        let address = buffer.as_ptr();
        let bytes = pool.wrap(buffer);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert!(pool.idle_bytes() >= 4 * MIB);
        let again = pool.take(2 * MIB);
        assert_eq!(again.as_ptr(), address, "the idle buffer is reused");
        assert!(again.is_empty() && again.capacity() >= 4 * MIB);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn the_smallest_fitting_buffer_is_chosen_and_idle_bytes_stay_bounded() {
        let pool = BufferPool::new(10 * MIB);
        let (big, small) = (pool.take(8 * MIB), pool.take(2 * MIB));
        let small_at = small.as_ptr();
        pool.give(big);
        pool.give(small);
        assert_eq!(pool.idle_bytes(), 10 * MIB);
        pool.give(Vec::with_capacity(4 * MIB));
        assert_eq!(pool.idle_bytes(), 10 * MIB, "past the limit a buffer is freed");
        let reused = pool.take(MIB + 1);
        assert_eq!(reused.as_ptr(), small_at);
        assert_eq!(pool.idle_bytes(), 8 * MIB);
        // Within twice the request, the idle buffer serves.
        let within = pool.take(5 * MIB);
        assert_eq!(within.capacity(), 8 * MIB);
        assert_eq!(pool.idle_bytes(), 0);
        pool.give(within);
        // Far larger than asked is not handed out, and an idle buffer that fits nothing
        // asked for is let go.
        let fresh = pool.take(3 * MIB);
        assert_eq!(fresh.capacity(), 3 * MIB);
        assert_eq!(pool.idle_bytes(), 0);
        drop((reused, fresh));
        pool.give(Vec::with_capacity(1024));
        assert_eq!(pool.idle_bytes(), 0, "small buffers are not kept");
    }

    #[test]
    fn buffers_of_nearly_equal_requests_serve_each_other() {
        let pool = BufferPool::new(16 * MIB);
        // Packs of a little over the 8 MiB target, in either order.
        for (first, second) in [
            (8 * MIB + 100_000, 8 * MIB + 50_000),
            (8 * MIB + 50_000, 8 * MIB + 100_000),
        ] {
            let buffer = pool.take(first);
            assert_eq!(buffer.capacity(), 9 * MIB);
            let address = buffer.as_ptr();
            pool.give(buffer);
            let again = pool.take(second);
            assert_eq!(again.as_ptr(), address, "{first} then {second}");
        }
        for (asked, class) in [
            (MIB, MIB),
            (MIB + 1, MIB + MIB / 8),
            (3 * MIB - 1, 3 * MIB),
            (8 * MIB, 8 * MIB),
            (16 * MIB + 1, 18 * MIB),
        ] {
            assert_eq!(size_class(asked), class, "{asked}");
            assert!(class >= asked && class - asked <= asked / 8);
        }
    }

    /// Spans read ahead come back in a burst and are asked for again in a burst: while the
    /// budget has room, every one is kept and found again; as it fills, idle buffers past
    /// the floor go.
    #[test]
    fn idle_buffers_use_the_budget_s_free_room_and_give_it_up() {
        let free = Arc::new(std::sync::atomic::AtomicUsize::new(64 * MIB));
        let room = free.clone();
        let pool = BufferPool::with_room(16 * MIB, move || room.load(std::sync::atomic::Ordering::SeqCst));
        let buffers: Vec<Vec<u8>> = (0..4).map(|_| pool.take(8 * MIB + 1000)).collect();
        let addresses: std::collections::HashSet<_> = buffers.iter().map(|b| b.as_ptr()).collect();
        for buffer in buffers {
            pool.give(buffer);
        }
        assert_eq!(pool.idle_bytes(), 36 * MIB, "all four kept: the budget has room");
        let again: Vec<Vec<u8>> = (0..4).map(|_| pool.take(8 * MIB + 2000)).collect();
        assert!(
            again.iter().all(|b| addresses.contains(&b.as_ptr())),
            "all four found again"
        );
        for buffer in again {
            pool.give(buffer);
        }
        // The budget fills: the next request lets idle buffers past the floor go.
        free.store(0, std::sync::atomic::Ordering::SeqCst);
        let taken = pool.take(8 * MIB);
        assert!(pool.idle_bytes() <= 16 * MIB, "{}", pool.idle_bytes());
        pool.give(taken);
        assert!(pool.idle_bytes() <= 16 * MIB, "a full budget keeps the floor");
    }
}
