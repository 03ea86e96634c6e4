//! What the alert engine does when it falls behind ingest: the sample
//! batches its bounded queue cannot take are not lost but summarized per
//! series, and the engine evaluates the summary once it has evaluated
//! everything queued before it.
//!
//! Per (device, metric, label) the summary keeps the first, lowest, highest
//! and last value with the order they arrived in, and replays them in that
//! order: every threshold a dropped value crossed is crossed again by the
//! replay (the extremes are the values furthest beyond any threshold), the
//! series ends on its true last value, and each replayed value really
//! occurred. What it loses is detail within the gap (several excursions
//! beyond a threshold collapse into one; `for:` durations count from the
//! catch-up), not a crossing.
//!
//! From the first batch the queue refuses until the engine takes the
//! summary, every batch goes to the summary ([`Overflow::is_active`]), so
//! the summary is always newer than everything queued. Only metrics some
//! rule reads are kept (the engine says which, [`Overflow::watch`]). The
//! summary is bounded ([`MAX_SUMMARY_SERIES`]); values of series beyond it
//! are lost and counted.
//!
//! This module decides nothing about alerts and touches no storage: it is
//! plain data, driven by [`super::engine`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use outpost_proto::DeviceId;
use outpost_proto::messages::MetricValue;

/// Most series one summary holds (about 100 bytes each).
pub const MAX_SUMMARY_SERIES: usize = 200_000;

/// A value and when (in the summary's arrival order) it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    value: f64,
    at: u64,
}

#[derive(Debug, Clone, Copy)]
struct SeriesSummary {
    first: Seen,
    min: Seen,
    max: Seen,
    last: Seen,
}

impl SeriesSummary {
    fn new(s: Seen) -> SeriesSummary {
        SeriesSummary {
            first: s,
            min: s,
            max: s,
            last: s,
        }
    }

    fn note(&mut self, s: Seen) {
        if s.value < self.min.value {
            self.min = s;
        }
        if s.value > self.max.value {
            self.max = s;
        }
        self.last = s;
    }

    /// The values to replay, in arrival order, each once.
    fn replay(&self) -> Vec<f64> {
        let mut v = vec![self.first, self.min, self.max, self.last];
        v.sort_by_key(|s| s.at);
        v.dedup_by_key(|s| s.at);
        v.into_iter().map(|s| s.value).collect()
    }
}

/// The summary of what the engine's queue refused (see the module docs).
#[derive(Debug, Default)]
pub struct Overflow {
    /// Set by the first refused batch, cleared when the engine takes the
    /// summary: while set, every batch goes here.
    active: bool,
    /// Metric names some rule reads (`None`: not told yet, keep all).
    watched: Option<HashSet<String>>,
    series: HashMap<(DeviceId, String, String), SeriesSummary>,
    /// Arrival counter, to replay values in order.
    next: u64,
    batches: u64,
    values: u64,
    lost: u64,
    /// Appliance clock (ms) of the first refused batch.
    since_ms: u64,
}

/// A summary taken by the engine.
#[derive(Debug)]
pub struct Summary {
    /// The values to evaluate, per device, in arrival order per series.
    pub batch: Vec<(DeviceId, Vec<MetricValue>)>,
    /// Batches and values summarized, series they belonged to.
    pub batches: u64,
    pub values: u64,
    pub series: usize,
    /// Values lost because the summary was full.
    pub lost: u64,
    /// When the engine started falling behind (appliance clock, ms).
    pub since_ms: u64,
}

impl Overflow {
    /// Whether batches go to the summary rather than the queue.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// From now on keeps only values of these metrics (the names the
    /// rules read; values of other metrics would be evaluated to nothing).
    pub fn watch(&mut self, names: HashSet<String>) {
        self.watched = Some(names);
    }

    /// Starts summarizing (the queue refused a batch at `now_ms`).
    pub fn begin(&mut self, now_ms: u64) {
        if !self.active {
            self.active = true;
            self.since_ms = now_ms;
        }
    }

    /// Adds a batch; returns how many of its values were lost (the summary
    /// is full and they belong to a new series).
    pub fn fold(&mut self, batch: Vec<(DeviceId, Vec<MetricValue>)>) -> u64 {
        self.batches += 1;
        let mut lost = 0;
        for (device, values) in batch {
            for v in values {
                if self.watched.as_ref().is_some_and(|w| !w.contains(&v.name)) {
                    continue;
                }
                let seen = Seen {
                    value: v.value,
                    at: self.next,
                };
                self.next += 1;
                let full = self.series.len() >= MAX_SUMMARY_SERIES;
                match self.series.entry((device, v.name, v.label)) {
                    Entry::Occupied(mut e) => e.get_mut().note(seen),
                    Entry::Vacant(_) if full => {
                        lost += 1;
                        continue;
                    }
                    Entry::Vacant(e) => {
                        e.insert(SeriesSummary::new(seen));
                    }
                }
                self.values += 1;
            }
        }
        self.lost += lost;
        lost
    }

    /// Takes what was summarized and stops summarizing (cheap: callers
    /// hold the lock the writer waits on); `None` if not active. Turn it
    /// into the values to evaluate with [`Overflow::into_summary`].
    pub fn take(&mut self) -> Option<Overflow> {
        if !self.active {
            return None;
        }
        let watched = self.watched.take();
        let taken = std::mem::take(self);
        self.watched = watched;
        Some(taken)
    }

    /// The values to replay, per device (see the module docs).
    pub fn into_summary(self) -> Summary {
        let series = self.series.len();
        let mut by_device: HashMap<DeviceId, Vec<MetricValue>> = HashMap::new();
        for ((device, name, label), s) in self.series {
            let values = by_device.entry(device).or_default();
            for value in s.replay() {
                values.push(MetricValue {
                    name: name.clone(),
                    label: label.clone(),
                    value,
                });
            }
        }
        let mut batch: Vec<_> = by_device.into_iter().collect();
        batch.sort_by_key(|(d, _)| *d);
        Summary {
            batch,
            batches: self.batches,
            values: self.values,
            series,
            lost: self.lost,
            since_ms: self.since_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, value: f64) -> MetricValue {
        MetricValue {
            name: name.into(),
            label: String::new(),
            value,
        }
    }

    fn values_of(s: &Summary, d: DeviceId, name: &str) -> Vec<f64> {
        s.batch
            .iter()
            .filter(|(dev, _)| *dev == d)
            .flat_map(|(_, vs)| vs.iter().filter(|x| x.name == name).map(|x| x.value))
            .collect()
    }

    #[test]
    fn the_replay_keeps_every_extreme_in_arrival_order_and_ends_on_the_last_value() {
        let mut o = Overflow::default();
        assert!(o.take().is_none(), "nothing to take while not active");
        o.begin(7);
        for x in [40.0, 95.0, 60.0, 10.0, 50.0] {
            o.fold(vec![(DeviceId(1), vec![v("cpu", x)])]);
        }
        o.fold(vec![(DeviceId(2), vec![v("cpu", 99.0), v("mem", 1.0)])]);
        let s = o.take().unwrap().into_summary();
        // first, highest, lowest, last: a `> 90` rule fires then resolves,
        // a `< 20` rule fires then resolves, and the series ends on 50.
        assert_eq!(
            values_of(&s, DeviceId(1), "cpu"),
            vec![40.0, 95.0, 10.0, 50.0]
        );
        // A lone value is replayed once.
        assert_eq!(values_of(&s, DeviceId(2), "cpu"), vec![99.0]);
        assert_eq!(
            (s.batches, s.values, s.series, s.lost, s.since_ms),
            (6, 7, 3, 0, 7)
        );
        assert!(!o.is_active() && o.take().is_none(), "taking resets it");
    }

    #[test]
    fn only_metrics_a_rule_reads_are_kept() {
        let mut o = Overflow::default();
        o.watch(["cpu".to_string()].into());
        o.begin(0);
        o.fold(vec![(DeviceId(1), vec![v("cpu", 1.0), v("disk", 2.0)])]);
        let s = o.take().unwrap().into_summary();
        assert_eq!((s.values, s.series, s.lost), (1, 1, 0));
        assert!(values_of(&s, DeviceId(1), "disk").is_empty());
        // What to watch outlives a summary.
        o.begin(0);
        o.fold(vec![(DeviceId(1), vec![v("disk", 2.0)])]);
        assert_eq!(o.take().unwrap().into_summary().values, 0);
    }

    #[test]
    fn a_full_summary_loses_values_of_new_series_only_and_counts_them() {
        let mut o = Overflow::default();
        o.begin(0);
        let many: Vec<MetricValue> = (0..MAX_SUMMARY_SERIES)
            .map(|i| v(&format!("m{i}"), 1.0))
            .collect();
        assert_eq!(o.fold(vec![(DeviceId(1), many)]), 0);
        assert_eq!(o.fold(vec![(DeviceId(2), vec![v("cpu", 1.0)])]), 1);
        // A series already summarized still takes values.
        assert_eq!(o.fold(vec![(DeviceId(1), vec![v("m0", 99.0)])]), 0);
        let s = o.take().unwrap().into_summary();
        assert_eq!(s.lost, 1);
        assert_eq!(values_of(&s, DeviceId(1), "m0"), vec![1.0, 99.0]);
    }
}
