//! What the bench knows about every event: when the request that produced it started, when it
//! was acknowledged, when (and how often) it reached the receiver.
//!
//! Acknowledgement and arrival race (a delivery can reach the receiver before the client has
//! read the ingest response), so both sides write one shared map and the count of events still
//! owed is kept as they meet.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Default)]
struct Entry {
    /// The start of the acknowledged request that produced the event.
    started: Option<Instant>,
    /// Whether the request was part of the measured window (not the warm-up).
    measured: bool,
    first_arrival: Option<Instant>,
    arrivals: u32,
}

#[derive(Debug, Default)]
struct State {
    events: HashMap<Box<str>, Entry>,
    /// Acknowledged events that have not arrived yet.
    owed: usize,
    arrivals: usize,
}

/// The shared record of acknowledgements and arrivals.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    state: Mutex<State>,
}

/// The outcome for the events acknowledged in the measured window.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Events acknowledged in the measured window.
    pub acknowledged: usize,
    /// Those that reached the receiver, and when the last of them did.
    pub delivered: usize,
    pub last_arrival: Option<Instant>,
    /// Request start → first arrival, in microseconds, per delivered event.
    pub end_to_end_us: Vec<u64>,
    /// Acknowledged (in any window) and never arrived.
    pub lost: usize,
    /// Events that arrived more than once (acknowledged or not, unless another sender's
    /// traffic arrives too), and the surplus arrivals.
    pub duplicated_events: usize,
    pub duplicate_arrivals: usize,
    /// Arrivals of events no request acknowledged: the ledger's own conclusions.
    pub unsolicited: usize,
}

impl Tracker {
    /// Records that a request started at `started` was acknowledged with `events`.
    pub(crate) fn acknowledged<'a>(
        &self,
        events: impl IntoIterator<Item = &'a str>,
        started: Instant,
        measured: bool,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for id in events {
            let state = &mut *state;
            let entry = state.events.entry(id.into()).or_default();
            if entry.started.is_some() {
                continue;
            }
            entry.started = Some(started);
            entry.measured = measured;
            if entry.arrivals == 0 {
                state.owed += 1;
            }
        }
    }

    /// Records that `id` reached the receiver at `at`.
    pub(crate) fn arrived(&self, id: &str, at: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        state.arrivals += 1;
        let entry = state.events.entry(id.into()).or_default();
        if entry.arrivals == 0 {
            entry.first_arrival = Some(at);
            if entry.started.is_some() {
                state.owed -= 1;
            }
        }
        entry.arrivals += 1;
    }

    /// Whether a request of this run was acknowledged with event `id`.
    pub(crate) fn was_acknowledged(&self, id: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .events
            .get(id)
            .is_some_and(|entry| entry.started.is_some())
    }

    /// Acknowledged events still to arrive, and every arrival so far.
    pub(crate) fn progress(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.owed, state.arrivals)
    }

    /// The outcome so far. With `others_traffic`, arrivals nobody here acknowledged may be
    /// another sender's (a running billhook's own traffic): their repeats are that sender's
    /// retries, not counted as duplicates.
    pub(crate) fn outcome(&self, others_traffic: bool) -> Outcome {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcome = Outcome::default();
        for entry in state.events.values() {
            if entry.arrivals > 1 && (entry.started.is_some() || !others_traffic) {
                outcome.duplicated_events += 1;
                outcome.duplicate_arrivals += (entry.arrivals - 1) as usize;
            }
            let Some(started) = entry.started else {
                outcome.unsolicited += 1;
                continue;
            };
            match entry.first_arrival {
                None => outcome.lost += 1,
                Some(arrival) if entry.measured => {
                    outcome.delivered += 1;
                    outcome.last_arrival = outcome.last_arrival.max(Some(arrival));
                    let micros = arrival.saturating_duration_since(started).as_micros();
                    outcome
                        .end_to_end_us
                        .push(u64::try_from(micros).unwrap_or(u64::MAX));
                }
                Some(_) => {}
            }
            if entry.measured {
                outcome.acknowledged += 1;
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn acknowledgements_and_arrivals_meet_in_either_order() {
        let tracker = Tracker::default();
        let start = Instant::now();
        // Arrives before its acknowledgement is read.
        tracker.arrived("evt_a", start + Duration::from_millis(3));
        tracker.acknowledged(["evt_a", "evt_b"], start, true);
        assert_eq!(tracker.progress(), (1, 1));
        tracker.arrived("evt_b", start + Duration::from_millis(5));
        tracker.arrived("evt_b", start + Duration::from_millis(9));
        assert_eq!(tracker.progress(), (0, 3));
        // A warm-up event that never arrives, and a conclusion nobody asked for.
        tracker.acknowledged(["evt_c"], start, false);
        tracker.arrived("evt_settled", start);

        let outcome = tracker.outcome(false);
        assert_eq!(outcome.acknowledged, 2);
        assert_eq!(outcome.delivered, 2);
        assert_eq!(outcome.lost, 1);
        assert_eq!(
            (outcome.duplicated_events, outcome.duplicate_arrivals),
            (1, 1)
        );
        assert_eq!(outcome.unsolicited, 1);
        let mut latencies = outcome.end_to_end_us;
        latencies.sort_unstable();
        assert_eq!(latencies, vec![3_000, 5_000]);
        assert_eq!(outcome.last_arrival, Some(start + Duration::from_millis(5)));
    }

    #[test]
    fn another_senders_repeats_are_not_the_runs_duplicates() {
        let tracker = Tracker::default();
        let start = Instant::now();
        tracker.acknowledged(["evt_ours"], start, true);
        tracker.arrived("evt_ours", start);
        tracker.arrived("evt_ours", start);
        tracker.arrived("evt_theirs", start);
        tracker.arrived("evt_theirs", start);
        let outcome = tracker.outcome(true);
        assert_eq!(
            (outcome.duplicated_events, outcome.duplicate_arrivals),
            (1, 1)
        );
        assert_eq!(outcome.unsolicited, 1);
        assert_eq!(tracker.outcome(false).duplicated_events, 2);
    }

    #[test]
    fn an_event_acknowledged_twice_is_owed_once() {
        let tracker = Tracker::default();
        let start = Instant::now();
        tracker.acknowledged(["evt_a"], start, true);
        tracker.acknowledged(["evt_a"], start, true);
        assert_eq!(tracker.progress(), (1, 0));
        tracker.arrived("evt_a", start);
        assert_eq!(tracker.progress(), (0, 1));
    }
}
