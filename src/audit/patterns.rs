//! Access-pattern analysis over the calls this replica serves: read rates per principal and
//! per artifact, and flags for what deserves a look: a principal reading far more than its
//! own baseline, reading across many projects, or piling up refusals. Flags are counted in
//! metrics and kept (the newest ones) for `AuditService.GetAccessFlags`.

use crate::domain::Timestamp;
use crate::domain::audit::AuditRecord;
use crate::telemetry::names;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The thresholds, from `audit.patterns`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PatternSettings {
    /// A principal reading more than this many times its usual rate per minute ...
    pub read_spike_factor: f64,
    /// ... and at least this many times in one minute.
    pub read_spike_min: u64,
    /// Distinct projects one principal reads within `window_seconds`.
    pub many_projects: usize,
    /// Refusals of one principal (or one address, unproven) within a minute.
    pub denial_burst: u64,
    pub window_seconds: u64,
}

impl Default for PatternSettings {
    fn default() -> Self {
        Self {
            read_spike_factor: 10.0,
            read_spike_min: 100,
            many_projects: 5,
            denial_burst: 20,
            window_seconds: 300,
        }
    }
}

/// A pattern that deserves a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    ReadSpike,
    ManyProjects,
    DenialBurst,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadSpike => "read_spike",
            Self::ManyProjects => "many_projects",
            Self::DenialBurst => "denial_burst",
        }
    }
}

/// A principal or an artifact: its name, its reads this minute, its usual reads per minute.
pub type Busy = (String, u64, f64);

#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub at: Timestamp,
    pub tenant: String,
    /// The principal, or `peer:<address>` for refusals of unproven callers.
    pub principal: String,
    pub pattern: Pattern,
    pub detail: String,
}

/// A read rate: this minute's count and the average of the minutes before.
#[derive(Debug, Clone)]
struct Rate {
    minute: Instant,
    count: u64,
    /// Exponentially weighted per-minute average of completed minutes.
    baseline: f64,
    last_seen: Instant,
}

impl Rate {
    fn new(now: Instant) -> Self {
        Self {
            minute: now,
            count: 0,
            baseline: 0.0,
            last_seen: now,
        }
    }

    /// The count of the minute under way at `now` (none when that minute is over).
    fn current(&self, now: Instant) -> u64 {
        if now.duration_since(self.minute) < Duration::from_secs(60) {
            self.count
        } else {
            0
        }
    }

    /// Counts one event; whether a new minute began.
    fn tick(&mut self, now: Instant) -> bool {
        self.last_seen = now;
        let elapsed = now.duration_since(self.minute);
        if elapsed < Duration::from_secs(60) {
            self.count += 1;
            return false;
        }
        // Whole idle minutes count as zero.
        let minutes = (elapsed.as_secs() / 60).max(1);
        self.baseline = 0.8 * self.baseline + 0.2 * self.count as f64;
        for _ in 1..minutes.min(30) {
            self.baseline *= 0.8;
        }
        self.minute = now;
        self.count = 1;
        true
    }
}

#[derive(Debug)]
struct Principal {
    reads: Rate,
    denials: Rate,
    projects: HashMap<String, Instant>,
    /// When each pattern last flagged, so one episode flags once per window.
    flagged: HashMap<Pattern, Instant>,
}

#[derive(Debug, Default)]
struct State {
    principals: HashMap<(String, String), Principal>,
    artifacts: HashMap<(String, String), Rate>,
    flags: VecDeque<Flag>,
}

/// Most principals and artifacts followed; the least recently seen make room.
const MAX_TRACKED: usize = 10_000;
/// Flags kept for the call that lists them.
const MAX_FLAGS: usize = 1000;

#[derive(Debug)]
pub struct AccessPatterns {
    settings: PatternSettings,
    state: Mutex<State>,
}

fn is_read(action: &str) -> bool {
    matches!(
        crate::identity::policy::of(&format!("/{action}")),
        Some(crate::identity::policy::Policy::Scoped(
            crate::domain::access::Permission::Read
        ))
    )
}

impl AccessPatterns {
    pub fn new(settings: PatternSettings) -> Self {
        Self {
            settings,
            state: Mutex::default(),
        }
    }

    /// Takes one finished call into account.
    pub fn observe(&self, record: &AuditRecord) {
        self.observe_at(record, Instant::now());
    }

    fn observe_at(&self, record: &AuditRecord, now: Instant) {
        let denied = record.outcome == crate::domain::audit::Outcome::Denied.as_str();
        let read = record.outcome == "ok" && is_read(&record.action);
        if !denied && !read {
            return;
        }
        let principal = if record.principal_kind == "none" {
            format!("peer:{}", record.peer)
        } else {
            record.actor.clone()
        };
        let window = Duration::from_secs(self.settings.window_seconds.max(60));
        let mut raised = Vec::new();
        let mut state = self.state.lock().expect("patterns lock");
        evict(&mut state.principals, now, |p| {
            p.reads.last_seen.max(p.denials.last_seen)
        });
        let entry = state
            .principals
            .entry((record.tenant.clone(), principal.clone()))
            .or_insert_with(|| Principal {
                reads: Rate::new(now),
                denials: Rate::new(now),
                projects: HashMap::new(),
                flagged: HashMap::new(),
            });
        let mut flag = |pattern: Pattern, detail: String, entry: &mut Principal| {
            let recent = entry
                .flagged
                .get(&pattern)
                .is_some_and(|at| now.duration_since(*at) < window);
            if !recent {
                entry.flagged.insert(pattern, now);
                raised.push((pattern, detail));
            }
        };
        if denied {
            entry.denials.tick(now);
            if entry.denials.count >= self.settings.denial_burst {
                let detail = format!("{} refusals within a minute", entry.denials.count);
                flag(Pattern::DenialBurst, detail, entry);
            }
        } else {
            entry.reads.tick(now);
            let threshold = (self.settings.read_spike_factor * entry.reads.baseline)
                .max(self.settings.read_spike_min as f64);
            if entry.reads.count as f64 >= threshold {
                let detail = format!(
                    "{} reads within a minute against a usual {:.1}",
                    entry.reads.count, entry.reads.baseline
                );
                flag(Pattern::ReadSpike, detail, entry);
            }
            if !record.project.is_empty() {
                entry.projects.insert(record.project.clone(), now);
            }
            entry.projects.retain(|_, at| now.duration_since(*at) < window);
            if entry.projects.len() >= self.settings.many_projects {
                let detail = format!(
                    "read from {} projects within {} s",
                    entry.projects.len(),
                    window.as_secs()
                );
                flag(Pattern::ManyProjects, detail, entry);
            }
            if !record.target.is_empty() {
                evict(&mut state.artifacts, now, |r| r.last_seen);
                let artifact = record.target.split('@').next().unwrap_or_default().to_owned();
                state
                    .artifacts
                    .entry((record.tenant.clone(), artifact))
                    .or_insert_with(|| Rate::new(now))
                    .tick(now);
            }
        }
        for (pattern, detail) in raised {
            metrics::counter!(names::ACCESS_FLAGS_TOTAL, "pattern" => pattern.as_str()).increment(1);
            tracing::warn!(tenant = %record.tenant, principal = %principal, pattern = pattern.as_str(), %detail, "unusual access");
            if state.flags.len() == MAX_FLAGS {
                state.flags.pop_front();
            }
            state.flags.push_back(Flag {
                at: Timestamp::now(),
                tenant: record.tenant.clone(),
                principal: principal.clone(),
                pattern,
                detail,
            });
        }
    }

    /// Sets the read-rate gauges of the ten busiest principals and artifacts (all tenants);
    /// those that dropped out of the ten since the last time go to zero, so the series stay
    /// few.
    pub fn publish(&self, shown: &mut Vec<(&'static str, String)>) {
        let state = self.state.lock().expect("patterns lock");
        let now = Instant::now();
        let mut busiest: Vec<(&'static str, String, u64)> = state
            .principals
            .iter()
            .map(|((tenant, name), p)| ("principal", format!("{tenant}/{name}"), p.reads.current(now)))
            .collect();
        busiest.sort_by_key(|b| std::cmp::Reverse(b.2));
        busiest.truncate(10);
        let mut artifacts: Vec<(&'static str, String, u64)> = state
            .artifacts
            .iter()
            .map(|((tenant, id), r)| ("artifact", format!("{tenant}/{id}"), r.current(now)))
            .collect();
        artifacts.sort_by_key(|b| std::cmp::Reverse(b.2));
        artifacts.truncate(10);
        busiest.extend(artifacts);
        drop(state);
        for (kind, name) in shown.drain(..) {
            if !busiest.iter().any(|(k, n, _)| *k == kind && *n == name) {
                metrics::gauge!(names::ACCESS_READS_PER_MINUTE, "kind" => kind, "name" => name).set(0.0);
            }
        }
        for (kind, name, reads) in busiest {
            metrics::gauge!(names::ACCESS_READS_PER_MINUTE, "kind" => kind, "name" => name.clone())
                .set(reads as f64);
            shown.push((kind, name));
        }
    }

    /// Publishes the gauges every `interval` until shutdown.
    pub async fn run_publisher(
        self: std::sync::Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        let mut shown = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
            self.publish(&mut shown);
        }
    }

    /// The newest flags of a tenant (every tenant's for `None`), newest first.
    pub fn flags(&self, tenant: Option<&str>) -> Vec<Flag> {
        let state = self.state.lock().expect("patterns lock");
        state
            .flags
            .iter()
            .rev()
            .filter(|flag| tenant.is_none_or(|t| flag.tenant == t))
            .cloned()
            .collect()
    }

    /// The busiest principals and artifacts of a tenant this minute: (name, reads this
    /// minute, usual reads per minute), busiest first.
    pub fn rates(&self, tenant: &str, top: usize) -> (Vec<Busy>, Vec<Busy>) {
        let state = self.state.lock().expect("patterns lock");
        let now = Instant::now();
        let mut principals: Vec<_> = state
            .principals
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, name), p)| (name.clone(), p.reads.current(now), p.reads.baseline))
            .collect();
        let mut artifacts: Vec<_> = state
            .artifacts
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), r)| (id.clone(), r.current(now), r.baseline))
            .collect();
        for list in [&mut principals, &mut artifacts] {
            list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            list.truncate(top);
        }
        (principals, artifacts)
    }
}

/// Makes room for one more, dropping the least recently seen.
fn evict<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    _now: Instant,
    seen: impl Fn(&V) -> Instant,
) {
    if map.len() < MAX_TRACKED {
        return;
    }
    if let Some(oldest) = map.iter().min_by_key(|(_, v)| seen(v)).map(|(k, _)| k.clone()) {
        map.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(actor: &str, project: &str, action: &str, outcome: &str) -> AuditRecord {
        AuditRecord {
            tenant: "acme".into(),
            at: Timestamp(0),
            actor: actor.into(),
            principal_kind: "api_key".into(),
            project: project.into(),
            target: "artifact-1@1.0.0".into(),
            action: action.into(),
            outcome: outcome.into(),
            code: "Ok".into(),
            request_id: String::new(),
            peer: "10.0.0.1".into(),
        }
    }

    const DOWNLOAD: &str = "artifactd.v1.ArtifactService/DownloadArtifact";

    #[test]
    fn a_spike_against_a_quiet_baseline_flags_once_and_steady_use_never_does() {
        let patterns = AccessPatterns::new(PatternSettings {
            read_spike_min: 20,
            ..Default::default()
        });
        let start = Instant::now();
        // Ten quiet minutes of five reads each: a baseline, no flag.
        for minute in 0..10 {
            for i in 0..5 {
                let at = start + Duration::from_secs(minute * 60 + i);
                patterns.observe_at(&call("steady", "web", DOWNLOAD, "ok"), at);
                patterns.observe_at(&call("spiky", "web", DOWNLOAD, "ok"), at);
            }
        }
        assert!(patterns.flags(None).is_empty(), "{:?}", patterns.flags(None));
        // Then a minute of 200 reads from one of them.
        for i in 0..200 {
            let at = start + Duration::from_secs(600) + Duration::from_millis(i * 100);
            patterns.observe_at(&call("spiky", "web", DOWNLOAD, "ok"), at);
        }
        let flags = patterns.flags(Some("acme"));
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!(
            (flags[0].pattern, flags[0].principal.as_str()),
            (Pattern::ReadSpike, "spiky")
        );
        let (principals, artifacts) = patterns.rates("acme", 5);
        assert_eq!(principals[0].0, "spiky");
        assert_eq!(artifacts[0].0, "artifact-1");
    }

    #[test]
    fn reads_across_projects_and_bursts_of_refusals_flag() {
        let patterns = AccessPatterns::new(PatternSettings {
            many_projects: 4,
            denial_burst: 5,
            ..Default::default()
        });
        let now = Instant::now();
        for project in ["a", "b", "c"] {
            patterns.observe_at(&call("roamer", project, DOWNLOAD, "ok"), now);
        }
        assert!(patterns.flags(None).is_empty());
        patterns.observe_at(&call("roamer", "d", DOWNLOAD, "ok"), now);
        for _ in 0..5 {
            patterns.observe_at(
                &call(
                    "prober",
                    "x",
                    "artifactd.v1.ArtifactService/DeleteArtifact",
                    "denied",
                ),
                now,
            );
        }
        // Listing is not a read of content here, and successful changes are not reads.
        patterns.observe_at(&call("writer", "e", "artifact.created", "ok"), now);
        let found: Vec<(Pattern, String)> = patterns
            .flags(None)
            .into_iter()
            .map(|f| (f.pattern, f.principal))
            .collect();
        assert_eq!(
            found,
            [
                (Pattern::DenialBurst, "prober".to_owned()),
                (Pattern::ManyProjects, "roamer".to_owned())
            ]
        );
    }
}
