//! Frames: how the input stage packs the events it forwards to the repartition topic
//! ([`crate::processor::Stage::Source`]), and how the repartition stage unpacks them.
//!
//! Why frames: with a Kafka message per forwarded event, librdkafka's work per message (the
//! queueing, the header, the delivery report served on the loop's thread) kept the input
//! stage's loop busy all the time, with 3.57 messages an event for the shipped pack. A frame
//! carries a batch's events for one partition of the repartition topic, up to
//! `repartition.max_frame_bytes`, so that work is paid per frame. The input stage picks the
//! partition itself, from the entity's value ([`value_hash`], [`route`]), so each entity's
//! events still meet in one partition, and each input partition's events reach it in order.
//!
//! A frame is a message with the header [`HEADER_FRAME`] set to [`FRAME_VERSION`], no key, and
//! this body (integers little-endian):
//!
//! ```text
//! frame   := record{records} entity{count} entities_at:u32 count:u16 records:u32
//! record  := entity:u16 partition:i32 offset:i64 length:u32 payload
//! entity  := length:u32 text          the entity expression as the plan writes it
//! ```
//!
//! `entity` indexes the frame's entity list, which starts at byte `entities_at`; `partition`
//! and `offset` are the event's place in the input topic; `payload` is the event's JSON as
//! [`crate::decode::forward_payload`] left it (never a raw prompt). The list and the counts
//! come last so that the input stage appends events to a frame's buffer and seals it in place,
//! without a copy. The form is versioned by the header, so a later form can be read beside
//! this one.

use crate::processor::Forwarded;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The header that marks a message of the repartition topic as a frame, with the form's
/// version as its value ([`FRAME_VERSION`]).
pub const HEADER_FRAME: &str = "cordon.forwards";

/// The version of the frame's form this build writes and reads.
pub const FRAME_VERSION: &[u8] = b"1";

/// The default of `repartition.max_frame_bytes`: well under the 1 MB that brokers and
/// librdkafka accept in a message by default, and under glibc's mmap threshold (128 KiB), past
/// which every copy librdkafka makes of a frame was a fresh mapping zeroed page by page
/// (README, "Tried and not kept").
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Seeds the hash that picks an entity value's partition, so that it is not the hash the key
/// tables use for the same values ([`crate::keys::key_of`]).
const DESTINATION_SEED: u64 = 0x636f_7264_6f6e_5f72;

/// Bytes of a record before its payload: entity, partition, offset, length.
const RECORD_HEAD: usize = 2 + 4 + 8 + 4;

/// The hash of an entity value that picks its partition ([`route`]): seeded xxh3, the same on
/// every replica and version that writes this frame form (a change would split an entity's
/// window between two partitions).
pub fn value_hash(value: &[u8]) -> u64 {
    xxh3_64_with_seed(value, DESTINATION_SEED)
}

/// The partition of the repartition topic (of `partitions`) for an entity value of hash
/// `hash` ([`value_hash`]).
pub fn route(hash: u64, partitions: u32) -> i32 {
    // Below `partitions`, a Kafka topic's partition count, which Kafka holds in an i32.
    (hash % u64::from(partitions.max(1))) as i32
}

/// The frames of one batch being packed, one open frame per destination partition. A frame
/// that fills, and every open frame at the end of the batch ([`Framer::finish`]), is handed
/// to the caller's `emit` with its partition; the buffers are kept for the next.
#[derive(Debug)]
pub struct Framer {
    partitions: u32,
    max_bytes: usize,
    /// Indexed by destination partition.
    open: Vec<Open>,
}

#[derive(Debug, Default)]
struct Open {
    entities: Vec<Arc<str>>,
    /// The bytes the entity list will take.
    entity_bytes: usize,
    count: u32,
    /// The records so far.
    buf: Vec<u8>,
}

/// The bytes after the entity list: where it starts, its length, the records'.
const FOOTER: usize = 4 + 2 + 4;

impl Open {
    /// The size of the frame as it would be sealed now.
    fn bytes(&self) -> usize {
        self.buf.len() + self.entity_bytes + FOOTER
    }

    /// Completes the frame in its buffer, hands it to `emit`, and empties it.
    fn seal<E>(
        &mut self,
        dest: i32,
        emit: &mut impl FnMut(i32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let entities_at = len32(self.buf.len());
        for e in &self.entities {
            self.buf.extend_from_slice(&len32(e.len()).to_le_bytes());
            self.buf.extend_from_slice(e.as_bytes());
        }
        self.buf.extend_from_slice(&entities_at.to_le_bytes());
        // At most u16::MAX entities: `Framer::push` seals a frame before it would hold more.
        self.buf
            .extend_from_slice(&(self.entities.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(&self.count.to_le_bytes());
        let sent = emit(dest, &self.buf);
        self.entities.clear();
        self.entity_bytes = 0;
        self.count = 0;
        self.buf.clear();
        sent
    }
}

/// A length as the form writes it. Payloads are bounded by `source.max_message_bytes`, entity
/// texts by the rule files, and frames by `repartition.max_frame_bytes`, far below 4 GiB.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Framer {
    /// Frames for a topic of `partitions` partitions, each at most `max_bytes` unless one
    /// event alone is larger (it then goes in a frame of its own).
    pub fn new(partitions: u32, max_bytes: usize) -> Self {
        let partitions = partitions.max(1);
        Self {
            partitions,
            max_bytes,
            open: (0..partitions).map(|_| Open::default()).collect(),
        }
    }

    /// The number of partitions events are spread over.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Adds the event of input `partition` at `offset` with `payload`, forwarded for `entity`
    /// whose value in it hashes to `hash` ([`value_hash`]). A frame this event does not fit
    /// goes to `emit` first.
    pub fn push<E>(
        &mut self,
        entity: &Arc<str>,
        hash: u64,
        partition: i32,
        offset: i64,
        payload: &[u8],
        emit: &mut impl FnMut(i32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let dest = route(hash, self.partitions);
        let Some(open) = usize::try_from(dest)
            .ok()
            .and_then(|d| self.open.get_mut(d))
        else {
            return Ok(());
        };
        let mut known = open.entities.iter().position(|e| **e == **entity);
        let added = if known.is_some() { 0 } else { 4 + entity.len() };
        let full = (open.entities.len() == usize::from(u16::MAX) && known.is_none())
            || open.count == u32::MAX;
        if open.count > 0
            && (full || open.bytes() + added + RECORD_HEAD + payload.len() > self.max_bytes)
        {
            open.seal(dest, emit)?;
            known = None;
        }
        let index = known.unwrap_or_else(|| {
            open.entities.push(entity.clone());
            open.entity_bytes += 4 + entity.len();
            open.entities.len() - 1
        });
        // Below u16::MAX: checked above.
        open.buf.extend_from_slice(&(index as u16).to_le_bytes());
        open.buf.extend_from_slice(&partition.to_le_bytes());
        open.buf.extend_from_slice(&offset.to_le_bytes());
        open.buf
            .extend_from_slice(&len32(payload.len()).to_le_bytes());
        open.buf.extend_from_slice(payload);
        open.count += 1;
        Ok(())
    }

    /// Hands every open frame to `emit`, by partition; the framer is empty afterwards.
    pub fn finish<E>(
        &mut self,
        emit: &mut impl FnMut(i32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for (dest, open) in self.open.iter_mut().enumerate() {
            if open.count > 0 {
                // Below `partitions`, the partition count of a Kafka topic (an i32).
                open.seal(dest as i32, emit)?;
            }
        }
        Ok(())
    }
}

/// Why a message is not a frame this build reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header names a version this build does not read.
    #[error("frame version `{0}` is not one this build reads (it reads `1`)")]
    Version(String),
    /// The body ends inside its entity list or a record.
    #[error("the frame ends inside {0}")]
    Truncated(&'static str),
    /// Bytes follow the last record, or the entity list, that the counts do not account for.
    #[error("{0} bytes of the frame are neither a record nor an entity")]
    Trailing(usize),
    /// An entity's text is not UTF-8.
    #[error("entity {0} of the frame is not UTF-8")]
    Entity(usize),
    /// A record names an entity the list does not hold.
    #[error("a record names entity {index} of a frame of {count}")]
    EntityIndex {
        /// The record's index.
        index: usize,
        /// The frame's entities.
        count: usize,
    },
}

/// Reads the frame `body` of header value `version`, giving each event, with what it was
/// forwarded for, to `each` in order. A frame that fails to read may have given some events
/// before the error; the caller drops them.
pub fn unpack<'a>(
    version: &[u8],
    body: &'a [u8],
    mut each: impl FnMut(Forwarded<'a>, &'a [u8]),
) -> Result<(), FrameError> {
    if version != FRAME_VERSION {
        return Err(FrameError::Version(
            String::from_utf8_lossy(version).into_owned(),
        ));
    }
    let Some(split) = body.len().checked_sub(FOOTER) else {
        return Err(FrameError::Truncated("its counts"));
    };
    let (lists, footer) = body.split_at(split);
    let mut f = Reader { rest: footer };
    let entities_at = u32::from_le_bytes(f.take("its counts")?) as usize;
    let count = usize::from(u16::from_le_bytes(f.take("its counts")?));
    let records = u32::from_le_bytes(f.take("its counts")?);
    if entities_at > lists.len() {
        return Err(FrameError::Truncated("the entity list"));
    }
    let (record_bytes, entity_bytes) = lists.split_at(entities_at);
    let mut r = Reader { rest: entity_bytes };
    let mut entities = Vec::with_capacity(count);
    for i in 0..count {
        let len = u32::from_le_bytes(r.take("the entity list")?) as usize;
        let text = r.bytes(len, "the entity list")?;
        entities.push(std::str::from_utf8(text).map_err(|_| FrameError::Entity(i))?);
    }
    if !r.rest.is_empty() {
        return Err(FrameError::Trailing(r.rest.len()));
    }
    let mut r = Reader { rest: record_bytes };
    for _ in 0..records {
        let index = usize::from(u16::from_le_bytes(r.take("a record")?));
        let partition = i32::from_le_bytes(r.take("a record")?);
        let offset = i64::from_le_bytes(r.take("a record")?);
        let len = u32::from_le_bytes(r.take("a record")?) as usize;
        let payload = r.bytes(len, "a record")?;
        let entity = entities
            .get(index)
            .copied()
            .ok_or(FrameError::EntityIndex { index, count })?;
        each(
            Forwarded {
                entity,
                partition,
                offset,
            },
            payload,
        );
    }
    if r.rest.is_empty() {
        Ok(())
    } else {
        Err(FrameError::Trailing(r.rest.len()))
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Truncated(what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let head = self.bytes(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(head);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    type Event = (String, i32, i64, Vec<u8>);

    /// The partition of the repartition topic (of `partitions`) that the events of entity
    /// value `value` go to.
    fn destination(value: &[u8], partitions: u32) -> i32 {
        route(value_hash(value), partitions)
    }

    fn read(frame: &[u8]) -> Result<Vec<Event>, FrameError> {
        let mut events = Vec::new();
        unpack(FRAME_VERSION, frame, |f, payload| {
            events.push((f.entity.to_owned(), f.partition, f.offset, payload.to_vec()));
        })?;
        Ok(events)
    }

    /// Frames as they are emitted, with their partitions.
    #[derive(Default)]
    struct Sent(Vec<(i32, Vec<u8>)>);

    impl Sent {
        fn emit(&mut self) -> impl FnMut(i32, &[u8]) -> Result<(), Infallible> + '_ {
            |dest, frame| {
                self.0.push((dest, frame.to_vec()));
                Ok(())
            }
        }
    }

    fn push(
        framer: &mut Framer,
        sent: &mut Sent,
        entity: &Arc<str>,
        value: &[u8],
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) {
        let Ok(()) = framer.push(
            entity,
            value_hash(value),
            partition,
            offset,
            payload,
            &mut sent.emit(),
        );
    }

    fn finish(framer: &mut Framer, sent: &mut Sent) {
        let Ok(()) = framer.finish(&mut sent.emit());
    }

    #[test]
    fn frames_carry_each_event_to_its_entity_values_partition_in_order() {
        let ranges: Arc<str> = "ip_prefix(ip, 24, 48)".into();
        let clients: Arc<str> = "client_fp".into();
        let mut framer = Framer::new(4, DEFAULT_MAX_FRAME_BYTES);
        let mut sent = Sent::default();
        let mut expected: Vec<Vec<Event>> = vec![Vec::new(); 4];
        for offset in 0..200i64 {
            let payload = format!("{{\"n\":{offset}}}").into_bytes();
            let range = format!("10.0.{}.0/24", offset % 7);
            let client = format!("fp-{}", offset % 3);
            for (entity, value) in [(&ranges, range), (&clients, client)] {
                push(
                    &mut framer,
                    &mut sent,
                    entity,
                    value.as_bytes(),
                    5,
                    offset,
                    &payload,
                );
                let dest = destination(value.as_bytes(), 4) as usize;
                expected[dest].push((entity.to_string(), 5, offset, payload.clone()));
            }
        }
        assert!(
            sent.0.is_empty(),
            "nothing sent before the batch ends or a frame fills"
        );
        finish(&mut framer, &mut sent);
        let mut got: Vec<Vec<Event>> = vec![Vec::new(); 4];
        for (dest, frame) in &sent.0 {
            got[*dest as usize].extend(read(frame).expect("a frame"));
        }
        assert_eq!(got, expected);
        // Seven ranges and three clients over four partitions: more than one is used.
        assert!(sent.0.len() > 1, "{}", sent.0.len());
        let before = sent.0.len();
        finish(&mut framer, &mut sent);
        assert_eq!(sent.0.len(), before, "finish empties the framer");
    }

    #[test]
    fn an_entity_values_partition_is_stable_and_values_spread_evenly() {
        // Pinned: replicas and versions must agree, or an entity's window splits in two.
        // (Python's `xxhash`, xxh3_64_intdigest with the same seed, gives the same.)
        assert_eq!(destination(b"198.18.7.0/24", 1), 0);
        let pinned: Vec<i32> = ["198.18.7.0/24", "fp-1", ""]
            .iter()
            .map(|v| destination(v.as_bytes(), 12))
            .collect();
        assert_eq!(pinned, [4, 1, 0]);
        let mut counts = [0u32; 8];
        for i in 0..80_000 {
            counts
                [destination(format!("10.{}.{}.0/24", i / 256, i % 256).as_bytes(), 8) as usize] +=
                1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn frames_are_cut_at_the_size_limit_and_a_larger_event_goes_alone() {
        let entity: Arc<str> = "template_fp".into();
        let mut framer = Framer::new(1, 1_000);
        let mut sent = Sent::default();
        let payload = [b'x'; 100];
        for offset in 0..30 {
            push(&mut framer, &mut sent, &entity, b"t", 0, offset, &payload);
        }
        assert!(!sent.0.is_empty(), "full frames go before the batch ends");
        push(&mut framer, &mut sent, &entity, b"t", 0, 30, &[b'y'; 5_000]);
        push(&mut framer, &mut sent, &entity, b"t", 0, 31, &payload);
        finish(&mut framer, &mut sent);
        let sizes: Vec<usize> = sent.0.iter().map(|(_, f)| f.len()).collect();
        assert_eq!(
            sizes.iter().filter(|&&s| s <= 1_000).count(),
            sizes.len() - 1,
            "every frame but the large event's within the limit: {sizes:?}"
        );
        // A frame is cut when the next event does not fit: the first three were full.
        let record = RECORD_HEAD + payload.len();
        assert!(sizes[..3].iter().all(|&s| s > 1_000 - record), "{sizes:?}");
        let offsets: Vec<i64> = sent
            .0
            .iter()
            .flat_map(|(_, f)| read(f).expect("a frame"))
            .map(|(_, _, offset, _)| offset)
            .collect();
        assert_eq!(offsets, (0..32).collect::<Vec<_>>());
    }

    #[test]
    fn a_frame_that_fails_to_send_stops_the_batch_with_its_error() {
        let entity: Arc<str> = "client_fp".into();
        let mut framer = Framer::new(1, 100);
        let mut refuse = |_: i32, _: &[u8]| Err("queue full");
        assert_eq!(
            framer.push(&entity, value_hash(b"c"), 0, 0, &[b'x'; 50], &mut refuse),
            Ok(())
        );
        assert_eq!(
            framer.push(&entity, value_hash(b"c"), 0, 1, &[b'x'; 50], &mut refuse),
            Err("queue full")
        );
        assert_eq!(
            framer.finish(&mut refuse),
            Ok(()),
            "the refused frame is not sent again"
        );
    }

    #[test]
    fn damaged_frames_and_unknown_versions_are_refused() {
        let entity: Arc<str> = "client_fp".into();
        let mut framer = Framer::new(1, DEFAULT_MAX_FRAME_BYTES);
        let mut sent = Sent::default();
        push(&mut framer, &mut sent, &entity, b"c", 1, 2, b"{}");
        push(&mut framer, &mut sent, &entity, b"c", 1, 3, b"{}");
        finish(&mut framer, &mut sent);
        let frame = sent.0.remove(0).1;
        assert_eq!(read(&frame).expect("whole").len(), 2);
        // Cut anywhere, or grown by a byte anywhere, a frame does not read.
        for cut in 0..frame.len() {
            assert!(read(&frame[..cut]).is_err(), "cut at {cut}");
            let mut longer = frame.clone();
            longer.insert(cut, 0);
            assert!(read(&longer).is_err(), "a byte inserted at {cut}");
        }
        let record = RECORD_HEAD + 2;
        let mut bad_index = frame.clone();
        bad_index[record] = 7;
        assert_eq!(
            read(&bad_index),
            Err(FrameError::EntityIndex { index: 7, count: 1 })
        );
        let mut bad_text = frame.clone();
        bad_text[2 * record + 4] = 0xff;
        assert_eq!(read(&bad_text), Err(FrameError::Entity(0)));
        assert_eq!(
            unpack(b"2", &frame, |_, _| {}),
            Err(FrameError::Version("2".into()))
        );
    }
}
