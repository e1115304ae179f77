//! Leader election on one S3 object: which replica may act, decided from what each replica
//! saw of the lease object and when, by its own clock.
//!
//! The lease object (`<controller prefix>leader.json`) is created with `If-None-Match: *`
//! and replaced only with `If-Match` on the ETag last seen, so two replicas can never both
//! write the same version. No wall clock is compared between hosts: every time here is a
//! replica's own monotonic time, as a [`Duration`] since it started.
//!
//! - The holder counts its lease from when it **sent** its last successful write. It may
//!   start a mutating call until `renew_deadline` after that, and each call is cut off
//!   halfway between the renew deadline and the lease's end ([`Hold::permit`]).
//! - Any other replica counts the lease from when it first **saw** that version, which is
//!   after the holder sent it, and takes over only once that version has stood unchanged
//!   for `lease_duration` ([`decide`]).
//!
//! So the holder's last mutation ends before any other replica may begin: clocks need only
//! run at the same rate, never agree. Each takeover raises the term by one; every mutation
//! is logged with the term it was made in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The replica holding it.
    pub holder: String,
    /// Raised by one at every change of holder.
    pub term: u64,
    /// How long the holder's lease lasts after each renewal, in milliseconds: the holder's
    /// own setting, so that replicas with other settings wait long enough.
    pub lease_ms: u64,
    /// Renewals in this term: every write differs, so every write has a new ETag.
    pub renewals: u64,
    /// The holder's wall clock at the write, seconds since the epoch: for people only.
    pub written_at: i64,
    /// Given up on shutdown: another replica may take it at once.
    #[serde(default)]
    pub released: bool,
}

impl LeaseRecord {
    /// Parses the lease object; `None` for anything that is not one (it is then treated
    /// as held by nobody known, and waited out like any other version).
    pub fn parse(body: &[u8]) -> Option<LeaseRecord> {
        serde_json::from_slice(body).ok()
    }

    /// The object's body.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// The election's timing (controller-runtime's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease lasts after its holder's last renewal.
    pub lease: Duration,
    /// The holder starts no mutating call later than this after its last renewal, and
    /// steps down when it could not renew by then.
    pub renew_deadline: Duration,
    /// How often the holder renews and the others look.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks that the holder can renew several times within its deadline and that a
    /// mutation started just before the deadline has time to finish inside the lease.
    ///
    /// # Errors
    /// The setting at fault (`election.*`) and why.
    pub fn new(
        lease: Duration,
        renew_deadline: Duration,
        retry: Duration,
    ) -> Result<Timing, (&'static str, String)> {
        if retry < Duration::from_millis(100) {
            return Err(("election.retry_period", "must be at least 100ms".into()));
        }
        if renew_deadline < retry * 2 {
            return Err((
                "election.renew_deadline",
                format!(
                    "must be at least twice election.retry_period ({}ms), so a renewal can fail once and still be in time",
                    retry.as_millis()
                ),
            ));
        }
        if lease <= renew_deadline + retry / 2 {
            return Err((
                "election.lease_duration",
                format!(
                    "must be longer than election.renew_deadline ({}ms) by at least half a retry period: a mutation started at the deadline needs time to finish inside the lease",
                    renew_deadline.as_millis()
                ),
            ));
        }
        Ok(Timing {
            lease,
            renew_deadline,
            retry,
        })
    }

    /// The longest a single call on the lease object may take: the holder must learn
    /// whether a renewal worked before its deadline.
    pub fn call_timeout(&self) -> Duration {
        self.retry
    }
}

/// The version of the lease object a replica last saw, and when it first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Its ETag.
    pub etag: String,
    /// Its content; `None` when it was not a lease record.
    pub record: Option<LeaseRecord>,
    /// When this replica first saw this ETag.
    pub since: Duration,
}

impl Sighting {
    /// The sighting after reading `etag` with `record` at `now`: a version already seen
    /// keeps the time it was first seen.
    pub fn after(
        previous: Option<&Sighting>,
        etag: String,
        record: Option<LeaseRecord>,
        now: Duration,
    ) -> Sighting {
        let since = match previous {
            Some(p) if p.etag == etag => p.since,
            _ => now,
        };
        Sighting {
            etag,
            record,
            since,
        }
    }
}

/// This replica's hold on the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The term it holds.
    pub term: u64,
    /// The ETag of its last successful write.
    pub etag: String,
    /// When it sent that write.
    pub renewed: Duration,
    /// Renewals in this term so far.
    pub renewals: u64,
}

/// May a mutating call start now, and until when may it run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// The term the call is made in.
    pub term: u64,
    /// The call is abandoned at this time (the holder's clock).
    pub until: Duration,
}

impl Hold {
    /// Whether the hold still lets this replica act: before the renew deadline.
    pub fn valid(&self, now: Duration, timing: &Timing) -> bool {
        now < self.renewed + timing.renew_deadline
    }

    /// A permit for a mutating call starting `now`, or `None` when the call must not be
    /// made. The call is cut off halfway between the renew deadline and the lease's end,
    /// which leaves the other half for clocks that run at slightly different rates.
    pub fn permit(&self, now: Duration, timing: &Timing) -> Option<Permit> {
        self.valid(now, timing).then(|| Permit {
            term: self.term,
            until: self.renewed
                + timing.renew_deadline
                + (timing.lease.saturating_sub(timing.renew_deadline)) / 2,
        })
    }
}

/// What the elector does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No lease object: create it (`If-None-Match: *`).
    Create(LeaseRecord),
    /// Take over the version seen (`If-Match` its ETag): it expired, was released, or
    /// names this replica from before a restart.
    TakeOver {
        /// The ETag it must still have.
        etag: String,
        /// What to write.
        record: LeaseRecord,
    },
    /// Renew this replica's own lease (`If-Match` the ETag it wrote last).
    Renew {
        /// The ETag it must still have.
        etag: String,
        /// What to write.
        record: LeaseRecord,
    },
    /// Another replica holds it; look again after the retry period.
    Follow {
        /// Who, when known.
        holder: Option<String>,
    },
}

/// Decides the next step of replica `me` at `now`, from what it last read of the lease
/// object (`None`: it does not exist) and its own hold. `highest_term` is the highest term
/// this replica has seen, so that terms keep rising even if the object is removed.
/// `written_at` is the wall clock for the record's readers.
pub fn decide(
    me: &str,
    now: Duration,
    seen: Option<&Sighting>,
    hold: Option<&Hold>,
    highest_term: u64,
    timing: &Timing,
    written_at: i64,
) -> Step {
    let record = |term, renewals| LeaseRecord {
        holder: me.to_owned(),
        term,
        lease_ms: u64::try_from(timing.lease.as_millis()).unwrap_or(u64::MAX),
        renewals,
        written_at,
        released: false,
    };
    if let Some(hold) = hold
        && hold.valid(now, timing)
    {
        return Step::Renew {
            etag: hold.etag.clone(),
            record: record(hold.term, hold.renewals + 1),
        };
    }
    let Some(seen) = seen else {
        return Step::Create(record(highest_term + 1, 0));
    };
    let next_term = highest_term.max(seen.record.as_ref().map_or(0, |r| r.term)) + 1;
    let take_over = || Step::TakeOver {
        etag: seen.etag.clone(),
        record: record(next_term, 0),
    };
    match &seen.record {
        // Released on shutdown, or this replica's own (from before it restarted, or after
        // its renewals failed): nobody else can be acting on it, so no need to wait it out.
        Some(r) if r.released || r.holder == me => take_over(),
        Some(r) => {
            let lease = Duration::from_millis(r.lease_ms).max(timing.lease);
            if now >= seen.since + lease {
                take_over()
            } else {
                Step::Follow {
                    holder: Some(r.holder.clone()),
                }
            }
        }
        None if now >= seen.since + timing.lease => take_over(),
        None => Step::Follow { holder: None },
    }
}

/// The record written when the holder gives the lease up on shutdown.
pub fn released(hold: &Hold, me: &str, timing: &Timing, written_at: i64) -> LeaseRecord {
    LeaseRecord {
        holder: me.to_owned(),
        term: hold.term,
        lease_ms: u64::try_from(timing.lease.as_millis()).unwrap_or(u64::MAX),
        renewals: hold.renewals + 1,
        written_at,
        released: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        lease: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry: Duration::from_secs(2),
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn seen(holder: &str, term: u64, etag: &str, since: Duration) -> Sighting {
        Sighting {
            etag: etag.into(),
            record: Some(LeaseRecord {
                holder: holder.into(),
                term,
                lease_ms: 15_000,
                renewals: 0,
                written_at: 0,
                released: false,
            }),
            since,
        }
    }

    fn step(me: &str, now: Duration, seen: Option<&Sighting>, hold: Option<&Hold>) -> Step {
        decide(me, now, seen, hold, 0, &T, 0)
    }

    #[test]
    fn the_first_replica_creates_the_lease_at_term_one() {
        match step("a", s(0), None, None) {
            Step::Create(r) => assert_eq!((r.holder.as_str(), r.term, r.released), ("a", 1, false)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lease_is_taken_over_only_after_standing_unchanged_for_its_duration() {
        let v = seen("a", 3, "\"v1\"", s(100));
        assert_eq!(
            step("b", s(114), Some(&v), None),
            Step::Follow {
                holder: Some("a".into())
            }
        );
        match step("b", s(115), Some(&v), None) {
            Step::TakeOver { etag, record } => {
                assert_eq!(etag, "\"v1\"");
                assert_eq!((record.holder.as_str(), record.term), ("b", 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_renewal_seen_restarts_the_wait() {
        let first = seen("a", 3, "\"v1\"", s(100));
        let renewed = Sighting::after(Some(&first), "\"v2\"".into(), first.record.clone(), s(110));
        assert_eq!(renewed.since, s(110));
        let same = Sighting::after(Some(&renewed), "\"v2\"".into(), None, s(112));
        assert_eq!(
            same.since,
            s(110),
            "a version already seen keeps its first sighting"
        );
        assert!(matches!(
            step("b", s(120), Some(&renewed), None),
            Step::Follow { .. }
        ));
    }

    #[test]
    fn a_longer_lease_in_the_record_is_waited_out_whatever_this_replica_is_set_to() {
        let mut v = seen("a", 1, "\"v1\"", s(0));
        v.record.as_mut().unwrap().lease_ms = 60_000;
        assert!(matches!(
            step("b", s(30), Some(&v), None),
            Step::Follow { .. }
        ));
        assert!(matches!(
            step("b", s(60), Some(&v), None),
            Step::TakeOver { .. }
        ));
    }

    #[test]
    fn a_released_lease_or_this_replicas_own_from_before_a_restart_is_taken_at_once() {
        let mut v = seen("a", 7, "\"v1\"", s(100));
        v.record.as_mut().unwrap().released = true;
        assert!(
            matches!(step("b", s(100), Some(&v), None), Step::TakeOver { record, .. } if record.term == 8)
        );
        let mine = seen("b", 7, "\"v1\"", s(100));
        assert!(
            matches!(step("b", s(100), Some(&mine), None), Step::TakeOver { record, .. } if record.term == 8)
        );
    }

    #[test]
    fn an_unreadable_lease_object_is_waited_out_then_replaced() {
        let v = Sighting {
            etag: "\"junk\"".into(),
            record: None,
            since: s(0),
        };
        assert_eq!(
            step("b", s(14), Some(&v), None),
            Step::Follow { holder: None }
        );
        assert!(matches!(
            step("b", s(15), Some(&v), None),
            Step::TakeOver { .. }
        ));
    }

    #[test]
    fn terms_keep_rising_even_when_the_object_is_removed() {
        match decide("a", s(0), None, None, 41, &T, 0) {
            Step::Create(r) => assert_eq!(r.term, 42),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_holder_renews_its_own_version_until_its_deadline_then_stops_acting() {
        let hold = Hold {
            term: 5,
            etag: "\"mine\"".into(),
            renewed: s(100),
            renewals: 9,
        };
        match step("a", s(109), None, Some(&hold)) {
            Step::Renew { etag, record } => {
                assert_eq!(etag, "\"mine\"");
                assert_eq!((record.term, record.renewals), (5, 10));
            }
            other => panic!("{other:?}"),
        }
        assert!(hold.permit(s(109), &T).is_some());
        assert_eq!(
            hold.permit(s(110), &T),
            None,
            "no call starts at the deadline"
        );
        // Past the deadline it no longer renews blindly: it reads and decides like anyone.
        assert!(matches!(
            step("a", s(110), None, Some(&hold)),
            Step::Create(_)
        ));
    }

    #[test]
    fn every_call_of_the_holder_ends_before_any_other_replica_may_take_over() {
        // The holder sends its renewal at 100 s; another replica can see it no earlier.
        let hold = Hold {
            term: 2,
            etag: "\"v\"".into(),
            renewed: s(100),
            renewals: 0,
        };
        let latest_permit = hold
            .permit(s(100) + T.renew_deadline - Duration::from_millis(1), &T)
            .unwrap();
        let seen_by_other = seen("a", 2, "\"v\"", s(100));
        let mut first_takeover = s(100);
        while !matches!(
            step("b", first_takeover, Some(&seen_by_other), None),
            Step::TakeOver { .. }
        ) {
            first_takeover += Duration::from_millis(100);
        }
        assert!(
            latest_permit.until < first_takeover,
            "a call may run until {:?}, another replica may act from {:?}",
            latest_permit.until,
            first_takeover
        );
        assert!(first_takeover - latest_permit.until >= Duration::from_secs(2));
    }

    #[test]
    fn timing_that_leaves_no_room_is_refused_naming_the_setting() {
        assert_eq!(
            Timing::new(s(15), s(10), s(2)).unwrap(),
            T,
            "the defaults are accepted"
        );
        assert_eq!(
            Timing::new(s(10), s(10), s(2)).unwrap_err().0,
            "election.lease_duration"
        );
        assert_eq!(
            Timing::new(s(15), s(3), s(2)).unwrap_err().0,
            "election.renew_deadline"
        );
        assert_eq!(
            Timing::new(s(15), s(10), Duration::from_millis(10))
                .unwrap_err()
                .0,
            "election.retry_period"
        );
    }

    #[test]
    fn the_record_round_trips_and_junk_is_no_record() {
        let r = LeaseRecord {
            holder: "pod-1".into(),
            term: 3,
            lease_ms: 15_000,
            renewals: 2,
            written_at: 1_700_000_000,
            released: false,
        };
        assert_eq!(LeaseRecord::parse(r.to_json().as_bytes()), Some(r));
        assert_eq!(LeaseRecord::parse(b"<html>"), None);
    }
}
