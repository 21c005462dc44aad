//! Adding up [`Metrics`] from counted rows: every backend counts its sessions and log rows
//! (one by one, or grouped by the database) and leaves the totals, the per-flow, per-cohort
//! and per-day breakdowns to this one tally.

use std::collections::BTreeMap;

use crate::types::{civil_day, CohortMetrics, DayMetrics, FlowMetrics, Metrics};

/// Metrics being added up; [`finish`](MetricsTally::finish) orders the breakdowns.
#[derive(Default)]
pub(crate) struct MetricsTally {
    totals: Metrics,
    flows: BTreeMap<String, FlowMetrics>,
    cohorts: BTreeMap<String, CohortMetrics>,
    days: BTreeMap<i64, DayMetrics>,
}

impl MetricsTally {
    /// `n` sessions of `flow_id` (in `cohort`, if any) created on `day` (days since the
    /// epoch), `active` or not.
    pub(crate) fn sessions(&mut self, flow_id: &str, cohort: Option<&str>, day: i64, active: bool, n: u64) {
        let active = if active { n } else { 0 };
        self.totals.conversations_total += n;
        self.totals.conversations_active += active;
        let f = self.flow(flow_id);
        f.conversations_total += n;
        f.conversations_active += active;
        if let Some(cohort) = cohort {
            let new = || CohortMetrics { cohort: cohort.to_owned(), ..Default::default() };
            let c = self.cohorts.entry(cohort.to_owned()).or_insert_with(new);
            c.conversations_total += n;
            c.conversations_active += active;
        }
        self.days.entry(day).or_default().conversations_started += n;
    }

    /// `n` log rows of `flow_id` (rows without a flow count only in the totals and days)
    /// logged on `day`, `inbound` or outbound.
    pub(crate) fn messages(&mut self, flow_id: Option<&str>, day: i64, inbound: bool, n: u64) {
        let (i, o) = if inbound { (n, 0) } else { (0, n) };
        self.totals.messages_in += i;
        self.totals.messages_out += o;
        if let Some(flow_id) = flow_id {
            let f = self.flow(flow_id);
            f.messages_in += i;
            f.messages_out += o;
        }
        let d = self.days.entry(day).or_default();
        d.messages_in += i;
        d.messages_out += o;
    }

    pub(crate) fn finish(self) -> Metrics {
        Metrics {
            per_flow: self.flows.into_values().collect(),
            per_cohort: self.cohorts.into_values().collect(),
            per_day: self.days.into_iter().map(|(day, d)| DayMetrics { day: civil_day(day), ..d }).collect(),
            ..self.totals
        }
    }

    fn flow(&mut self, flow_id: &str) -> &mut FlowMetrics {
        let new = || FlowMetrics { flow_id: flow_id.to_owned(), ..Default::default() };
        self.flows.entry(flow_id.to_owned()).or_insert_with(new)
    }
}
