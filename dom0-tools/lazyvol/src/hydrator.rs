//! The background hydrator of an open clone: copies every region not yet held by
//! the clone, front-of-queue regions (from `prefetch`) first, yielding to client IO
//! and throttled by a token bucket. It also commits the region map every second, so
//! a restart resumes where it left off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::region_map::FetchKind;
use crate::status;
use crate::volume::Shared;

const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How long the hydrator stands back while clients have IO in flight, at most, once
/// per `YIELD_EVERY` bytes hydrated. Under constant client load this caps the
/// hydrator near YIELD_EVERY per MAX_YIELD plus copy time (hundreds of MB/s), so it
/// neither starves nor hogs; `rate` is the knob for explicit throttling.
const MAX_YIELD: Duration = Duration::from_millis(2);
const YIELD_EVERY: u64 = 1 << 20;

struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// How long to wait before `bytes` may be spent at `rate` bytes/s (0 = now).
    fn delay(&mut self, bytes: u64, rate: u64) -> Duration {
        let now = Instant::now();
        if rate == 0 {
            self.last = now;
            return Duration::ZERO;
        }
        let burst = (rate as f64 / 10.0).max(bytes as f64);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * rate as f64).min(burst);
        self.last = now;
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((bytes as f64 - self.tokens) / rate as f64)
        }
    }
}

/// Bytes/s over the last few seconds, exponentially smoothed.
struct RateMeter {
    window_start: Instant,
    bytes: u64,
    rate: f64,
}

impl RateMeter {
    fn add(&mut self, bytes: u64) -> Option<u64> {
        self.bytes += bytes;
        let el = self.window_start.elapsed().as_secs_f64();
        if el < 0.5 {
            return None;
        }
        let now = self.bytes as f64 / el;
        self.rate = if self.rate == 0.0 {
            now
        } else {
            0.5 * self.rate + 0.5 * now
        };
        self.bytes = 0;
        self.window_start = Instant::now();
        Some(self.rate as u64)
    }
}

fn next_region(shared: &Shared, background: bool, regions: u64) -> Option<u64> {
    let mut q = shared.queue.lock();
    let st = shared.stack.read();
    if !st.dependent() {
        return None;
    }
    while let Some(r) = q.front.pop_front() {
        if r < regions && !st.hydrated(r) {
            return Some(r);
        }
    }
    if background {
        while q.cursor < regions {
            let r = q.cursor;
            q.cursor += 1;
            if !st.hydrated(r) {
                return Some(r);
            }
        }
    }
    None
}

fn commit(shared: &Shared) {
    let st = shared.stack.read();
    let top = st.top();
    match top.map.commit_if_dirty(&top.file) {
        Ok(true) => status::write_stats(shared, true),
        Ok(false) => {}
        Err(e) => tracing::warn!(volume = %shared.name, %e, "periodic commit failed"),
    }
}

/// Thread body; returns when the volume is closed or has become independent.
pub(crate) fn run(shared: Arc<Shared>, background: bool) {
    let regions = shared.stack.read().top().map.regions();
    let region_size = shared.stack.read().top().map.region_size();
    let mut bucket = TokenBucket {
        tokens: 0.0,
        last: Instant::now(),
    };
    let mut meter = RateMeter {
        window_start: Instant::now(),
        bytes: 0,
        rate: 0.0,
    };
    let mut last_commit = Instant::now();
    let mut since_yield = YIELD_EVERY;
    while !shared.stop.load(Ordering::Acquire) {
        if last_commit.elapsed() >= COMMIT_EVERY {
            commit(&shared);
            last_commit = Instant::now();
        }
        let Some(r) = next_region(&shared, background, regions) else {
            match shared.try_become_independent() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(volume = %shared.name, %e, "could not drop the dependency")
                }
            }
            if !shared.stack.read().dependent() {
                break;
            }
            let mut q = shared.queue.lock();
            if q.front.is_empty() && !shared.stop.load(Ordering::Acquire) {
                shared.wake.wait_for(&mut q, COMMIT_EVERY);
            }
            continue;
        };
        // Stand back while clients have IO in flight (bounded, so hydration still
        // progresses under constant load).
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            let yield_start = Instant::now();
            while shared.client_io.load(Ordering::Acquire) > 0 && yield_start.elapsed() < MAX_YIELD
            {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let delay = bucket.delay(region_size, shared.rate_limit.load(Ordering::Acquire));
        if !delay.is_zero() {
            let mut q = shared.queue.lock();
            if !shared.stop.load(Ordering::Acquire) {
                shared.wake.wait_for(&mut q, delay);
            }
            // Retry the same region after the wait (it may have been hydrated meanwhile).
            q.front.push_front(r);
            continue;
        }
        match shared.hydrate_region(r, FetchKind::Background) {
            Ok(Some(bytes)) => {
                since_yield += bytes;
                if let Some(rate) = meter.add(bytes) {
                    shared.measured_rate.store(rate, Ordering::Release);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(volume = %shared.name, region = r, %e, "background hydration failed; retrying");
                shared.queue.lock().front.push_back(r);
                let mut q = shared.queue.lock();
                shared.wake.wait_for(&mut q, COMMIT_EVERY);
            }
        }
    }
    shared.measured_rate.store(0, Ordering::Release);
    commit(&shared);
}
