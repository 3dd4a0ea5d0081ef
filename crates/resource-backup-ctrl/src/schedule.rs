//! The restore order, pure logic, in a form that needs no object kept in memory.
//!
//! The verifying pass shows the [`Survey`] every object once, in archive order; it keeps a few
//! bytes per object (tier, whether the filters admit it, a digest of its bytes) plus the UIDs
//! and owner UIDs needed to work out owner depths. [`Survey::finish`] turns that into a
//! [`Schedule`]: each admitted object gets a level, `(tier, depth)` in the order CRDs,
//! Namespaces, other cluster-scoped, namespaced, and within a tier owners (depth 0) before
//! their dependents (depth 1, 2, …).
//!
//! An apply pass streams the archive again and asks [`Schedule::decide`] about each object: it
//! is ready when every object of every lower level has been dispatched. Objects that come
//! before something they depend on are deferred to the next pass. A backup writes resource
//! types in restore order (see backup.rs), so one pass usually applies everything; any archive
//! needs at most one pass per level.

use std::collections::HashMap;

use crate::plan::Tier;

/// A UID, compact: Kubernetes UIDs are UUIDs (16 bytes); anything else is kept as text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UidKey {
    Uuid(u128),
    Other(Box<str>),
}

impl UidKey {
    pub fn new(uid: &str) -> UidKey {
        let hex: String = uid.chars().filter(|c| *c != '-').collect();
        match u128::from_str_radix(&hex, 16) {
            Ok(value) if hex.len() == 32 && uid.len() == 36 => UidKey::Uuid(value),
            _ => UidKey::Other(uid.into()),
        }
    }
}

/// What the verifying pass keeps of one object.
#[derive(Clone, Copy, Debug)]
struct Surveyed {
    tier: Tier,
    admitted: bool,
    digest: u64,
}

/// Collects, object by object, what the order needs.
#[derive(Debug, Default)]
pub struct Survey {
    objects: Vec<Surveyed>,
    /// Position of each object by UID.
    positions: HashMap<UidKey, u32>,
    /// Owner UIDs of the objects that have owners.
    owners: Vec<(u32, Vec<UidKey>)>,
}

impl Survey {
    /// Records the object at the next position. `digest` identifies its bytes, so a later
    /// pass can tell that it reads the very object this pass verified.
    pub fn add(&mut self, tier: Tier, admitted: bool, digest: u64, uid: &str, owner_uids: &[String]) {
        let position = u32::try_from(self.objects.len()).unwrap_or(u32::MAX);
        if !uid.is_empty() {
            self.positions.insert(UidKey::new(uid), position);
        }
        if !owner_uids.is_empty() {
            self.owners
                .push((position, owner_uids.iter().map(|uid| UidKey::new(uid)).collect()));
        }
        self.objects.push(Surveyed { tier, admitted, digest });
    }

    /// Objects seen so far.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The schedule, and the UIDs of the archive's objects that own others (their new UIDs
    /// are worth remembering during the restore).
    pub fn finish(self) -> Schedule {
        let count = self.objects.len();
        let mut owner_positions: Vec<Vec<u32>> = vec![Vec::new(); count];
        let mut owners_in_archive = std::collections::HashSet::new();
        for (position, uids) in self.owners {
            for uid in uids {
                if let Some(&owner) = self.positions.get(&uid) {
                    owner_positions[position as usize].push(owner);
                    owners_in_archive.insert(uid);
                }
            }
        }
        let mut depths: Vec<Option<u32>> = vec![None; count];
        for position in 0..count {
            depth(position, &owner_positions, &mut depths, 0);
        }
        let mut levels: Vec<(Tier, u32)> = self
            .objects
            .iter()
            .zip(&depths)
            .filter(|(o, _)| o.admitted)
            .map(|(o, d)| (o.tier, d.unwrap_or(0)))
            .collect();
        levels.sort();
        levels.dedup();
        let level_of: HashMap<(Tier, u32), u16> = levels
            .iter()
            .enumerate()
            .map(|(i, key)| (*key, u16::try_from(i).unwrap_or(u16::MAX)))
            .collect();
        let mut undispatched = vec![0u32; levels.len()];
        let mut entries = Vec::with_capacity(count);
        for (object, depth) in self.objects.iter().zip(&depths) {
            let level = if object.admitted {
                let level = level_of[&(object.tier, depth.unwrap_or(0))];
                undispatched[level as usize] += 1;
                level
            } else {
                FILTERED
            };
            entries.push(Entry {
                level,
                state: if object.admitted { State::Waiting } else { State::Done },
                digest: object.digest,
            });
        }
        Schedule {
            unfinished: undispatched.clone(),
            undispatched,
            tiers: levels.iter().map(|(tier, _)| *tier).collect(),
            filtered: self.objects.iter().filter(|o| !o.admitted).count() as u64,
            entries,
            owners_in_archive,
        }
    }
}

/// Owner chains deeper than this are cycles (which the API server allows and garbage
/// collection never resolves): they are cut here.
const MAX_DEPTH: usize = 64;

fn depth(position: usize, owners: &[Vec<u32>], memo: &mut [Option<u32>], level: usize) -> u32 {
    if let Some(known) = memo[position] {
        return known;
    }
    if level > MAX_DEPTH {
        return 0;
    }
    let found = owners[position]
        .iter()
        .map(|&owner| depth(owner as usize, owners, memo, level + 1) + 1)
        .max()
        .unwrap_or(0);
    memo[position] = Some(found);
    found
}

const FILTERED: u16 = u16::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Dispatched,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    level: u16,
    state: State,
    digest: u64,
}

/// Which objects may be applied now, as objects are dispatched and finish.
#[derive(Debug)]
pub struct Schedule {
    entries: Vec<Entry>,
    /// Per level: objects not dispatched yet, and objects not finished yet.
    undispatched: Vec<u32>,
    unfinished: Vec<u32>,
    tiers: Vec<Tier>,
    filtered: u64,
    owners_in_archive: std::collections::HashSet<UidKey>,
}

/// What to do with the object at a position, now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Filtered out, or restored in an earlier pass.
    Skip,
    /// Something it comes after is still waiting: leave it for the next pass.
    Defer,
    /// Apply it, once every object of lower levels has finished (`after_lower_levels`: some
    /// are still in flight, so wait for them first).
    Ready { tier: Tier, after_lower_levels: bool },
}

impl Schedule {
    pub fn decide(&self, position: usize) -> Decision {
        let Some(entry) = self.entries.get(position) else {
            return Decision::Skip;
        };
        if entry.state != State::Waiting {
            return Decision::Skip;
        }
        let level = entry.level as usize;
        if self.undispatched[..level].iter().any(|&n| n > 0) {
            return Decision::Defer;
        }
        Decision::Ready {
            tier: self.tiers[level],
            after_lower_levels: self.unfinished[..level].iter().any(|&n| n > 0),
        }
    }

    /// The digest the verifying pass recorded for the object at `position`.
    pub fn digest(&self, position: usize) -> Option<u64> {
        self.entries.get(position).map(|e| e.digest)
    }

    pub fn dispatched(&mut self, position: usize) {
        if let Some(entry) = self.entries.get_mut(position)
            && entry.state == State::Waiting
        {
            entry.state = State::Dispatched;
            self.undispatched[entry.level as usize] -= 1;
        }
    }

    pub fn finished(&mut self, position: usize) {
        if let Some(entry) = self.entries.get_mut(position)
            && entry.state == State::Dispatched
        {
            entry.state = State::Done;
            self.unfinished[entry.level as usize] -= 1;
        }
    }

    /// True when every admitted object has been dispatched (some may still be in flight).
    pub fn all_dispatched(&self) -> bool {
        self.undispatched.iter().all(|&n| n == 0)
    }

    /// True when every admitted object has finished.
    pub fn is_complete(&self) -> bool {
        self.unfinished.iter().all(|&n| n == 0)
    }

    /// Objects to restore (admitted by the filters).
    pub fn total(&self) -> u64 {
        self.entries.len() as u64 - self.filtered
    }

    /// Objects the filters left out.
    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    /// True when `uid` (as archived) owns another object of the archive.
    pub fn owns_others(&self, uid: &str) -> bool {
        !uid.is_empty() && self.owners_in_archive.contains(&UidKey::new(uid))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uids_are_compact_when_they_are_uuids() {
        assert_eq!(
            UidKey::new("6f1c3a1e-4b7d-4c8e-9a1f-0123456789ab"),
            UidKey::Uuid(0x6f1c3a1e_4b7d_4c8e_9a1f_0123456789ab)
        );
        assert_eq!(UidKey::new("pod-uid"), UidKey::Other("pod-uid".into()));
        assert_eq!(UidKey::new("abc"), UidKey::Other("abc".into()));
    }

    #[test]
    fn in_flight_lower_levels_are_awaited_and_cycles_end() {
        let mut survey = Survey::default();
        survey.add(Tier::Namespaced, true, 1, "a", &["b".to_string()]);
        survey.add(Tier::Namespaced, true, 2, "b", &["a".to_string()]);
        survey.add(Tier::Namespaces, true, 3, "ns", &[]);
        let mut schedule = survey.finish();
        assert_eq!(schedule.total(), 3);
        assert_eq!(schedule.decide(0), Decision::Defer);
        assert_eq!(
            schedule.decide(2),
            Decision::Ready {
                tier: Tier::Namespaces,
                after_lower_levels: false
            }
        );
        schedule.dispatched(2);
        // Both cycle members got a level; the lower one is ready once the Namespace is in flight.
        let ready: Vec<usize> = (0..2)
            .filter(|&p| matches!(schedule.decide(p), Decision::Ready { .. }))
            .collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            schedule.decide(ready[0]),
            Decision::Ready {
                tier: Tier::Namespaced,
                after_lower_levels: true
            }
        );
        schedule.finished(2);
        schedule.dispatched(ready[0]);
        schedule.finished(ready[0]);
        let other = 1 - ready[0];
        assert!(matches!(schedule.decide(other), Decision::Ready { .. }));
        schedule.dispatched(other);
        schedule.finished(other);
        assert!(schedule.is_complete());
        assert_eq!(schedule.decide(other), Decision::Skip);
    }
}
