//! The keys of one state table: an index from key to a slot, and the key states in one vector.
//!
//! Why not a `HashMap<u64, Box<KeyState>>`: each event looks up its key in every table it
//! touches, and with a million accounts those lookups miss the cache, each a chain of dependent
//! loads (the map's control bytes, its bucket, the boxed state, the state's partials). Slots let
//! the processor find every key of a batch first and reach their states in a second pass, so
//! the loads of different rows overlap instead of waiting one after another; and a state in
//! the vector saves the allocator's header and rounding a box of it costs (56 bytes in a
//! 64-byte chunk). A freed slot goes on a free list and is reused by the next new key; a table
//! that shrinks below a quarter of its slots compacts them.
//!
//! A key is the 64-bit xxh3 hash of the entity value ([`key_of`]), not the value itself: most
//! keys see a handful of events, and the text is only needed when a rule reads the key, which
//! happens while an event with that text is at hand. Two entities colliding in 64 bits (about 3
//! in 10^6 across 10 million keys) would share a window.
//!
//! Where a key sits in the index is decided by a hash of the key seeded at random for each
//! table, not by the key itself. Keys are unseeded xxh3 hashes of entity values, and some
//! entity values are the sender's to choose (a prompt template's fingerprint, a client
//! fingerprint): with the key itself as the index hash, anyone could grind values offline
//! whose keys share their low bits and pile them onto one probe sequence, making every
//! lookup in that table scan them all. The seed is foldhash's: drawn from address-space layout
//! randomization, so it differs per process, and per table within one. It is not a
//! cryptographic guarantee, but it leaves nothing to grind offline. foldhash's `quality`
//! variant, not `fast`: how evenly `fast` spread 10,000 keys that differ only in their high
//! bits over 2^16 bucket positions depended on the seed (8,330 to 10,000 positions), while
//! `quality` spread them as a uniform hash would (9,179 to 9,275 over 3,000 seeds). One more
//! multiplication a lookup.
//!
//! The index holds each key as two 32-bit halves beside its slot (12 bytes an entry), not as a
//! `HashMap<u64, u32>`, whose entries are padded to 16 bytes: with a million keys in 2^21
//! buckets that is 8 MB a table less, about 8 bytes a key of the shipped pack's mix, and an
//! index that stays in cache longer. It is open addressing with linear probing written here
//! (`Index`) rather than hashbrown's table, because a lookup must be one load that can be
//! prefetched a few rows ahead ([`KeyTable::prefetch`]).
//!
//! The serialized form is a map from key to state, as the boxed map's was, so checkpoints
//! written before the change load unchanged.
//!
//! A table can also be encoded a little at a time while it keeps changing
//! ([`KeyTable::begin_snapshot`]): the encoding is of the table as it was when the snapshot
//! began, because a state about to change, or to be dropped, is encoded first. The engine's
//! loop then never stops for a whole table's encoding, which for millions of keys took longer
//! than the latency target.

use crate::codec::{self, CodecError};
use crate::prefetch::prefetch;
use crate::window::KeyState;
use foldhash::quality::SeedableRandomState;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::hash::BuildHasher;
use xxhash_rust::xxh3::xxh3_64;

/// The key of an entity value.
pub fn key_of(entity: &str) -> u64 {
    xxh3_64(entity.as_bytes())
}

/// Index of a key's state in its [`KeyTable`].
pub type Slot = u32;

/// An index entry: a key, split so that the entry is 12 bytes with 4-byte alignment, and its
/// slot.
#[derive(Debug, Clone, Copy)]
struct Entry12 {
    lo: u32,
    hi: u32,
    slot: Slot,
}

impl Entry12 {
    fn new(key: u64, slot: Slot) -> Self {
        Self {
            lo: key as u32,
            hi: (key >> 32) as u32,
            slot,
        }
    }

    fn key(&self) -> u64 {
        u64::from(self.hi) << 32 | u64::from(self.lo)
    }
}

/// An entry's slot when the entry is free: no live key has it (`state.max_keys` bounds the
/// slots far below 2^32).
const FREE: Slot = Slot::MAX;

/// The index: open addressing with linear probing over [`Entry12`]s, at most three quarters
/// full. Hand-written, where hashbrown's `HashTable` served before, for one reason: a lookup
/// here is one load that can be asked for ahead of time ([`Index::prefetch`]), where
/// hashbrown's is two dependent loads (its control bytes, then the entry) with no way to start
/// either early. Keys are looked up a batch at a time, so the processor prefetches the entry
/// of a key several rows ahead and finds it in cache (see the README's performance section
/// for the measurement).
#[derive(Debug, Default)]
struct Index {
    /// A power of two of entries, or none before the first key.
    entries: Box<[Entry12]>,
    len: usize,
}

impl Index {
    /// An index that holds `n` keys without growing.
    fn with_capacity(n: usize) -> Self {
        let mut index = Self::default();
        if n > 0 {
            index.entries = Self::free_entries(Self::capacity_for(n));
        }
        index
    }

    /// Entries needed to hold `n` keys at most three quarters full.
    fn capacity_for(n: usize) -> usize {
        (n.saturating_mul(4) / 3 + 1).next_power_of_two().max(16)
    }

    fn free_entries(capacity: usize) -> Box<[Entry12]> {
        vec![
            Entry12 {
                lo: 0,
                hi: 0,
                slot: FREE
            };
            capacity
        ]
        .into_boxed_slice()
    }

    fn mask(&self) -> usize {
        self.entries.len().wrapping_sub(1)
    }

    /// Starts loading the entry where a lookup of a key with index hash `hash` begins.
    #[inline]
    fn prefetch(&self, hash: u64) {
        let home = hash as usize & self.mask();
        prefetch(self.entries.as_ptr().wrapping_add(home));
    }

    /// The slot of `key`, or the free position where it would go.
    #[inline]
    fn probe(&self, hash: u64, key: u64) -> Result<Slot, usize> {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        // At most three quarters full, so a free entry ends every probe sequence.
        loop {
            match self.entries.get(i) {
                Some(e) if e.slot == FREE => return Err(i),
                Some(e) if e.key() == key => return Ok(e.slot),
                Some(_) => i = (i + 1) & mask,
                None => return Err(usize::MAX),
            }
        }
    }

    /// Makes room for one more key, growing (and rehashing with `hash`) when the index would
    /// be more than three quarters full.
    fn reserve_one(&mut self, hash: impl Fn(u64) -> u64) {
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.rebuild(
                Self::capacity_for(self.len + 1).max(self.entries.len() * 2),
                hash,
            );
        }
    }

    /// Puts `key` at free position `pos` (from [`Index::probe`] after [`Index::reserve_one`]).
    fn insert_at(&mut self, pos: usize, key: u64, slot: Slot) {
        if let Some(e) = self.entries.get_mut(pos) {
            *e = Entry12::new(key, slot);
            self.len += 1;
        }
    }

    /// The first free position of the probe sequence from `home`, or `stop` if the sequence
    /// reaches it first.
    fn free_from(&self, home: usize, stop: usize) -> usize {
        let mask = self.mask();
        let mut i = home & mask;
        while i != stop && self.entries.get(i).is_some_and(|x| x.slot != FREE) {
            i = (i + 1) & mask;
        }
        i
    }

    /// Moves the live entries into a fresh index of `capacity` entries.
    fn rebuild(&mut self, capacity: usize, hash: impl Fn(u64) -> u64) {
        let old = std::mem::replace(&mut self.entries, Self::free_entries(capacity));
        for e in old.iter().filter(|e| e.slot != FREE) {
            // A fresh index at most three quarters full always has a free position.
            let i = self.free_from(hash(e.key()) as usize, usize::MAX);
            if let Some(x) = self.entries.get_mut(i) {
                *x = *e;
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Entry12> {
        self.entries.iter().filter(|e| e.slot != FREE)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry12> {
        self.entries.iter_mut().filter(|e| e.slot != FREE)
    }

    /// Frees the entries `keep` rejects, then closes the holes they leave in probe sequences
    /// ([`Index::reseat`]), or rebuilds the index at a size for the keys left when it shrank
    /// below a quarter full.
    fn retain(&mut self, mut keep: impl FnMut(&Entry12) -> bool, hash: impl Fn(u64) -> u64) {
        let before = self.len;
        // A position free before any entry is freed: no probe sequence crosses it.
        let start = self.entries.iter().position(|e| e.slot == FREE);
        for e in self.entries.iter_mut().filter(|e| e.slot != FREE) {
            if !keep(e) {
                e.slot = FREE;
                self.len -= 1;
            }
        }
        if self.len == before {
            return;
        }
        if self.entries.len() > 64 && self.len < self.entries.len() / 4 {
            self.rebuild(Self::capacity_for(self.len), hash);
        } else if let Some(start) = start {
            self.reseat(start, hash);
        }
    }

    /// Moves every entry to the first free position of its probe sequence, in place: after
    /// entries were freed, a lookup must not stop at a hole before the key it looks for.
    /// Rebuilding into a new array would do the same, but would hold two copies of the index
    /// at once, and glibc keeps the freed one's pages (it raises its mmap threshold after
    /// freeing a large block): the eviction flood's resident memory rose by 80 MB that way.
    ///
    /// Entries are visited once round the array, starting after `start`, a position that was
    /// free before any entry was freed: no probe sequence crosses it, so none wraps past the
    /// start of the visit. Each entry moves to the first free position from its home, which
    /// lies on its old probe sequence. An entry visited earlier keeps its sequence, because a
    /// sequence runs from its home to its entry, all of it visited before any later position
    /// a move frees. (Starting after a position that was freed instead, an entry could move
    /// into it, and an earlier entry's sequence could then run across positions that are
    /// visited, and freed, only later: the property test found that case.)
    fn reseat(&mut self, start: usize, hash: impl Fn(u64) -> u64) {
        let mask = self.mask();
        for step in 1..=self.entries.len() {
            let j = (start + step) & mask;
            let Some(e) = self.entries.get(j).copied().filter(|e| e.slot != FREE) else {
                continue;
            };
            let i = self.free_from(hash(e.key()) as usize, j);
            if i != j {
                if let Some(x) = self.entries.get_mut(i) {
                    *x = e;
                }
                if let Some(x) = self.entries.get_mut(j) {
                    x.slot = FREE;
                }
            }
        }
    }
}

/// The word and the bit of `slot` in a bitset of slots.
fn bit(slot: usize) -> (usize, u64) {
    (slot / 64, 1u64 << (slot % 64))
}

/// Whether `slot` is set in `bits`.
fn is_set(bits: &[u64], slot: usize) -> bool {
    let (w, b) = bit(slot);
    bits.get(w).is_some_and(|word| word & b != 0)
}

/// Sets `slot` in `bits`.
fn set(bits: &mut [u64], slot: usize) {
    let (w, b) = bit(slot);
    if let Some(word) = bits.get_mut(w) {
        *word |= b;
    }
}

/// A table's encoding as of one moment, made a little at a time while the table changes
/// ([`KeyTable::begin_snapshot`]). Slots are encoded in order from `cursor`; a slot ahead of
/// the cursor is encoded out of turn just before its state changes or is dropped, and then
/// marked done. Slots added since the snapshot began (past the end of `keys`, or freed slots
/// reused) are not in it: their keys were not live then.
struct Snapshot {
    /// Each slot's key when the snapshot began; 8 bytes a slot.
    keys: Vec<u64>,
    /// Slots ahead of the cursor that need nothing more: free when the snapshot began, or
    /// encoded out of turn.
    done: Vec<u64>,
    /// Every slot before it is encoded or was free.
    cursor: usize,
    /// The map's entries so far: each a key's encoding, then its state's.
    entries: Vec<u8>,
    /// Entries in `entries`.
    count: usize,
    /// The first encoding error, reported when the snapshot is taken.
    error: Option<CodecError>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("slots", &self.keys.len())
            .field("cursor", &self.cursor)
            .field("count", &self.count)
            .field("bytes", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Encodes `slot`'s state as it is now, unless it is behind the cursor, done, or new since
    /// the snapshot began. Called before every change to a state.
    fn preserve(&mut self, slot: usize, states: &[KeyState]) {
        if slot < self.cursor || slot >= self.keys.len() || is_set(&self.done, slot) {
            return;
        }
        self.encode(slot, states);
        set(&mut self.done, slot);
    }

    fn encode(&mut self, slot: usize, states: &[KeyState]) {
        let (Some(key), Some(state)) = (self.keys.get(slot), states.get(slot)) else {
            return;
        };
        let r = codec::encode_into(key, &mut self.entries)
            .and_then(|()| codec::encode_into(state, &mut self.entries));
        match r {
            Ok(()) => self.count += 1,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Encodes slots in order from the cursor, up to `budget` of them (each one taken from
    /// it); returns true once every slot is done.
    fn step(&mut self, states: &[KeyState], budget: &mut usize) -> bool {
        while self.cursor < self.keys.len() && *budget > 0 {
            if !is_set(&self.done, self.cursor) {
                self.encode(self.cursor, states);
            }
            self.cursor += 1;
            *budget -= 1;
        }
        self.cursor >= self.keys.len()
    }

    /// Encodes every slot still to do.
    fn finish(&mut self, states: &[KeyState]) {
        let mut all = usize::MAX;
        self.step(states, &mut all);
    }
}

/// The keys of one state table (see the module docs).
#[derive(Debug, Default)]
pub struct KeyTable {
    index: Index,
    /// The index's hash of a key (see the module docs): seeded at random, or fixed in tests.
    hasher: SeedableRandomState,
    states: Vec<KeyState>,
    free: Vec<Slot>,
    /// The encoding under way, if any ([`KeyTable::begin_snapshot`]).
    snapshot: Option<Box<Snapshot>>,
}

impl KeyTable {
    /// Live keys.
    pub fn len(&self) -> usize {
        self.index.len
    }

    /// Whether there are no live keys.
    pub fn is_empty(&self) -> bool {
        self.index.len == 0
    }

    /// Starts loading the index entry of `key`, for a [`KeyTable::slot_or_insert`] of it a
    /// little later.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        self.index.prefetch(self.hasher.hash_one(key));
    }

    /// The slot of `key`, adding the key with an empty state if it is new (then `true`).
    pub fn slot_or_insert(&mut self, key: u64) -> (Slot, bool) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(key);
        // One probe of the index for both the lookup and the insertion: room for a new key is
        // made before the probe, so that its free position stays valid.
        self.index.reserve_one(|k| hasher.hash_one(k));
        let pos = match self.index.probe(hash, key) {
            Ok(slot) => return (slot, false),
            Err(pos) => pos,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.states.push(KeyState::default());
                // A table never holds 2^32 keys: `state.max_keys` bounds them far below.
                Slot::try_from(self.states.len() - 1).unwrap_or(Slot::MAX)
            }
        };
        self.index.insert_at(pos, key, slot);
        (slot, true)
    }

    /// Starts loading the state in `slot`, for a use of it a little later.
    #[inline]
    pub fn prefetch_state(&self, slot: Slot) {
        prefetch(self.states.as_ptr().wrapping_add(slot as usize));
    }

    /// The state in `slot` (from [`KeyTable::slot_or_insert`] since the last removal).
    #[inline]
    pub fn state_mut(&mut self, slot: Slot) -> Option<&mut KeyState> {
        if self.snapshot.is_some() {
            self.preserve(slot as usize);
        }
        self.states.get_mut(slot as usize)
    }

    /// Encodes `slot`'s state into the snapshot under way if it is still to do
    /// ([`Snapshot::preserve`]). Out of line and cold: the hot path only checks for a snapshot.
    #[cold]
    #[inline(never)]
    fn preserve(&mut self, slot: usize) {
        if let Some(snap) = self.snapshot.as_deref_mut() {
            snap.preserve(slot, &self.states);
        }
    }

    /// The state in `slot`.
    pub fn state(&self, slot: Slot) -> Option<&KeyState> {
        self.states.get(slot as usize)
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: u64) -> bool {
        self.index.probe(self.hasher.hash_one(key), key).is_ok()
    }

    /// The state of `key`.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut KeyState> {
        let slot = self.index.probe(self.hasher.hash_one(key), key).ok()?;
        self.state_mut(slot)
    }

    /// Every live key's state.
    pub fn values(&self) -> impl Iterator<Item = &KeyState> {
        self.iter().map(|(_, s)| s)
    }

    /// Every live key with its state, in the index's order, which differs from table to
    /// table and from run to run (its hash is seeded at random).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &KeyState)> {
        self.index
            .iter()
            .filter_map(|e| Some((e.key(), self.states.get(e.slot as usize)?)))
    }

    /// Calls `f` with every live key's state. A snapshot under way is completed first.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut KeyState)) {
        if let Some(snap) = self.snapshot.as_deref_mut() {
            snap.finish(&self.states);
        }
        for e in self.index.iter() {
            if let Some(s) = self.states.get_mut(e.slot as usize) {
                f(s);
            }
        }
    }

    /// Keeps the keys for which `keep(key, state)` is true; the others' slots are freed.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &KeyState) -> bool) {
        let (states, free, hasher) = (&mut self.states, &mut self.free, &self.hasher);
        let mut snapshot = self.snapshot.as_deref_mut();
        self.index.retain(
            |e| {
                let slot = e.slot as usize;
                match states.get(slot) {
                    Some(s) if keep(e.key(), s) => return true,
                    Some(_) => {}
                    None => return false,
                }
                if let Some(snap) = snapshot.as_deref_mut() {
                    snap.preserve(slot, states);
                }
                let Some(s) = states.get_mut(slot) else {
                    return false;
                };
                *s = KeyState::default();
                free.push(e.slot);
                false
            },
            |k| hasher.hash_one(k),
        );
        self.compact_if_sparse();
    }

    /// Keeps the keys whose state `keep` accepts; the others' slots are freed. Unlike
    /// [`retain`](Self::retain), which goes through the index and so reaches the states at
    /// random, this visits the states front to back in slot order, which it can because it
    /// needs no key: a slot is live unless it is on the free list. The expiry walk over the
    /// throughput harness's 2.1M keys took 86-125 ms through the index, 41-55 ms this way
    /// (Intel host, 2026-11-28). `retain` stays apart: given keys by the slot-order pass the
    /// checkpoint uses, the expiry walk took 76-101 ms, and the eviction flood held 16 MB more
    /// at its peak for the keys' map.
    pub fn retain_states(&mut self, mut keep: impl FnMut(&KeyState) -> bool) {
        let words = self.states.len().div_ceil(64);
        let free = self.free_slots();
        let mut dropped = vec![0u64; words];
        let mut any = false;
        for slot in 0..self.states.len() {
            if is_set(&free, slot) || keep(&self.states[slot]) {
                continue;
            }
            if self.snapshot.is_some() {
                self.preserve(slot);
            }
            self.states[slot] = KeyState::default();
            // A table never holds 2^32 slots: `state.max_keys` bounds them far below.
            self.free.push(Slot::try_from(slot).unwrap_or(Slot::MAX));
            set(&mut dropped, slot);
            any = true;
        }
        if !any {
            return;
        }
        let hasher = &self.hasher;
        self.index.retain(
            |e| !is_set(&dropped, e.slot as usize),
            |k| hasher.hash_one(k),
        );
        self.compact_if_sparse();
    }

    /// A bit per slot, set for the slots on the free list: every other slot is live.
    fn free_slots(&self) -> Vec<u64> {
        let mut free = vec![0u64; self.states.len().div_ceil(64)];
        for &slot in &self.free {
            set(&mut free, slot as usize);
        }
        free
    }

    /// [`compact`](Self::compact)s the table once fewer than a quarter of its slots are live,
    /// unless a snapshot is under way (compacting renumbers the slots it goes by).
    fn compact_if_sparse(&mut self) {
        if self.snapshot.is_none()
            && self.states.len() > 64
            && self.index.len < self.states.len() / 4
        {
            self.compact();
        }
    }

    /// Moves the live states to the front of a right-sized vector and renumbers their slots,
    /// so that a table that shrank (a flood evicted, idle keys expired) gives the memory back.
    /// Slots are only held within a batch, and keys are dropped between batches.
    fn compact(&mut self) {
        let mut states = Vec::with_capacity(self.index.len);
        for e in self.index.iter_mut() {
            if let Some(s) = self.states.get_mut(e.slot as usize) {
                e.slot = Slot::try_from(states.len()).unwrap_or(Slot::MAX);
                states.push(std::mem::take(s));
            }
        }
        self.states = states;
        self.free = Vec::new();
    }

    /// Each slot's key (0 for a free slot), from one pass over the index: 8 bytes a slot.
    fn slot_keys(&self) -> Vec<u64> {
        let mut keys = vec![0u64; self.states.len()];
        for e in self.index.iter() {
            if let Some(k) = keys.get_mut(e.slot as usize) {
                *k = e.key();
            }
        }
        keys
    }

    /// Starts encoding the table as it is now, to be done a little at a time
    /// ([`snapshot_step`](Self::snapshot_step)) while the table goes on changing, and taken
    /// with [`take_snapshot`](Self::take_snapshot). Its bytes are the table's serialized form
    /// as of now (the entries in another order: pre-images of changed states first). Replaces
    /// a snapshot under way. Until it is taken, the table is not compacted, and a state is
    /// encoded just before its first change or removal if its turn has not come yet.
    pub fn begin_snapshot(&mut self) {
        let keys = self.slot_keys();
        self.snapshot = Some(Box::new(Snapshot {
            done: self.free_slots(),
            cursor: 0,
            entries: Vec::new(),
            count: 0,
            error: None,
            keys,
        }));
    }

    /// Drops the snapshot under way, if any, without encoding the rest of it.
    pub fn cancel_snapshot(&mut self) {
        self.snapshot = None;
    }

    /// Whether a snapshot is under way.
    pub fn snapshot_pending(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Encodes up to `budget` more slots of the snapshot under way, taking them from the
    /// budget. Returns true when it is complete (or when none is under way).
    pub fn snapshot_step(&mut self, budget: &mut usize) -> bool {
        match self.snapshot.as_deref_mut() {
            Some(snap) => snap.step(&self.states, budget),
            None => true,
        }
    }

    /// Completes the snapshot under way and returns it in two parts, which written one after
    /// the other are the table's serialized form as of
    /// [`begin_snapshot`](Self::begin_snapshot): the entry count, then the entries. `None`
    /// when none is under way.
    pub fn take_snapshot(&mut self) -> Option<Result<[Vec<u8>; 2], CodecError>> {
        let mut snap = self.snapshot.take()?;
        snap.finish(&self.states);
        if let Some(e) = snap.error {
            return Some(Err(e));
        }
        let mut count = Vec::new();
        Some(codec::encode_into(&snap.count, &mut count).map(|()| [count, snap.entries]))
    }

    /// Estimated bytes held: the index, every slot (live or free) and the states' heap.
    pub fn bytes(&self) -> usize {
        use std::mem::size_of;
        self.index.entries.len() * size_of::<Entry12>()
            + self.states.capacity() * size_of::<KeyState>()
            + self.free.capacity() * size_of::<Slot>()
            // Every slot in order, live or free (a freed slot holds an empty state, with no
            // heap): front to back through the states and their partials, not at random in
            // the index's order.
            + self.states.iter().map(KeyState::heap_bytes).sum::<usize>()
    }
}

/// Entries go out in slot order, not in the index's order: the states vector and the partials
/// (allocated as keys arrived, mostly in slot order too) are then read front to back instead of
/// at random. The index's order put a cache miss or two behind every key: encoding the
/// throughput harness's 2.1M keys took 1.55-2.12 s that way (median 1.69 over four runs) and
/// 0.96-1.19 s this way (median 1.04, alternating; Intel host, 2026-11-28). Decoding does not
/// depend on the order.
impl Serialize for KeyTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Each live slot's key (8 bytes a slot while the table is encoded); a slot is live
        // unless it is on the free list.
        let keys = self.slot_keys();
        let free = self.free_slots();
        let mut map = s.serialize_map(Some(self.index.len))?;
        for (slot, (key, state)) in keys.iter().zip(&self.states).enumerate() {
            if !is_set(&free, slot) {
                map.serialize_entry(key, state)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for KeyTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyTable;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from key to key state")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<KeyTable, A::Error> {
                let n = m.size_hint().unwrap_or(0);
                let mut t = KeyTable {
                    index: Index::with_capacity(n),
                    hasher: SeedableRandomState::random(),
                    states: Vec::with_capacity(n),
                    free: Vec::new(),
                    snapshot: None,
                };
                while let Some((key, mut state)) = m.next_entry::<u64, KeyState>()? {
                    // The packed window count is the decoder's to work out, not the file's.
                    state.recount_events();
                    let (slot, _) = t.slot_or_insert(key);
                    if let Some(s) = t.state_mut(slot) {
                        *s = state;
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn freed_slots_are_reused_and_states_start_empty() {
        let mut t = KeyTable::default();
        let (a, new_a) = t.slot_or_insert(1);
        let (b, _) = t.slot_or_insert(2);
        assert!(new_a && a != b);
        assert_eq!(t.slot_or_insert(1), (a, false));
        if let Some(s) = t.state_mut(a) {
            s.touch = 7;
        }
        t.retain(|_, s| s.touch != 7);
        assert_eq!(t.len(), 1);
        assert!(t.get_mut(1).is_none());
        let (c, new_c) = t.slot_or_insert(3);
        assert!(new_c);
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(
            t.state_mut(c).map(|s| s.touch),
            Some(0),
            "reused slots start empty"
        );
        assert!(t.get_mut(2).is_some());
    }

    #[test]
    fn a_table_that_shrinks_gives_its_slots_back_and_keeps_its_keys() {
        let mut t = KeyTable::default();
        for k in 0..1000u64 {
            let (slot, _) = t.slot_or_insert(k);
            if let Some(s) = t.state_mut(slot) {
                s.touch = k as u32;
            }
        }
        t.retain(|_, s| s.touch % 10 == 0);
        assert_eq!(t.len(), 100);
        assert!(
            t.states.capacity() < 1000,
            "compacted: {}",
            t.states.capacity()
        );
        for k in (0..1000u64).step_by(10) {
            assert_eq!(t.get_mut(k).map(|s| s.touch), Some(k as u32), "key {k}");
        }
        assert!(t.get_mut(5).is_none());
        // New keys take fresh slots after the live ones.
        let (slot, new) = t.slot_or_insert(5000);
        assert!(new && slot == 100);
    }

    #[test]
    fn keys_ground_to_share_their_low_bits_still_spread_over_the_index() {
        // Keys whose low 32 bits are all equal: what a sender grinding entity values offline
        // would aim for, since the index's buckets are picked by the low bits of its hash. A
        // fixed seed keeps the test deterministic; the engine's tables take random ones.
        let keys: Vec<u64> = (0..10_000u64).map(|i| (i << 32) | 0x5eed).collect();
        let mut t = KeyTable {
            hasher: SeedableRandomState::with_seed(7, foldhash::SharedSeed::global_fixed()),
            ..KeyTable::default()
        };
        let mut load: HashMap<u64, u32> = HashMap::new();
        for k in &keys {
            *load.entry(t.hasher.hash_one(*k) & 0xffff).or_default() += 1;
        }
        // Unhashed, all 10,000 would share one bucket position. A uniform hash puts them on
        // about 9,290 of the 65,536 and at most a handful on any one.
        let most = load.values().max().copied().unwrap_or(0);
        assert!(most <= 8, "{most} keys on one bucket position");
        assert!(load.len() > 9_000, "{} positions of 10000 keys", load.len());
        for k in &keys {
            assert!(t.slot_or_insert(*k).1, "new");
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.slot_or_insert(*k), (i as Slot, false));
        }
    }

    /// A table with a fixed index seed, so that a failing case replays.
    fn seeded() -> KeyTable {
        KeyTable {
            hasher: SeedableRandomState::with_seed(11, foldhash::SharedSeed::global_fixed()),
            ..KeyTable::default()
        }
    }

    #[test]
    fn keys_stay_found_as_the_index_grows_and_at_the_ends_of_the_key_range() {
        let mut t = seeded();
        // 0 and u64::MAX are keys like any other: a free entry is marked by its slot.
        let keys: Vec<u64> = [0, u64::MAX]
            .into_iter()
            .chain((1..50_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.slot_or_insert(*k), (i as Slot, true), "key {k:#x}");
        }
        assert_eq!(t.len(), keys.len());
        // Grown in powers of two, never more than three quarters full.
        let cap = t.index.entries.len();
        assert!(
            cap.is_power_of_two() && t.len() * 4 <= cap * 3,
            "{} in {cap}",
            t.len()
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.slot_or_insert(*k), (i as Slot, false), "key {k:#x}");
        }
        assert!(t.get_mut(12345).is_none());
    }

    #[test]
    fn removals_from_a_full_index_leave_every_other_key_found() {
        // Three quarters full (long clusters, some wrapping round the end of the array), then
        // a tenth of the keys removed at random, round after round, with new keys in between.
        let mut t = seeded();
        let mut live: std::collections::BTreeSet<u64> = Default::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..30 {
            // Fill to just below the growth point.
            while (t.len() + 2) * 4 <= t.index.entries.len() * 3 || t.len() < 1_000 {
                let k = next();
                t.slot_or_insert(k);
                live.insert(k);
            }
            let cap = t.index.entries.len();
            let cut = next();
            t.retain(|k, _| (k ^ cut) % 10 != 0);
            live.retain(|k| (k ^ cut) % 10 != 0);
            assert_eq!(
                t.index.entries.len(),
                cap,
                "round {round}: reseated in place"
            );
            assert_eq!(t.len(), live.len(), "round {round}");
            for k in &live {
                assert!(t.get_mut(*k).is_some(), "round {round}: key {k:#x} lost");
            }
        }
    }

    proptest::proptest! {
        /// The table against a `HashMap` model: inserts and removals in any order, then every
        /// key the model holds is found with its state and no other key is.
        #[test]
        fn the_table_agrees_with_a_map_through_inserts_and_removals(
            ops in proptest::collection::vec((0u64..400, 0u8..8), 1..600),
        ) {
            let mut t = seeded();
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (n, (key, op)) in ops.iter().enumerate() {
                if *op == 0 {
                    // Remove the keys in a residue class of the current key.
                    t.retain(|k, _| k % 7 != key % 7);
                    model.retain(|k, _| k % 7 != key % 7);
                } else if *op == 1 {
                    // Remove by state alone, in slot order: keys first seen at some steps.
                    t.retain_states(|s| u64::from(s.touch) % 5 != key % 5);
                    model.retain(|_, touch| u64::from(*touch) % 5 != key % 5);
                } else {
                    let (slot, new) = t.slot_or_insert(*key);
                    proptest::prop_assert_eq!(new, !model.contains_key(key));
                    if let Some(s) = t.state_mut(slot).filter(|_| new) {
                        s.touch = n as u32;
                    }
                    model.entry(*key).or_insert(n as u32);
                }
            }
            proptest::prop_assert_eq!(t.len(), model.len());
            for k in 0u64..400 {
                proptest::prop_assert_eq!(t.get_mut(k).map(|s| s.touch), model.get(&k).copied());
            }
            let mut listed: Vec<u64> = t.iter().map(|(k, _)| k).collect();
            listed.sort_unstable();
            let mut expected: Vec<u64> = model.keys().copied().collect();
            expected.sort_unstable();
            proptest::prop_assert_eq!(listed, expected);
            // Serialized (in slot order, past the freed slots) and read back: the same keys
            // with the same states.
            let cfg = bincode::config::standard();
            let bytes = bincode::serde::encode_to_vec(&t, cfg).expect("encode");
            let (mut back, _): (KeyTable, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).expect("decode");
            proptest::prop_assert_eq!(back.len(), model.len());
            for k in 0u64..400 {
                proptest::prop_assert_eq!(back.get_mut(k).map(|s| s.touch), model.get(&k).copied());
            }
        }
    }

    /// Decodes a snapshot's two parts as the table they encode.
    fn snapshot_table(parts: [Vec<u8>; 2]) -> KeyTable {
        let bytes = parts.concat();
        let cfg = bincode::config::standard();
        let (back, used): (KeyTable, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).expect("decode");
        assert_eq!(used, bytes.len(), "the parts are one serialized table");
        back
    }

    #[test]
    fn a_snapshot_of_an_unchanged_table_is_its_serialized_form() {
        let mut t = seeded();
        for k in 0..1_000u64 {
            let (slot, _) = t.slot_or_insert(k * 7919);
            t.state_mut(slot).expect("slot").touch = k as u32;
        }
        t.retain(|k, _| k % 3 != 0);
        t.begin_snapshot();
        let mut budget = 100;
        assert!(
            !t.snapshot_step(&mut budget),
            "1,000 slots take more than 100"
        );
        assert_eq!(budget, 0);
        let parts = t.take_snapshot().expect("under way").expect("encoded");
        assert!(!t.snapshot_pending());
        let whole = bincode::serde::encode_to_vec(&t, bincode::config::standard()).expect("encode");
        assert_eq!(parts.concat(), whole);
    }

    proptest::proptest! {
        /// A snapshot taken a little at a time while keys are added, changed and removed (and
        /// most of them removed, which would otherwise compact the table) holds exactly the
        /// keys and states of the moment it began; the table meanwhile agrees with its model.
        #[test]
        fn a_snapshot_holds_the_table_as_it_was_when_it_began(
            before in proptest::collection::vec(0u64..300, 1..300),
            ops in proptest::collection::vec((0u64..300, 0u8..10), 1..400),
        ) {
            let mut t = seeded();
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (n, key) in before.iter().enumerate() {
                let (slot, _) = t.slot_or_insert(*key);
                t.state_mut(slot).expect("slot").touch = n as u32;
                model.insert(*key, n as u32);
            }
            t.retain(|k, _| k % 11 != 0);
            model.retain(|k, _| k % 11 != 0);
            let then = model.clone();
            t.begin_snapshot();
            for (n, (key, op)) in ops.iter().enumerate() {
                let n = (n + before.len()) as u32;
                match op {
                    0 => {
                        t.retain(|k, _| k % 3 != key % 3);
                        model.retain(|k, _| k % 3 != key % 3);
                    }
                    1 => {
                        t.retain_states(|s| u64::from(s.touch) % 4 != key % 4);
                        model.retain(|_, touch| u64::from(*touch) % 4 != key % 4);
                    }
                    2 | 3 => {
                        let mut budget = (*key % 40) as usize;
                        t.snapshot_step(&mut budget);
                    }
                    _ => {
                        // Added or changed.
                        let (slot, _) = t.slot_or_insert(*key);
                        t.state_mut(slot).expect("slot").touch = n;
                        model.insert(*key, n);
                    }
                }
            }
            proptest::prop_assert_eq!(t.len(), model.len());
            for k in 0u64..300 {
                proptest::prop_assert_eq!(t.get_mut(k).map(|s| s.touch), model.get(&k).copied());
            }
            let mut back = snapshot_table(t.take_snapshot().expect("under way").expect("encoded"));
            proptest::prop_assert_eq!(back.len(), then.len());
            for k in 0u64..300 {
                proptest::prop_assert_eq!(back.get_mut(k).map(|s| s.touch), then.get(&k).copied());
            }
        }
    }

    #[test]
    fn serialized_like_a_map_of_boxed_states() {
        // Checkpoints from before the key table held `HashMap<u64, Box<KeyState>>`.
        let mut old: HashMap<u64, Box<KeyState>> = HashMap::new();
        let mut st = KeyState::default();
        st.touch = 3;
        old.insert(42, Box::new(st));
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&old, cfg).expect("encode");
        let (mut t, _): (KeyTable, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).expect("decode");
        assert_eq!(t.get_mut(42).map(|s| s.touch), Some(3));
        let again = bincode::serde::encode_to_vec(&t, cfg).expect("encode");
        assert_eq!(again, bytes);
    }
}
