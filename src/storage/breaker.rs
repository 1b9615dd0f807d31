//! A circuit breaker per object store. It opens after a run of consecutive failures or when
//! the error rate over the recent calls is too high; while open, calls are refused until a
//! backoff runs out; then one trial call (or a successful health probe) may close it again.
//! A failed trial reopens it with a doubled backoff.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    /// Open when at least this share of the last `error_rate_window` calls failed…
    pub error_rate_threshold: f64,
    pub error_rate_window: usize,
    /// …and at least this many calls were seen.
    pub error_rate_min_calls: usize,
    pub open_backoff_initial: Duration,
    pub open_backoff_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            error_rate_threshold: 0.5,
            error_rate_window: 20,
            error_rate_min_calls: 10,
            open_backoff_initial: Duration::from_secs(1),
            open_backoff_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    recent: VecDeque<bool>,
    open_until: Option<Instant>,
    backoff: Duration,
    trial_in_flight: bool,
    last_error: Option<String>,
}

/// What a transition did, for logging and failover bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// A snapshot for status reports.
#[derive(Debug, Clone)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub open_for: Option<Duration>,
    pub last_error: Option<String>,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        let backoff = config.open_backoff_initial;
        Self {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                recent: VecDeque::new(),
                open_until: None,
                backoff,
                trial_in_flight: false,
                last_error: None,
            }),
        }
    }

    /// Whether a call may go to this store now. While open, the first call after the backoff
    /// becomes the half-open trial.
    pub fn allows(&self) -> bool {
        let mut inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                if inner.open_until.is_some_and(|until| Instant::now() >= until) {
                    inner.state = BreakerState::HalfOpen;
                    inner.trial_in_flight = true;
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen => {
                if inner.trial_in_flight {
                    false
                } else {
                    inner.trial_in_flight = true;
                    true
                }
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().expect("breaker lock").state == BreakerState::Closed
    }

    pub fn record_success(&self) -> Transition {
        let mut inner = self.inner.lock().expect("breaker lock");
        inner.consecutive_failures = 0;
        Self::remember(&mut inner, &self.config, true);
        inner.trial_in_flight = false;
        if inner.state == BreakerState::Closed {
            return Transition::None;
        }
        inner.state = BreakerState::Closed;
        inner.open_until = None;
        inner.backoff = self.config.open_backoff_initial;
        // A fresh start: old failures say nothing about the recovered store.
        inner.recent.clear();
        Transition::Closed
    }

    pub fn record_failure(&self, error: &str) -> Transition {
        let mut inner = self.inner.lock().expect("breaker lock");
        inner.consecutive_failures += 1;
        inner.last_error = Some(error.to_owned());
        Self::remember(&mut inner, &self.config, false);
        inner.trial_in_flight = false;
        match inner.state {
            BreakerState::HalfOpen => {
                inner.backoff = (inner.backoff * 2).min(self.config.open_backoff_max);
                inner.state = BreakerState::Open;
                inner.open_until = Some(Instant::now() + inner.backoff);
                Transition::None
            }
            BreakerState::Open => Transition::None,
            BreakerState::Closed => {
                let window = inner.recent.len();
                let failures = inner.recent.iter().filter(|ok| !**ok).count();
                let rate_tripped = window >= self.config.error_rate_min_calls
                    && failures as f64 / window as f64 >= self.config.error_rate_threshold;
                if inner.consecutive_failures >= self.config.failure_threshold || rate_tripped {
                    inner.state = BreakerState::Open;
                    inner.backoff = self.config.open_backoff_initial;
                    inner.open_until = Some(Instant::now() + inner.backoff);
                    Transition::Opened
                } else {
                    Transition::None
                }
            }
        }
    }

    fn remember(inner: &mut Inner, config: &BreakerConfig, ok: bool) {
        inner.recent.push_back(ok);
        while inner.recent.len() > config.error_rate_window.max(1) {
            inner.recent.pop_front();
        }
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let inner = self.inner.lock().expect("breaker lock");
        BreakerSnapshot {
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            open_for: inner
                .open_until
                .map(|until| until.saturating_duration_since(Instant::now())),
            last_error: inner.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            open_backoff_initial: Duration::from_millis(20),
            open_backoff_max: Duration::from_millis(80),
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let breaker = CircuitBreaker::new(quick());
        assert_eq!(breaker.record_failure("a"), Transition::None);
        assert_eq!(breaker.record_failure("b"), Transition::None);
        assert_eq!(breaker.record_failure("c"), Transition::Opened);
        assert!(!breaker.allows());
        std::thread::sleep(Duration::from_millis(25));
        assert!(breaker.allows(), "the trial after the backoff");
        assert!(!breaker.allows(), "only one trial at a time");
        assert_eq!(breaker.record_success(), Transition::Closed);
        assert!(breaker.allows());
    }

    #[test]
    fn failed_trials_back_off_exponentially_up_to_the_limit() {
        let breaker = CircuitBreaker::new(quick());
        for _ in 0..3 {
            breaker.record_failure("down");
        }
        let mut previous = Duration::ZERO;
        for _ in 0..4 {
            let open_for = breaker.snapshot().open_for.unwrap();
            assert!(
                open_for >= previous.min(Duration::from_millis(70)),
                "{open_for:?} after {previous:?}"
            );
            previous = open_for;
            std::thread::sleep(open_for + Duration::from_millis(2));
            assert!(breaker.allows());
            breaker.record_failure("still down");
        }
        assert!(breaker.snapshot().open_for.unwrap() <= Duration::from_millis(80));
    }

    #[test]
    fn a_high_error_rate_opens_even_without_a_run_of_failures() {
        let breaker = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 100,
            error_rate_min_calls: 10,
            error_rate_threshold: 0.5,
            ..quick()
        });
        let mut opened = false;
        for i in 0..20 {
            if i % 2 == 0 {
                breaker.record_success();
            } else if breaker.record_failure("flaky") == Transition::Opened {
                opened = true;
                break;
            }
        }
        assert!(opened, "alternating failures reach a 50% error rate");
    }
}
