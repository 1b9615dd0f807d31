//! A circuit breaker per object store. It opens after a run of consecutive failures or when
//! the error rate over the recent calls is too high; while open, calls are refused until a
//! backoff runs out; then one trial call (or a successful health probe) may close it again.
//! A failed trial reopens it with a doubled backoff.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A breaker's settings; also the `[storage.failover.breaker]` configuration section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Open when at least this share of the last `error_rate_window` calls failed…
    pub error_rate_threshold: f64,
    pub error_rate_window: usize,
    /// …and at least this many calls were seen.
    pub error_rate_min_calls: usize,
    /// How long an open breaker waits before a trial; doubles after each failed trial.
    #[serde(rename = "open_backoff_initial_ms", with = "crate::domain::millis")]
    pub open_backoff_initial: Duration,
    #[serde(rename = "open_backoff_max_ms", with = "crate::domain::millis")]
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

/// Leave to call a store, to be settled with the call's outcome.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    settled: bool,
}

impl Permit<'_> {
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    pub fn success(mut self) -> Transition {
        self.settled = true;
        self.breaker.record_success(self.trial)
    }

    pub fn failure(mut self, error: &str) -> Transition {
        self.settled = true;
        self.breaker.record_failure(self.trial, error)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            self.breaker.release_trial();
        }
    }
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

    /// A permit for a call to this store, or `None` while the breaker is open. While open,
    /// the first caller after the backoff gets the half-open trial: only its outcome closes
    /// (or reopens) the breaker. A trial permit dropped without an outcome (its call was
    /// cancelled) hands the trial to the next caller.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut inner = self.inner.lock().expect("breaker lock");
        let trial = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                if inner.open_until.is_none_or(|until| Instant::now() < until) {
                    return None;
                }
                inner.state = BreakerState::HalfOpen;
                inner.trial_in_flight = true;
                true
            }
            BreakerState::HalfOpen => {
                if inner.trial_in_flight {
                    return None;
                }
                inner.trial_in_flight = true;
                true
            }
        };
        Some(Permit {
            breaker: self,
            trial,
            settled: false,
        })
    }

    /// A permit for a call made whatever the breaker says (a last resort): its failures
    /// count while the breaker is closed, but it never closes an open breaker.
    pub fn observe(&self) -> Permit<'_> {
        Permit {
            breaker: self,
            trial: false,
            settled: false,
        }
    }

    /// Whether a call could be let through now (closed, or a trial is due and free),
    /// without taking the permit.
    pub fn would_allow(&self) -> bool {
        let inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => inner.open_until.is_some_and(|until| Instant::now() >= until),
            BreakerState::HalfOpen => !inner.trial_in_flight,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().expect("breaker lock").state == BreakerState::Closed
    }

    fn record_success(&self, trial: bool) -> Transition {
        let mut inner = self.inner.lock().expect("breaker lock");
        if trial {
            inner.trial_in_flight = false;
        }
        match inner.state {
            BreakerState::Closed => {
                inner.consecutive_failures = 0;
                Self::remember(&mut inner, &self.config, true);
                Transition::None
            }
            // Only the trial speaks for a store whose breaker is open: an answer to a call
            // made before it opened, or to a last resort, says little about it now.
            _ if !trial => Transition::None,
            _ => {
                inner.state = BreakerState::Closed;
                inner.consecutive_failures = 0;
                inner.open_until = None;
                inner.backoff = self.config.open_backoff_initial;
                // A fresh start: old failures say nothing about the recovered store.
                inner.recent.clear();
                Transition::Closed
            }
        }
    }

    fn record_failure(&self, trial: bool, error: &str) -> Transition {
        let mut inner = self.inner.lock().expect("breaker lock");
        inner.last_error = Some(error.to_owned());
        if trial {
            inner.trial_in_flight = false;
            inner.consecutive_failures += 1;
            inner.backoff = (inner.backoff * 2).min(self.config.open_backoff_max);
            inner.state = BreakerState::Open;
            inner.open_until = Some(Instant::now() + inner.backoff);
            return Transition::None;
        }
        if inner.state != BreakerState::Closed {
            return Transition::None;
        }
        inner.consecutive_failures += 1;
        Self::remember(&mut inner, &self.config, false);
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

    /// A trial that ended without an outcome: the next caller may try.
    fn release_trial(&self) {
        let mut inner = self.inner.lock().expect("breaker lock");
        if inner.state == BreakerState::HalfOpen && inner.trial_in_flight {
            inner.trial_in_flight = false;
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
        assert_eq!(breaker.observe().failure("a"), Transition::None);
        assert_eq!(breaker.observe().failure("b"), Transition::None);
        assert_eq!(breaker.try_acquire().unwrap().failure("c"), Transition::Opened);
        assert!(breaker.try_acquire().is_none());
        assert_eq!(
            breaker.observe().success(),
            Transition::None,
            "a non-trial success does not close it"
        );
        std::thread::sleep(Duration::from_millis(25));
        let trial = breaker.try_acquire().expect("the trial after the backoff");
        assert!(trial.is_trial());
        assert!(breaker.try_acquire().is_none(), "only one trial at a time");
        assert_eq!(trial.success(), Transition::Closed);
        assert!(breaker.try_acquire().is_some());
    }

    #[test]
    fn failed_trials_back_off_exponentially_up_to_the_limit() {
        let breaker = CircuitBreaker::new(quick());
        for _ in 0..3 {
            breaker.observe().failure("down");
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
            breaker.try_acquire().expect("a trial").failure("still down");
        }
        assert!(breaker.snapshot().open_for.unwrap() <= Duration::from_millis(80));
    }

    #[test]
    fn a_cancelled_trial_hands_the_trial_on() {
        let breaker = CircuitBreaker::new(quick());
        for _ in 0..3 {
            breaker.observe().failure("down");
        }
        std::thread::sleep(Duration::from_millis(25));
        drop(breaker.try_acquire().expect("a trial"));
        let next = breaker.try_acquire().expect("the dropped trial is handed on");
        assert_eq!(next.success(), Transition::Closed);
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
                breaker.observe().success();
            } else if breaker.observe().failure("flaky") == Transition::Opened {
                opened = true;
                break;
            }
        }
        assert!(opened, "alternating failures reach a 50% error rate");
    }
}
