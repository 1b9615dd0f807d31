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
//! Buffers in use are bounded by the memory budget that pays for them; idle ones by
//! `idle_limit`.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Smaller buffers are left to the allocator.
pub const POOLED_MIN: usize = 1024 * 1024;

#[derive(Debug)]
pub struct BufferPool {
    idle: Mutex<Idle>,
    idle_limit: usize,
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    pub fn new(idle_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Idle::default()),
            idle_limit,
        })
    }

    /// An empty buffer with room for at least `capacity` bytes: the smallest idle one
    /// that fits without being more than twice as large (a buffer holds as much memory as
    /// its capacity, while its holder's budget paid for what it asked), else a new one.
    /// When nothing fits, the oldest idle buffer is freed, so buffers of sizes no longer
    /// asked for do not stay idle.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity >= POOLED_MIN {
            let mut idle = self.idle.lock().expect("buffer pool lock");
            let fitting = idle
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, buffer)| (capacity..=2 * capacity).contains(&buffer.capacity()))
                .min_by_key(|(_, buffer)| buffer.capacity())
                .map(|(at, _)| at);
            let at = match fitting {
                Some(at) => at,
                None if !idle.buffers.is_empty() => {
                    let unfit = idle.buffers.remove(0);
                    idle.bytes -= unfit.capacity();
                    drop(idle);
                    drop(unfit);
                    return Vec::with_capacity(capacity);
                }
                None => return Vec::with_capacity(capacity),
            };
            let buffer = idle.buffers.remove(at);
            idle.bytes -= buffer.capacity();
            return buffer;
        }
        Vec::with_capacity(capacity)
    }

    /// Takes a buffer back for reuse, or frees it when it is small or the pool is full.
    pub fn give(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity < POOLED_MIN {
            return;
        }
        buffer.clear();
        let mut idle = self.idle.lock().expect("buffer pool lock");
        if idle.bytes + capacity <= self.idle_limit {
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
}
