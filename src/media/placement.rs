//! Which media worker owns which room and participant.
//!
//! Every member of a room must live in the same [`Sfu`](crate::sfu::Sfu), so a room is pinned to
//! one worker while it has members: its first participant picks the worker with the fewest
//! participants, later ones follow the room. The handle places participants when it sends their
//! first offer and forgets them when it removes them; a worker forgets the participants whose
//! connection ended ([`SfuEvent::Disconnected`](crate::sfu::SfuEvent::Disconnected)). A room is
//! unpinned with its last participant, so it may land elsewhere next time.
//!
//! Signaling-rate bookkeeping only: the forwarding path never looks at it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::sfu::ParticipantId;

/// Most trickled candidates held for one participant that has no worker yet (its first offer has
/// not been sent); the SFU holds as many for a participant without an offer.
const MAX_HELD_CANDIDATES: usize = 64;

/// Most participants with candidates held before their first offer.
const MAX_HELD_PARTICIPANTS: usize = 4096;

/// Where a participant lives.
#[derive(Debug, Clone)]
struct Seat {
    worker: usize,
    room: Arc<str>,
}

/// A room's worker and how many placed participants it has.
#[derive(Debug, Clone, Copy)]
struct Pin {
    worker: usize,
    members: usize,
}

/// The result of [`Placement::place`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    /// The worker to send the participant's commands to.
    pub(crate) worker: usize,
    /// Whether this call placed it (its first offer), rather than finding it placed.
    pub(crate) new: bool,
    /// Candidates trickled before it was placed, to pass to the worker before the offer.
    pub(crate) held_candidates: Vec<String>,
}

/// The room -> worker and participant -> worker tables.
#[derive(Debug)]
pub(crate) struct Placement {
    rooms: HashMap<Arc<str>, Pin>,
    seats: HashMap<ParticipantId, Seat>,
    /// Placed participants per worker.
    load: Vec<usize>,
    held: HashMap<ParticipantId, Vec<String>>,
}

impl Placement {
    /// Tables for `workers` workers (at least one).
    pub(crate) fn new(workers: usize) -> Placement {
        Placement {
            rooms: HashMap::new(),
            seats: HashMap::new(),
            load: vec![0; workers.max(1)],
            held: HashMap::new(),
        }
    }

    /// The worker `participant` lives on, if it is placed.
    pub(crate) fn worker_of(&self, participant: ParticipantId) -> Option<usize> {
        self.seats.get(&participant).map(|s| s.worker)
    }

    /// The worker `room` is pinned to, if it has placed participants.
    #[cfg(test)]
    pub(crate) fn room_worker(&self, room: &str) -> Option<usize> {
        self.rooms.get(room).map(|p| p.worker)
    }

    /// Places `participant` for an offer in `room`: where it already lives (a renegotiation, or an
    /// offer naming another room, which its worker's SFU refuses), else on the room's worker, else
    /// (a new room) on the least loaded worker, lowest index first.
    pub(crate) fn place(&mut self, room: &str, participant: ParticipantId) -> Placed {
        if let Some(seat) = self.seats.get(&participant) {
            return Placed {
                worker: seat.worker,
                new: false,
                held_candidates: Vec::new(),
            };
        }
        let (room, worker) = match self.rooms.get_key_value(room) {
            Some((name, pin)) => (Arc::clone(name), pin.worker),
            None => {
                let worker = self
                    .load
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, load)| (**load, *i))
                    .map_or(0, |(i, _)| i);
                (Arc::from(room), worker)
            }
        };
        self.rooms
            .entry(Arc::clone(&room))
            .or_insert(Pin { worker, members: 0 })
            .members += 1;
        if let Some(load) = self.load.get_mut(worker) {
            *load += 1;
        }
        self.seats.insert(participant, Seat { worker, room });
        Placed {
            worker,
            new: true,
            held_candidates: self.held.remove(&participant).unwrap_or_default(),
        }
    }

    /// Forgets `participant` (removed, its connection ended, or its first offer failed); unpins its
    /// room when it was the last. Unknown participants are ignored; held candidates are dropped.
    pub(crate) fn release(&mut self, participant: ParticipantId) {
        self.held.remove(&participant);
        let Some(seat) = self.seats.remove(&participant) else {
            return;
        };
        if let Some(load) = self.load.get_mut(seat.worker) {
            *load = load.saturating_sub(1);
        }
        if let Entry::Occupied(mut pin) = self.rooms.entry(seat.room) {
            pin.get_mut().members = pin.get().members.saturating_sub(1);
            if pin.get().members == 0 {
                pin.remove();
            }
        }
    }

    /// Holds a candidate trickled by a participant not placed yet, for [`Placement::place`] to hand
    /// over. Returns `false` (the candidate is dropped) past the limits.
    pub(crate) fn hold_candidate(&mut self, participant: ParticipantId, candidate: String) -> bool {
        let holding = self.held.len();
        let list = match self.held.entry(participant) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if holding >= MAX_HELD_PARTICIPANTS => return false,
            Entry::Vacant(e) => e.insert(Vec::new()),
        };
        if list.len() >= MAX_HELD_CANDIDATES {
            return false;
        }
        list.push(candidate);
        true
    }

    /// Placed participants per worker.
    #[cfg(test)]
    pub(crate) fn loads(&self) -> &[usize] {
        &self.load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);
    const C: ParticipantId = ParticipantId(3);
    const D: ParticipantId = ParticipantId(4);

    #[test]
    fn members_of_a_room_share_its_worker_and_new_rooms_go_to_the_least_loaded() {
        let mut p = Placement::new(2);
        assert_eq!(p.place("r1", A).worker, 0);
        assert_eq!(p.place("r1", B).worker, 0);
        assert_eq!(p.place("r2", C).worker, 1);
        assert_eq!(p.place("r1", D).worker, 0);
        assert_eq!(p.loads(), &[3, 1]);
        assert_eq!(p.worker_of(C), Some(1));
    }

    #[test]
    fn a_placed_participant_stays_where_it_is_whatever_room_it_names() {
        let mut p = Placement::new(2);
        p.place("r1", A);
        p.place("r2", B);
        let again = p.place("r2", A);
        assert_eq!((again.worker, again.new), (0, false));
        assert_eq!(p.loads(), &[1, 1]);
    }

    #[test]
    fn a_room_is_unpinned_with_its_last_participant() {
        let mut p = Placement::new(2);
        p.place("r1", A);
        p.place("r1", B);
        p.place("r2", C);
        p.release(A);
        assert_eq!(p.room_worker("r1"), Some(0));
        p.release(B);
        p.release(B);
        assert_eq!(p.room_worker("r1"), None);
        assert_eq!(p.worker_of(B), None);
        assert_eq!(p.loads(), &[0, 1]);
        // Worker 0 is now the least loaded.
        assert_eq!(p.place("r1", D).worker, 0);
    }

    #[test]
    fn candidates_before_the_first_offer_are_held_and_bounded() {
        let mut p = Placement::new(1);
        for i in 0..MAX_HELD_CANDIDATES {
            assert!(p.hold_candidate(A, format!("c{i}")));
        }
        assert!(!p.hold_candidate(A, "one too many".into()));
        let placed = p.place("r", A);
        assert_eq!(placed.held_candidates.len(), MAX_HELD_CANDIDATES);
        assert_eq!(placed.held_candidates[0], "c0");
        assert!(p.hold_candidate(B, "c".into()));
        p.release(B);
        assert!(p.place("r", B).held_candidates.is_empty());
    }

    #[test]
    fn one_worker_takes_everything() {
        let mut p = Placement::new(0);
        assert_eq!(p.place("r1", A).worker, 0);
        assert_eq!(p.place("r2", B).worker, 0);
    }
}
