//! The deliveries this instance holds in memory, and whether each may still be attempted.
//!
//! A delivery is attempted only under a lease, and the lease is renewed only through the
//! database. When renewals fail for longer than a lease (the database unreachable), the row
//! becomes claimable again: by another instance, or by this instance's own poller, under the
//! same owner name. The job still queued in a lane must then not go out, or the endpoint would
//! receive it twice. So each claim is numbered, the time its lease is known to last is kept, and
//! a job is attempted only when its claim is the latest of its delivery and its lease outlasts
//! the longest an attempt may take. An earlier claim is dropped unattempted and without a write,
//! even as its lane stops: the latest one holds the row.
//!
//! An earlier claim's attempt may still be in flight, or its outcome waiting to be written, when
//! the row is claimed again. That outcome is written under the same owner name, so it lands on
//! the row whatever claim holds it now, and ends the lease. So the latest claim waits, set aside,
//! while an earlier one is still out. Once an earlier one's outcome is written, whether the
//! lease is still this instance's depends on which came first in the database: the write (the
//! row was claimed again after it, most often a retry due at once) or the claim (the write ended
//! its lease). Memory cannot tell, so the lease is taken as unknown until a renewal asked after
//! the write proves it; a renewal asked before could have been answered before the write, and
//! proves nothing. The same holds for a claim the poller asked for before an outcome of its
//! delivery was written and takes in after.
//!
//! A renewal cannot tell this instance's claims of a row apart. One that proves a set-aside
//! claim's lease may have found a newer claim's, not yet taken into memory: the older job goes,
//! and the newer one waits behind it, to find its lease ended by that outcome. Nothing goes out
//! twice; the attempt counts the delivery's attempts as the older claim read them.

use std::collections::HashMap;
use std::time::Duration;

use billhook_core::ids::DeliveryId;
use billhook_core::time::Timestamp;

/// Identifies one claim of a delivery by this instance. The default is no claim at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimNumber(u64);

/// When the database was asked for claims or renewals, counted in outcomes recorded: its answer
/// holds for the outcomes recorded before, and may predate those after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked(u64);

/// Whether a job may be attempted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Attempt,
    /// A newer claim of the same delivery is held: that one is attempted, this one never.
    Superseded,
    /// An earlier claim of the delivery is still out: this one waits for it to be counted off.
    Waiting,
    /// The lease is not known to be this instance's: only a renewal can tell.
    Unproven,
    /// The lease may end before an attempt would: the row is, or soon will be, claimable
    /// unless a renewal says otherwise.
    Lapsing,
}

#[derive(Debug)]
struct Held<J> {
    /// Claims taken and not yet counted off.
    claims: u32,
    latest: ClaimNumber,
    /// Until when the database is known to hold the lease for this instance; `None` while
    /// an outcome written since may have ended it.
    leased_until: Option<Timestamp>,
    /// The number of the last outcome of this delivery recorded; renewals asked before it
    /// prove nothing.
    last_recorded: u64,
    /// The latest claim's job, set aside while an earlier claim is out.
    waiting: Option<J>,
}

/// Claims held in memory, by delivery, with the jobs set aside to wait for earlier claims.
#[derive(Debug)]
pub struct HeldClaims<J> {
    issued: u64,
    /// Outcomes recorded so far: each recording's number.
    recorded: u64,
    held: HashMap<DeliveryId, Held<J>>,
    /// Deliveries no longer held whose last claim was counted off by a recorded outcome, with
    /// its number: kept from one pass of the poller to the next, for claims asked before.
    forgotten: HashMap<DeliveryId, u64>,
}

impl<J> Default for HeldClaims<J> {
    fn default() -> Self {
        Self {
            issued: 0,
            recorded: 0,
            held: HashMap::new(),
            forgotten: HashMap::new(),
        }
    }
}

impl<J> HeldClaims<J> {
    /// Taken before asking the database to renew leases, or to claim for a hand-off (new rows,
    /// whose outcomes cannot have been written yet).
    pub fn asking(&self) -> Asked {
        Asked(self.recorded)
    }

    /// Taken before the poller asks the database for claims; only one pass asks at a time.
    /// What the passes before could have needed is forgotten.
    pub fn claiming(&mut self) -> Asked {
        self.forgotten.clear();
        self.asking()
    }

    /// Records a claim of `id` leased until `leased_until`, as the database answered when
    /// `asked`; it becomes the delivery's latest. A job set aside for the delivery is now
    /// superseded: it is counted off and dropped, never attempted.
    pub fn claim(&mut self, id: DeliveryId, leased_until: Timestamp, asked: Asked) -> ClaimNumber {
        self.issued += 1;
        let number = ClaimNumber(self.issued);
        let forgotten = self.forgotten.get(&id).copied().unwrap_or(0);
        let held = self.held.entry(id).or_insert(Held {
            claims: 0,
            latest: number,
            leased_until: None,
            last_recorded: forgotten,
            waiting: None,
        });
        if held.waiting.take().is_some() {
            held.claims -= 1;
        }
        held.claims += 1;
        held.latest = number;
        // An outcome recorded since the claim was asked for may have ended its lease.
        held.leased_until = (held.last_recorded <= asked.0).then_some(leased_until);
        number
    }

    /// The deliveries whose leases should be renewed.
    pub fn ids(&self) -> Vec<DeliveryId> {
        self.held.keys().copied().collect()
    }

    /// The database, when `asked`, extended the leases of `renewed` to `until`.
    pub fn renewed(&mut self, renewed: &[DeliveryId], until: Timestamp, asked: Asked) {
        for id in renewed {
            if let Some(held) = self.held.get_mut(id)
                && held.last_recorded <= asked.0
            {
                held.leased_until = Some(held.leased_until.map_or(until, |known| known.max(until)));
            }
        }
    }

    /// Whether claim `number` of `id` may start an attempt at `now` that may last `longest`.
    ///
    /// Not while an earlier claim of the delivery is still out (its attempt in flight, or its
    /// outcome not yet written): that outcome, written under the same owner name, will decide
    /// the row, and an attempt now would go out beside it.
    pub fn turn(
        &self,
        id: DeliveryId,
        number: ClaimNumber,
        now: Timestamp,
        longest: Duration,
    ) -> Turn {
        match self.held.get(&id) {
            Some(held) if held.latest != number => Turn::Superseded,
            Some(held) if held.claims > 1 => Turn::Waiting,
            Some(held) => match held.leased_until {
                None => Turn::Unproven,
                Some(until) if now.add(longest) < until => Turn::Attempt,
                Some(_) => Turn::Lapsing,
            },
            None => Turn::Lapsing,
        }
    }

    /// Sets `job`, claim `number` of `id`, aside until the earlier claims are counted off; the
    /// count that leaves it alone hands it back. Handed back at once, for its turn to be taken
    /// again, if they already are or if it is no longer the latest.
    pub fn set_aside(&mut self, id: DeliveryId, number: ClaimNumber, job: J) -> Option<J> {
        match self.held.get_mut(&id) {
            Some(held) if held.latest == number && held.claims > 1 => {
                held.waiting = Some(job);
                None
            }
            _ => Some(job),
        }
    }

    /// Counts one claim of `id` off that ended without a write: dropped unattempted. Returns
    /// the job set aside, if this leaves it the only claim.
    pub fn release(&mut self, id: DeliveryId) -> Option<J> {
        let held = self.held.get_mut(&id)?;
        held.claims -= 1;
        match held.claims {
            0 => {
                self.held.remove(&id);
                None
            }
            1 => held.waiting.take(),
            _ => None,
        }
    }

    /// Counts one claim of `id` off whose outcome was written, or may have been (a commit whose
    /// answer was lost). The write matched the row by owner name, so it ended the lease of any
    /// later claim of it unless that claim came after it: the lease is unknown until a renewal
    /// asked from now on proves it. Returns the job set aside, if this leaves it the only
    /// claim.
    pub fn recorded(&mut self, id: DeliveryId) -> Option<J> {
        self.recorded += 1;
        let number = self.recorded;
        let waiting = match self.held.get_mut(&id) {
            Some(held) => {
                held.last_recorded = number;
                held.leased_until = None;
                self.release(id)
            }
            None => None,
        };
        if !self.held.contains_key(&id) {
            self.forgotten.insert(id, number);
        }
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTEMPT: Duration = Duration::from_secs(15);
    const LEASE: Duration = Duration::from_secs(60);

    /// A job set aside, by the claim it carries.
    type Claims = HeldClaims<ClaimNumber>;

    #[test]
    fn a_claim_is_attempted_while_its_lease_outlasts_an_attempt() {
        let mut claims = Claims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        let claim = claims.claim(id, now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, claim, now, ATTEMPT), Turn::Attempt);
        let later = now.add(LEASE - ATTEMPT);
        assert_eq!(
            claims.turn(id, claim, later, ATTEMPT),
            Turn::Lapsing,
            "an attempt starting now could outlive the lease"
        );
        claims.renewed(&[id], later.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, claim, later, ATTEMPT), Turn::Attempt);
    }

    #[test]
    fn a_renewal_the_database_refused_leaves_the_lease_to_lapse() {
        let mut claims = Claims::default();
        let (kept, taken) = (DeliveryId::new(), DeliveryId::new());
        let now = Timestamp::now();
        let kept_claim = claims.claim(kept, now.add(LEASE), claims.asking());
        let taken_claim = claims.claim(taken, now.add(LEASE), claims.asking());
        let later = now.add(LEASE);
        claims.renewed(&[kept], later.add(LEASE), claims.asking());
        assert_eq!(claims.turn(kept, kept_claim, later, ATTEMPT), Turn::Attempt);
        assert_eq!(
            claims.turn(taken, taken_claim, later, ATTEMPT),
            Turn::Lapsing
        );
    }

    #[test]
    fn only_the_latest_claim_of_a_delivery_is_attempted() {
        let mut claims = Claims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        let first = claims.claim(id, now.add(LEASE), claims.asking());
        let later = now.add(LEASE);
        let second = claims.claim(id, later.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, first, later, ATTEMPT), Turn::Superseded);
        assert_eq!(
            claims.turn(id, second, later, ATTEMPT),
            Turn::Waiting,
            "not while the first is still out"
        );
        assert_eq!(claims.set_aside(id, second, second), None);
        // The first dropped unattempted: the second is handed back, and goes.
        assert_eq!(claims.release(id), Some(second));
        assert_eq!(claims.ids(), vec![id], "the second claim is still held");
        assert_eq!(claims.turn(id, second, later, ATTEMPT), Turn::Attempt);
        assert_eq!(claims.release(id), None);
        assert!(claims.ids().is_empty());
        assert_eq!(claims.turn(id, second, later, ATTEMPT), Turn::Lapsing);
        assert_eq!(
            claims.turn(id, ClaimNumber::default(), now, ATTEMPT),
            Turn::Lapsing,
            "a job never claimed is never attempted"
        );
    }

    #[test]
    fn a_job_set_aside_after_its_earlier_claim_was_counted_off_is_handed_back_at_once() {
        let mut claims = Claims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        claims.claim(id, now.add(LEASE), claims.asking());
        let second = claims.claim(id, now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Waiting);
        // The first is counted off between the turn and the setting aside.
        assert_eq!(claims.release(id), None);
        assert_eq!(claims.set_aside(id, second, second), Some(second));
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Attempt);
    }

    /// The row was claimed again while the first claim's attempt was in flight. Once that
    /// attempt's outcome is written, the second claim's lease is what a renewal says: ended
    /// by the write if the claim came first, the second claim's own if it came after.
    #[test]
    fn a_claim_held_when_an_earlier_outcome_is_written_goes_only_once_a_renewal_proves_it() {
        let mut claims = Claims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        let first = claims.claim(id, now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, first, now, ATTEMPT), Turn::Attempt);
        let second = claims.claim(id, now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Waiting);
        assert_eq!(claims.set_aside(id, second, second), None);
        let asked_before_the_write = claims.asking();
        assert_eq!(claims.recorded(id), Some(second), "handed back");
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Unproven);
        claims.renewed(&[id], now.add(LEASE), asked_before_the_write);
        assert_eq!(
            claims.turn(id, second, now, ATTEMPT),
            Turn::Unproven,
            "a renewal asked before the write may have been answered before it"
        );
        claims.renewed(&[id], now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Attempt);
        assert_eq!(claims.release(id), None);
        assert!(claims.ids().is_empty());
        // A claim made after that is the row's own again.
        let third = claims.claim(id, now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, third, now, ATTEMPT), Turn::Attempt);
    }

    /// The row was claimed a second time while the first claim was out, and a third time once
    /// the first one's outcome was written but before it was counted off.
    #[test]
    fn a_job_set_aside_is_superseded_by_a_later_claim() {
        let mut claims = Claims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        claims.claim(id, now.add(LEASE), claims.asking());
        let second = claims.claim(id, now.add(LEASE), claims.asking());
        assert_eq!(claims.set_aside(id, second, second), None);
        let third = claims.claim(id, now.add(LEASE), claims.asking());
        assert_eq!(
            claims.set_aside(id, second, second),
            Some(second),
            "only the latest claim waits"
        );
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Superseded);
        assert_eq!(claims.turn(id, third, now, ATTEMPT), Turn::Waiting);
        assert_eq!(claims.set_aside(id, third, third), None);
        // The first is counted off: the second, superseded while set aside, is no longer out.
        assert_eq!(claims.recorded(id), Some(third));
        claims.renewed(&[id], now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, third, now, ATTEMPT), Turn::Attempt);
        assert_eq!(claims.release(id), None);
        assert!(claims.ids().is_empty(), "every claim counted off");
    }

    /// The poller asked for claims, and the database handed this delivery out again, just
    /// before the outcome of its earlier claim was written; the claim is taken in after that
    /// outcome was recorded.
    #[test]
    fn a_claim_asked_for_before_an_outcome_of_its_delivery_was_recorded_needs_a_renewal() {
        let mut claims = Claims::default();
        let (id, other) = (DeliveryId::new(), DeliveryId::new());
        let now = Timestamp::now();
        claims.claim(id, now.add(LEASE), claims.asking());
        let pass = claims.claiming();
        assert_eq!(claims.recorded(id), None);
        assert!(claims.ids().is_empty());
        let again = claims.claim(id, now.add(LEASE), pass);
        assert_eq!(claims.turn(id, again, now, ATTEMPT), Turn::Unproven);
        claims.renewed(&[id], now.add(LEASE), claims.asking());
        assert_eq!(claims.turn(id, again, now, ATTEMPT), Turn::Attempt);
        // Another delivery claimed in the same pass had nothing recorded since: its own.
        let fresh = claims.claim(other, now.add(LEASE), pass);
        assert_eq!(claims.turn(other, fresh, now, ATTEMPT), Turn::Attempt);
        // The next pass asks after the recording: its claims are the database's word.
        assert_eq!(claims.release(id), None);
        let next_pass = claims.claiming();
        let later = claims.claim(id, now.add(LEASE), next_pass);
        assert_eq!(claims.turn(id, later, now, ATTEMPT), Turn::Attempt);
    }
}
