//! The deliveries this instance holds in memory, and whether each may still be attempted.
//!
//! A delivery is attempted only under a lease, and the lease is renewed only through the
//! database. When renewals fail for longer than a lease (the database unreachable), the row
//! becomes claimable again: by another instance, or by this instance's own poller, under the
//! same owner name. The job still queued in a lane must then not go out, or the endpoint would
//! receive it twice. So each claim is numbered, the time its lease is known to last is kept, and
//! a job is attempted only when its claim is the latest of its delivery and its lease outlasts
//! the longest an attempt may take. Anything else is dropped unattempted and without a write:
//! its row is already, or soon, claimable and is worked again from the database.
//!
//! An earlier claim's attempt may still be in flight, or its outcome waiting to be written, when
//! the row is claimed again. That outcome is written under the same owner name, so it lands on
//! the row whatever claim holds it now, and ends that claim's lease. So a claim is not attempted
//! while an earlier one of its delivery is still out, and once an earlier one's outcome is
//! written, the later claims held are void.

use std::collections::HashMap;
use std::time::Duration;

use billhook_core::ids::DeliveryId;
use billhook_core::time::Timestamp;

/// Identifies one claim of a delivery by this instance. The default is no claim at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimNumber(u64);

/// Whether a job may be attempted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Attempt,
    /// A newer claim of the same delivery is held: that one is attempted, this one never.
    Superseded,
    /// The lease may end before an attempt would: the row is, or soon will be, claimable.
    Lapsing,
}

#[derive(Debug)]
struct Held {
    /// Claims taken and not yet counted off.
    claims: u32,
    latest: ClaimNumber,
    /// Until when the database is known to hold the lease for this instance.
    leased_until: Timestamp,
}

/// Claims held in memory, by delivery.
#[derive(Debug, Default)]
pub struct HeldClaims {
    issued: u64,
    held: HashMap<DeliveryId, Held>,
}

impl HeldClaims {
    /// Records a claim of `id` leased until `leased_until`; it becomes the delivery's latest.
    pub fn claim(&mut self, id: DeliveryId, leased_until: Timestamp) -> ClaimNumber {
        self.issued += 1;
        let number = ClaimNumber(self.issued);
        let held = self.held.entry(id).or_insert(Held {
            claims: 0,
            latest: number,
            leased_until,
        });
        held.claims += 1;
        held.latest = number;
        held.leased_until = leased_until;
        number
    }

    /// The deliveries whose leases should be renewed.
    pub fn ids(&self) -> Vec<DeliveryId> {
        self.held.keys().copied().collect()
    }

    /// The database extended the leases of `renewed` to `until`.
    pub fn renewed(&mut self, renewed: &[DeliveryId], until: Timestamp) {
        for id in renewed {
            if let Some(held) = self.held.get_mut(id) {
                held.leased_until = held.leased_until.max(until);
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
            Some(held) if held.latest != number || held.claims > 1 => Turn::Superseded,
            Some(held) if now.add(longest) < held.leased_until => Turn::Attempt,
            _ => Turn::Lapsing,
        }
    }

    /// Counts one claim of `id` off that ended without a write: dropped unattempted.
    pub fn release(&mut self, id: DeliveryId) {
        if let Some(held) = self.held.get_mut(&id) {
            held.claims -= 1;
            if held.claims == 0 {
                self.held.remove(&id);
            }
        }
    }

    /// Counts one claim of `id` off whose outcome was written. The write matched the row by
    /// owner name, so it ended the lease of any later claim of it this instance holds: that
    /// claim is never attempted (the row is worked again from the database if still due).
    pub fn recorded(&mut self, id: DeliveryId) {
        self.release(id);
        if let Some(held) = self.held.get_mut(&id) {
            held.latest = ClaimNumber::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTEMPT: Duration = Duration::from_secs(15);
    const LEASE: Duration = Duration::from_secs(60);

    #[test]
    fn a_claim_is_attempted_while_its_lease_outlasts_an_attempt() {
        let mut claims = HeldClaims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        let claim = claims.claim(id, now.add(LEASE));
        assert_eq!(claims.turn(id, claim, now, ATTEMPT), Turn::Attempt);
        let later = now.add(LEASE - ATTEMPT);
        assert_eq!(
            claims.turn(id, claim, later, ATTEMPT),
            Turn::Lapsing,
            "an attempt starting now could outlive the lease"
        );
        claims.renewed(&[id], later.add(LEASE));
        assert_eq!(claims.turn(id, claim, later, ATTEMPT), Turn::Attempt);
    }

    #[test]
    fn a_renewal_the_database_refused_leaves_the_lease_to_lapse() {
        let mut claims = HeldClaims::default();
        let (kept, taken) = (DeliveryId::new(), DeliveryId::new());
        let now = Timestamp::now();
        let kept_claim = claims.claim(kept, now.add(LEASE));
        let taken_claim = claims.claim(taken, now.add(LEASE));
        let later = now.add(LEASE);
        claims.renewed(&[kept], later.add(LEASE));
        assert_eq!(claims.turn(kept, kept_claim, later, ATTEMPT), Turn::Attempt);
        assert_eq!(
            claims.turn(taken, taken_claim, later, ATTEMPT),
            Turn::Lapsing
        );
    }

    #[test]
    fn only_the_latest_claim_of_a_delivery_is_attempted() {
        let mut claims = HeldClaims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        let first = claims.claim(id, now.add(LEASE));
        let later = now.add(LEASE);
        let second = claims.claim(id, later.add(LEASE));
        assert_eq!(claims.turn(id, first, later, ATTEMPT), Turn::Superseded);
        assert_eq!(
            claims.turn(id, second, later, ATTEMPT),
            Turn::Superseded,
            "not while the first is still out"
        );
        // The first dropped unattempted: the second goes.
        claims.release(id);
        assert_eq!(claims.ids(), vec![id], "the second claim is still held");
        assert_eq!(claims.turn(id, second, later, ATTEMPT), Turn::Attempt);
        claims.release(id);
        assert!(claims.ids().is_empty());
        assert_eq!(claims.turn(id, second, later, ATTEMPT), Turn::Lapsing);
        assert_eq!(
            claims.turn(id, ClaimNumber::default(), now, ATTEMPT),
            Turn::Lapsing,
            "a job never claimed is never attempted"
        );
    }

    /// The row was claimed again while the first claim's attempt was in flight; that attempt's
    /// outcome, once written, decided the row and ended the second claim's lease.
    #[test]
    fn a_claim_made_while_an_earlier_attempt_was_out_is_void_once_that_one_is_written() {
        let mut claims = HeldClaims::default();
        let id = DeliveryId::new();
        let now = Timestamp::now();
        let first = claims.claim(id, now.add(LEASE));
        assert_eq!(claims.turn(id, first, now, ATTEMPT), Turn::Attempt);
        let second = claims.claim(id, now.add(LEASE));
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Superseded);
        claims.recorded(id);
        assert_eq!(claims.turn(id, second, now, ATTEMPT), Turn::Superseded);
        claims.release(id);
        assert!(claims.ids().is_empty());
        // A claim made after that is the row's own again.
        let third = claims.claim(id, now.add(LEASE));
        assert_eq!(claims.turn(id, third, now, ATTEMPT), Turn::Attempt);
    }
}
