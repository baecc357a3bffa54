//! Checkpoints: one input partition's state and the offsets it reflects, on disk.
//!
//! A checkpoint holds, for one input partition: its watermark, every state table's keys, every
//! rule's alert-gate entries, the input offset after the last message they reflect, and the
//! alerts topic's end offsets when it was taken (where a restart starts reading back the alerts
//! written since), and the sketch seed its `distinct`, `top_share` and `entropy` states were
//! made with, which the partition keeps hashing with once restored. It is encoded by
//! [`crate::codec`] (format-version header, length, checksum).
//!
//! The state is stored with its [`Layout`]: each table's identity (entity expression, pane
//! length, pane count) with its slots' signatures, and each rule's meaning. So a checkpoint
//! taken under one rule set loads under another exactly as a rule reload would carry the state
//! ([`crate::remap`]): unchanged rules keep their windows and gates, new or changed rules start
//! fresh.
//!
//! [`CheckpointStore`] keeps them in `state.dir`, or in object storage that every replica
//! shares (`state.object_store_url`, through [`cordon_connectors::objects`]), so that a
//! partition's state moves with it to whichever replica the group gives it. It writes files
//! atomically (temp file, fsync, rename, fsync of the directory) and objects with one `PUT`,
//! and keeps the previous complete checkpoint beside the newest. Loading takes the
//! newest file that decodes; a torn, truncated or corrupt file is skipped with a warning in
//! favour of the one before. A file of an unknown format version stops the load with an error:
//! it was written by another Cordon version, and silently going back to older state would
//! replay and re-alert.
//!
//! [`CheckpointWriter`] writes them on a thread of its own, so that the engine's loop does not
//! stop for writing and syncing the file: on the Intel host's local disk that was 0.36 of 2.08 s
//! for 2.1M keys (252 MB), and on a network volume it is most of it. Nor does the loop stop for
//! a periodic checkpoint's encoding, which it does a slice at a time between batches
//! ([`crate::processor::Processor::begin_checkpoint`]).

use crate::codec::{self, CodecError};
use crate::gate::Gate;
use crate::keys::KeyTable;
use crate::remap::Layout;
use cordon_connectors::{ObjectError, ObjectStorage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Checkpoint files kept per partition: the newest and the previous complete one.
pub const KEEP: usize = 2;

/// What a checkpoint covers, besides the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Offset of the next input message the state does not reflect; `-1` when unknown (a
    /// checkpoint written on assignment, before any message: resume from the committed offset).
    pub next_offset: i64,
    /// The partition's watermark (`i64::MIN` before any event).
    pub watermark: i64,
    /// Alerts topic.
    pub alerts_topic: String,
    /// End offset of each alerts-topic partition when the checkpoint was taken (a lower bound:
    /// every alert written after the checkpoint is at or after it).
    pub alerts_end: BTreeMap<i32, i64>,
    /// Wall clock when written, epoch ms.
    pub written_at_ms: i64,
}

/// A checkpoint to write: borrows the live state.
#[derive(Debug, Serialize)]
pub struct CheckpointRef<'a> {
    /// Offsets and times.
    pub meta: CheckpointMeta,
    /// The seed hashed into the values of the partition's sketches (see [`Checkpoint`]).
    pub sketch_seed: u64,
    /// What the partition has counted of the events forwarded to it (see [`Checkpoint`]).
    pub forwarded: Vec<(String, i32, i64)>,
    /// The plan the state belongs to: its tables' identities and its rules' meanings.
    pub layout: Layout,
    /// Keys per table, in `layout` order.
    pub tables: Vec<&'a KeyTable>,
    /// Gate per rule, in `layout` order.
    pub gates: Vec<&'a Gate>,
}

/// A checkpoint read back (same encoding as [`CheckpointRef`]).
#[derive(Debug, Deserialize)]
pub struct Checkpoint {
    /// Offsets and times.
    pub meta: CheckpointMeta,
    /// The seed mixed into the hashes of the values that the partition's `distinct`,
    /// `top_share` and `entropy` states hold ([`crate::processor::CoreConfig::sketch_seed`]).
    /// The restored partition keeps hashing with it whatever seed the engine now has for new
    /// partitions: its sketches would otherwise count a value seen before and after the
    /// restart as two. 0 (the unseeded hash) in a version-3 checkpoint, written before seeds.
    pub sketch_seed: u64,
    /// For a partition of the repartition topic: per entity and input partition, the highest
    /// input offset of the events forwarded to it that its state counts. The first stage
    /// forwards again what it replays after a restart; the second drops those
    /// ([`crate::processor::Stage::Repartitioned`]). Empty elsewhere, and in checkpoints of
    /// versions 3 and 4, written before the stage.
    pub forwarded: Vec<(String, i32, i64)>,
    /// The plan the state belongs to.
    pub layout: Layout,
    /// Keys per table, in `layout` order.
    pub tables: Vec<KeyTable>,
    /// Gate per rule, in `layout` order.
    pub gates: Vec<Gate>,
}

/// Tables of at least this many keys are encoded on threads of their own
/// ([`CheckpointRef::encode_parts`]); smaller ones are not worth a thread.
pub const PARALLEL_MIN_KEYS: usize = 50_000;

/// A checkpoint of format version 4, which had no forwarding state: [`Checkpoint`] without it.
#[derive(Debug, Deserialize)]
struct CheckpointV4 {
    meta: CheckpointMeta,
    sketch_seed: u64,
    layout: Layout,
    tables: Vec<KeyTable>,
    gates: Vec<Gate>,
}

/// A checkpoint of format version 3, which had no sketch seed: [`Checkpoint`] without it.
#[derive(Debug, Deserialize)]
struct CheckpointV3 {
    meta: CheckpointMeta,
    layout: Layout,
    tables: Vec<KeyTable>,
    gates: Vec<Gate>,
}

/// The first part of a checkpoint's body ([`CheckpointRef::encode_parts`]): the metadata, the
/// sketch seed, the forwarding state, the layout and the number of tables that follow.
pub fn encode_head(
    meta: &CheckpointMeta,
    sketch_seed: u64,
    forwarded: &[(String, i32, i64)],
    layout: &Layout,
    tables: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut head = Vec::new();
    codec::encode_into(meta, &mut head)?;
    codec::encode_into(&sketch_seed, &mut head)?;
    codec::encode_into(forwarded, &mut head)?;
    codec::encode_into(layout, &mut head)?;
    codec::encode_into(&tables, &mut head)?;
    Ok(head)
}

impl CheckpointRef<'_> {
    /// Encodes it with the codec's header.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode_state(self)
    }

    /// Encodes it as the parts of the body that [`CheckpointRef::encode`] gives, without the
    /// header ([`codec::header`] of the parts is that header): the metadata, the sketch seed,
    /// the layout and the tables' count; each table; the gates. Tables of
    /// [`PARALLEL_MIN_KEYS`] or more are encoded at once on threads of their own when the
    /// process may use more than one CPU
    /// (`std::thread::available_parallelism`, which follows a container's CPU limit), the
    /// largest on the calling thread. For the checkpoints the engine's loop waits for (a
    /// revoked partition, one taken over without a checkpoint, shutdown; periodic ones are
    /// encoded in slices, [`crate::processor::Processor::begin_checkpoint`]) this shortens the
    /// stop when another core is free: for the throughput harness's 2.1M keys, 0.56-0.60 s
    /// against 0.85-1.15 s encoded on one thread (four alternating runs each, unpinned, the
    /// 2-core Intel host, 2026-11-28).
    pub fn encode_parts(&self) -> Result<Vec<Vec<u8>>, CodecError> {
        let head = encode_head(
            &self.meta,
            self.sketch_seed,
            &self.forwarded,
            &self.layout,
            self.tables.len(),
        )?;
        let encode = |t: &KeyTable| -> Result<Vec<u8>, CodecError> {
            let mut out = Vec::new();
            codec::encode_into(t, &mut out)?;
            Ok(out)
        };
        // The tables that get threads of their own: the large ones but the largest, which
        // this thread encodes along with the small ones.
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut big: Vec<usize> = (0..self.tables.len())
            .filter(|&i| self.tables[i].len() >= PARALLEL_MIN_KEYS)
            .collect();
        big.sort_by_key(|&i| std::cmp::Reverse(self.tables[i].len()));
        let threaded = if cpus > 1 {
            big.get(1..).unwrap_or_default()
        } else {
            &[]
        };
        let tables: Vec<Result<Vec<u8>, CodecError>> = std::thread::scope(|scope| {
            let spawned: Vec<_> = (0..self.tables.len())
                .map(|i| {
                    let t = self.tables[i];
                    threaded
                        .contains(&i)
                        .then(|| scope.spawn(move || encode(t)))
                })
                .collect();
            // This thread's tables first, then the threads' in their places.
            let mut done: Vec<Option<Result<Vec<u8>, CodecError>>> = self
                .tables
                .iter()
                .zip(&spawned)
                .map(|(t, h)| h.is_none().then(|| encode(t)))
                .collect();
            for (d, h) in done.iter_mut().zip(spawned) {
                if let Some(h) = h {
                    *d = Some(h.join().unwrap_or_else(|_| {
                        Err(CodecError::Corrupt(
                            "a checkpoint encoding thread panicked".into(),
                        ))
                    }));
                }
            }
            done.into_iter().flatten().collect()
        });
        let mut parts = Vec::with_capacity(self.tables.len() + 2);
        parts.push(head);
        for t in tables {
            parts.push(t?);
        }
        let mut gates = Vec::new();
        codec::encode_into(&self.gates, &mut gates)?;
        parts.push(gates);
        Ok(parts)
    }
}

impl Checkpoint {
    /// Decodes a checkpoint file's bytes, of this build's format version, of version 4 (read
    /// without forwarding state) or of version 3 (read with the unseeded hash too, which it
    /// was made with).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        match codec::open(bytes)? {
            (3, body) => {
                let old: CheckpointV3 = codec::decode_body(body)?;
                Ok(Self {
                    meta: old.meta,
                    sketch_seed: 0,
                    forwarded: Vec::new(),
                    layout: old.layout,
                    tables: old.tables,
                    gates: old.gates,
                })
            }
            (4, body) => {
                let old: CheckpointV4 = codec::decode_body(body)?;
                Ok(Self {
                    meta: old.meta,
                    sketch_seed: old.sketch_seed,
                    forwarded: Vec::new(),
                    layout: old.layout,
                    tables: old.tables,
                    gates: old.gates,
                })
            }
            (codec::FORMAT_VERSION, body) => codec::decode_body(body),
            (found, _) => Err(CodecError::UnknownVersion { found }),
        }
    }
}

/// A checkpoint that cannot be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file system operation failed.
    #[error("checkpoint {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Object storage failed, or its URL or options are wrong.
    #[error("checkpoint storage: {0}")]
    Objects(#[from] ObjectError),
    /// Written by a Cordon version with another state format.
    #[error(
        "checkpoint {location}: {source}; it was written by another Cordon version: run that version, or move the checkpoints aside (the state directory, or the object store's prefix) to start with empty state (offsets then resume from the consumer group's commits)"
    )]
    Version {
        /// The file or object.
        location: Location,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// The sketch seed file does not hold a seed.
    #[error(
        "sketch seed {path}: {detail}; it must hold the 16 hex digits Cordon wrote there: restore it, or delete it to draw a new seed for partitions without a checkpoint (each checkpoint keeps the seed its state was made with)"
    )]
    Seed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// State could not be encoded.
    #[error("encoding a checkpoint: {0}")]
    Encode(#[source] CodecError),
    /// The thread that writes checkpoint files could not start, or stopped (a bug: it only
    /// ends when its [`CheckpointWriter`] is dropped).
    #[error("checkpoint writer thread: {0}")]
    Writer(String),
}

/// The file under `<state.dir>/<topic>/` that holds the sketch seed
/// ([`CheckpointStore::sketch_seed`]).
pub const SKETCH_SEED_FILE: &str = "sketch-seed";

/// Where a checkpoint is: a file under `state.dir`, or an object in object storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file.
    File(PathBuf),
    /// An object, by URL.
    Object(String),
}

impl Location {
    /// The file, when it is one.
    pub fn as_file(&self) -> Option<&Path> {
        match self {
            Location::File(p) => Some(p),
            Location::Object(_) => None,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Object(url) => f.write_str(url),
        }
    }
}

/// Checkpoints of one input topic: `<state.dir>/<topic>/p<N>/ckpt-<SEQ>.bin`, or the same
/// names under a prefix of object storage (`state.object_store_url`), where every replica finds
/// the checkpoints of the partitions it is given.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    /// `<state.dir>/<topic>`.
    Dir(PathBuf),
    /// `<prefix>/<topic>`.
    Objects(ObjectStorage),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_owned();
    move |source| CheckpointError::Io { what, path, source }
}

/// Writes `chunks`, one after another, to a new file `tmp` and syncs it: the first half of an
/// atomic write, before the file gets its name.
fn write_synced(tmp: &Path, chunks: &[&[u8]]) -> Result<(), CheckpointError> {
    let mut f = fs::File::create(tmp).map_err(io("creating", tmp))?;
    for c in chunks {
        f.write_all(c).map_err(io("writing", tmp))?;
    }
    f.sync_all().map_err(io("syncing", tmp))
}

/// Syncs directory `dir`, so that a name given to a file in it lasts: the second half.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

/// The seed in `path` ([`CheckpointStore::sketch_seed`]), or `None` when there is no such file.
fn read_seed(path: &Path) -> Result<Option<u64>, CheckpointError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", path)(e)),
    };
    let digits = text.trim();
    if digits.len() != 16 {
        return Err(CheckpointError::Seed {
            path: path.to_owned(),
            detail: format!("{} characters, not 16 hex digits", digits.len()),
        });
    }
    u64::from_str_radix(digits, 16)
        .map(Some)
        .map_err(|e| CheckpointError::Seed {
            path: path.to_owned(),
            detail: e.to_string(),
        })
}

/// The sequence number in a checkpoint file's name (`ckpt-<SEQ>.bin`).
fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?
        .strip_suffix(".bin")?
        .parse()
        .ok()
}

impl CheckpointStore {
    /// The store for `topic`'s partitions under `state_dir`.
    pub fn new(state_dir: &Path, topic: &str) -> Self {
        Self {
            backend: Backend::Dir(state_dir.join(topic)),
        }
    }

    /// The store for `topic`'s partitions under the prefix of `objects`.
    pub fn objects(objects: &ObjectStorage, topic: &str) -> Self {
        Self {
            backend: Backend::Objects(objects.child(topic)),
        }
    }

    /// Where the checkpoints are, for messages.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Dir(dir) => dir.display().to_string(),
            Backend::Objects(o) => o.url(""),
        }
    }

    /// The directory of one partition's checkpoints, when they are files.
    pub fn partition_dir(&self, partition: i32) -> Option<PathBuf> {
        match &self.backend {
            Backend::Dir(dir) => Some(dir.join(format!("p{partition}"))),
            Backend::Objects(_) => None,
        }
    }

    /// The names of a partition's complete checkpoints, newest first, with their sequence
    /// numbers.
    fn files(&self, partition: i32) -> Result<Vec<(u64, String)>, CheckpointError> {
        let names: Vec<String> = match &self.backend {
            Backend::Dir(dir) => {
                let dir = dir.join(format!("p{partition}"));
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io("listing", &dir)(e)),
                };
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            }
            Backend::Objects(o) => o.child(&format!("p{partition}")).list()?,
        };
        let mut files: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|n| Some((seq_of(&n)?, n)))
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        Ok(files)
    }

    /// Where partition `partition`'s checkpoint `name` is.
    fn location_of(&self, partition: i32, name: &str) -> Location {
        let part = format!("p{partition}");
        match &self.backend {
            Backend::Dir(dir) => Location::File(dir.join(part).join(name)),
            Backend::Objects(o) => Location::Object(o.child(&part).url(name)),
        }
    }

    /// Writes one partition's checkpoint (encoded with its header) atomically and removes all
    /// but the [`KEEP`] newest. Returns where it was written.
    pub fn write(&self, partition: i32, bytes: &[u8]) -> Result<Location, CheckpointError> {
        self.write_file(partition, vec![bytes.to_vec()])
    }

    /// [`write`](Self::write) of a checkpoint's body given in parts
    /// ([`CheckpointRef::encode_parts`]): the file is their [`codec::header`] followed by
    /// the parts, one after another. The parts go to object storage as they are, uncopied.
    pub fn write_parts(
        &self,
        partition: i32,
        parts: Vec<Vec<u8>>,
    ) -> Result<Location, CheckpointError> {
        let mut chunks = Vec::with_capacity(parts.len() + 1);
        chunks.push(codec::header(&parts).to_vec());
        chunks.extend(parts);
        self.write_file(partition, chunks)
    }

    /// Writes `chunks`, one after another, as the partition's next checkpoint: a file by temp
    /// file, fsync, rename and a sync of the directory; an object by one `PUT`, which replaces
    /// an object whole or not at all.
    fn write_file(
        &self,
        partition: i32,
        chunks: Vec<Vec<u8>>,
    ) -> Result<Location, CheckpointError> {
        let files = self.files(partition)?;
        let seq = files.first().map_or(1, |f| f.0 + 1);
        let name = format!("ckpt-{seq:020}.bin");
        match &self.backend {
            Backend::Dir(dir) => {
                let dir = dir.join(format!("p{partition}"));
                fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
                let tmp = dir.join(format!("ckpt-{seq:020}.tmp"));
                let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                write_synced(&tmp, &slices)?;
                fs::rename(&tmp, dir.join(&name)).map_err(io("renaming", &tmp))?;
                sync_dir(&dir)?;
            }
            Backend::Objects(o) => o.child(&format!("p{partition}")).put(&name, chunks)?,
        }
        for (_, old) in files.iter().skip(KEEP - 1) {
            let removed = match &self.backend {
                Backend::Dir(dir) => fs::remove_file(dir.join(format!("p{partition}")).join(old))
                    .map_err(|e| e.to_string()),
                Backend::Objects(o) => o
                    .child(&format!("p{partition}"))
                    .delete(old)
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = removed {
                tracing::warn!(location = %self.location_of(partition, old), error = %e, "cannot remove an old checkpoint");
            }
        }
        Ok(self.location_of(partition, &name))
    }

    /// The seed mixed into the hashes of `distinct`, `top_share` and `entropy` values
    /// ([`crate::processor::CoreConfig::sketch_seed`]) of partitions that start without a
    /// checkpoint. (A restored partition keeps the seed its checkpoint records,
    /// [`Checkpoint::sketch_seed`].) In a directory it is kept in [`SKETCH_SEED_FILE`] beside
    /// the partitions' directories: read from the file when it exists; otherwise a new random
    /// seed, written to the file without replacing one that another replica sharing the
    /// directory wrote first. In object storage each process draws its own, since every
    /// partition that starts empty has its first checkpoint, with the seed, written before it
    /// takes any event.
    pub fn sketch_seed(&self) -> Result<u64, CheckpointError> {
        // Never 0, which stands for the unseeded hash.
        let drawn = rand::random::<u64>().max(1);
        let dir = match &self.backend {
            Backend::Dir(dir) => dir,
            Backend::Objects(_) => return Ok(drawn),
        };
        let path = dir.join(SKETCH_SEED_FILE);
        if let Some(seed) = read_seed(&path)? {
            return Ok(seed);
        }
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        // A name of its own: replicas sharing the directory may well have the same process id
        // (1, in containers), and must not write into each other's temp file.
        let tmp = dir.join(format!(
            "{SKETCH_SEED_FILE}.{:016x}.tmp",
            rand::random::<u64>()
        ));
        write_synced(&tmp, &[format!("{drawn:016x}\n").as_bytes()])?;
        // A hard link, unlike a rename, fails when the name is taken.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(dir).map(|()| drawn),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                read_seed(&path)?.ok_or_else(|| io("reading", &path)(e))
            }
            Err(e) => Err(io("writing", &path)(e)),
        }
    }

    /// Checks that the store answers: lists the topic's prefix in object storage (a wrong
    /// bucket, endpoint or credential fails here, at start-up); nothing for a directory.
    pub fn check(&self) -> Result<(), CheckpointError> {
        match &self.backend {
            Backend::Dir(_) => Ok(()),
            Backend::Objects(o) => o.list_dirs().map(|_| ()).map_err(CheckpointError::from),
        }
    }

    /// Reads partition `partition`'s checkpoint `name`: `Ok(Err(why))` when the file cannot be
    /// read or the object is gone (the caller tries the previous one), `Err` when object
    /// storage fails, which stops the load: falling back to an older checkpoint, or to none,
    /// because of a network error would throw away state that is still there.
    fn read(&self, partition: i32, name: &str) -> Result<Result<Vec<u8>, String>, CheckpointError> {
        Ok(match &self.backend {
            Backend::Dir(dir) => {
                fs::read(dir.join(format!("p{partition}")).join(name)).map_err(|e| e.to_string())
            }
            Backend::Objects(o) => o
                .child(&format!("p{partition}"))
                .get(name)?
                .ok_or_else(|| "it is gone".to_owned()),
        })
    }

    /// The newest checkpoint of `partition` that decodes, or `None` if there is none. Torn or
    /// corrupt files are skipped with a warning; an unknown format version is an error, and so
    /// is a failure of object storage.
    pub fn load(&self, partition: i32) -> Result<Option<(Checkpoint, usize)>, CheckpointError> {
        for (_, name) in self.files(partition)? {
            let location = self.location_of(partition, &name);
            let bytes = match self.read(partition, &name)? {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(location = %location, error = %e, "cannot read checkpoint; trying the previous one");
                    continue;
                }
            };
            match Checkpoint::decode(&bytes) {
                Ok(c) => return Ok(Some((c, bytes.len()))),
                Err(source @ CodecError::UnknownVersion { .. }) => {
                    return Err(CheckpointError::Version { location, source });
                }
                Err(e) => {
                    tracing::warn!(location = %location, error = %e, "checkpoint is torn or corrupt; ignoring it in favour of the previous complete one");
                }
            }
        }
        Ok(None)
    }
}

/// A partition's checkpoint handed to a [`CheckpointWriter`].
#[derive(Debug)]
pub struct WriteJob {
    /// The input partition.
    pub partition: i32,
    /// The input offset the checkpoint resumes from (`-1`: unknown), committed once it is written.
    pub next_offset: i64,
    /// When the state was taken (just before encoding).
    pub taken: Instant,
    /// How long encoding took.
    pub encode: Duration,
    /// The encoded body, in parts ([`CheckpointRef::encode_parts`]); the writer adds the header.
    pub parts: Vec<Vec<u8>>,
}

/// A write a [`CheckpointWriter`] finished, successfully or not.
#[derive(Debug)]
pub struct Written {
    /// The input partition.
    pub partition: i32,
    /// As handed over in [`WriteJob::next_offset`].
    pub next_offset: i64,
    /// As handed over in [`WriteJob::taken`].
    pub taken: Instant,
    /// Encoding and writing, together.
    pub duration: Duration,
    /// Where it was written, or why not.
    pub result: Result<Location, CheckpointError>,
}

/// Writes checkpoint files with a [`CheckpointStore`] on a thread of its own, one at a time, in
/// the order they are handed over. One job waits while another is written; a further
/// [`submit`](Self::submit) blocks until the thread takes the waiting one, so at most three
/// encoded checkpoints are held at once (the one being written, the one waiting, the caller's).
#[derive(Debug)]
pub struct CheckpointWriter {
    jobs: Option<SyncSender<WriteJob>>,
    done: Receiver<Written>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
}

impl CheckpointWriter {
    /// Starts the writing thread.
    pub fn new(store: CheckpointStore) -> Result<Self, CheckpointError> {
        let (jobs, queue) = sync_channel::<WriteJob>(1);
        let (report, done) = channel::<Written>();
        let thread = std::thread::Builder::new()
            .name("cordon-checkpoint".into())
            .spawn(move || {
                for job in queue {
                    let started = Instant::now();
                    let result = store.write_parts(job.partition, job.parts);
                    let written = Written {
                        partition: job.partition,
                        next_offset: job.next_offset,
                        taken: job.taken,
                        duration: job.encode + started.elapsed(),
                        result,
                    };
                    if report.send(written).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| CheckpointError::Writer(format!("cannot start: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            in_flight: 0,
        })
    }

    /// Hands a checkpoint to the thread; blocks while another one already waits.
    pub fn submit(&mut self, job: WriteJob) -> Result<(), CheckpointError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(Self::stopped)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Writes handed over and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The writes finished since the last call, without waiting.
    pub fn finished(&mut self) -> Result<Vec<Written>, CheckpointError> {
        let mut out = Vec::new();
        while self.in_flight > 0 {
            match self.done.try_recv() {
                Ok(w) => {
                    self.in_flight -= 1;
                    out.push(w);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(Self::stopped()),
            }
        }
        Ok(out)
    }

    /// Every write handed over, once all are finished.
    pub fn wait_all(&mut self) -> Result<Vec<Written>, CheckpointError> {
        let mut out = Vec::with_capacity(self.in_flight);
        while self.in_flight > 0 {
            let w = self.done.recv().map_err(|_| Self::stopped())?;
            self.in_flight -= 1;
            out.push(w);
        }
        Ok(out)
    }

    /// The thread is gone: it panicked (a bug), since it only ends when the writer is dropped.
    fn stopped() -> CheckpointError {
        CheckpointError::Writer("stopped before writing every checkpoint handed to it".into())
    }
}

impl Drop for CheckpointWriter {
    /// Lets the thread finish what it was given, then joins it.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(next_offset: i64) -> CheckpointMeta {
        CheckpointMeta {
            topic: "requests".into(),
            partition: 3,
            next_offset,
            watermark: 1_772_359_200_000,
            alerts_topic: "alerts".into(),
            alerts_end: BTreeMap::from([(0, 17)]),
            written_at_ms: 1,
        }
    }

    const SEED: u64 = 0x5eed_0000_0000_0001;

    fn layout() -> Layout {
        Layout {
            tables: vec![crate::remap::TableId {
                entity: "account_id".into(),
                pane_ms: 300_000,
                panes: 12,
                slots: vec!["Count() where []".into()],
            }],
            rules: vec!["r".into()],
        }
    }

    fn bytes(next_offset: i64) -> Vec<u8> {
        let keys = KeyTable::default();
        let gate = Gate::default();
        CheckpointRef {
            meta: meta(next_offset),
            sketch_seed: SEED,
            forwarded: vec![("ip_prefix(ip, 24, 48)".into(), 3, next_offset)],
            layout: layout(),
            tables: vec![&keys],
            gates: vec![&gate],
        }
        .encode()
        .expect("encode")
    }

    #[test]
    fn checkpoint_round_trips() {
        let c = Checkpoint::decode(&bytes(42)).expect("decode");
        assert_eq!(c.meta, meta(42));
        assert_eq!(c.sketch_seed, SEED);
        assert_eq!(c.forwarded, [("ip_prefix(ip, 24, 48)".to_owned(), 3, 42)]);
        assert_eq!(c.tables.len(), 1);
        assert_eq!(c.layout.rules, ["r"]);
        assert_eq!(c.layout.tables[0].slots, ["Count() where []"]);
    }

    #[test]
    fn a_version_4_checkpoint_loads_without_forwarding_state() {
        // Version 4 was this checkpoint without the forwarding state, under a version-4 header.
        let (keys, gate) = (KeyTable::default(), Gate::default());
        let mut v4 = codec::encode_state(&(meta(42), SEED, layout(), vec![&keys], vec![&gate]))
            .expect("encode");
        v4[4..6].copy_from_slice(&4u16.to_le_bytes());
        let c = Checkpoint::decode(&v4).expect("decode");
        assert_eq!(c.meta, meta(42));
        assert_eq!(c.sketch_seed, SEED);
        assert!(c.forwarded.is_empty());
        assert_eq!(c.layout.rules, ["r"]);
    }

    #[test]
    fn a_version_3_checkpoint_loads_with_the_unseeded_hash() {
        // Version 3 was this checkpoint without the seed, under a version-3 header.
        let (keys, gate) = (KeyTable::default(), Gate::default());
        let mut v3 =
            codec::encode_state(&(meta(42), layout(), vec![&keys], vec![&gate])).expect("encode");
        v3[4..6].copy_from_slice(&3u16.to_le_bytes());
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        store.write(3, &v3).expect("write");
        let (c, _) = store.load(3).expect("load").expect("a checkpoint");
        assert_eq!(c.meta, meta(42));
        assert_eq!(c.sketch_seed, 0);
        assert_eq!(c.layout.rules, ["r"]);
        // The same body under this version's header is not misread as a seed.
        v3[4..6].copy_from_slice(&codec::FORMAT_VERSION.to_le_bytes());
        assert!(matches!(
            Checkpoint::decode(&v3),
            Err(CodecError::Corrupt(_))
        ));
    }

    /// The input offset of the checkpoint `store` loads for partition 3.
    fn loaded_offset(store: &CheckpointStore) -> i64 {
        store
            .load(3)
            .expect("load")
            .expect("a complete checkpoint")
            .0
            .meta
            .next_offset
    }

    #[test]
    fn newest_complete_checkpoint_wins_and_torn_ones_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        assert!(store.load(3).expect("load").is_none());
        store.write(3, &bytes(10)).expect("write");
        store.write(3, &bytes(20)).expect("write");
        assert_eq!(loaded_offset(&store), 20);
        // A third write keeps two files.
        let written = store.write(3, &bytes(30)).expect("write");
        let newest = written.as_file().expect("a file");
        assert_eq!(store.files(3).expect("files").len(), KEEP);
        // Tear the newest: the previous complete one is loaded.
        let full = fs::read(newest).expect("read");
        fs::write(newest, &full[..full.len() / 2]).expect("tear");
        assert_eq!(loaded_offset(&store), 20);
        // A flipped byte is caught by the checksum.
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        fs::write(newest, &flipped).expect("flip");
        assert_eq!(loaded_offset(&store), 20);
        // An empty (zero-length) newest file too.
        fs::write(newest, b"").expect("truncate");
        assert_eq!(loaded_offset(&store), 20);
        // A leftover temp file is not a checkpoint.
        fs::write(
            store
                .partition_dir(3)
                .expect("a directory")
                .join("ckpt-00000000000000000099.tmp"),
            b"x",
        )
        .expect("tmp");
        assert_eq!(loaded_offset(&store), 20);
    }

    #[test]
    fn checkpoints_in_object_storage_are_kept_and_loaded_as_files_are() {
        let objects = ObjectStorage::open("memory://", &BTreeMap::new()).expect("open");
        let store = CheckpointStore::objects(&objects.child("cordon"), "requests");
        store.check().expect("lists");
        assert!(store.load(3).expect("load").is_none());
        assert_eq!(store.partition_dir(3), None);
        for offset in [10, 20, 30] {
            let at = store.write(3, &bytes(offset)).expect("write");
            assert_eq!(
                at,
                Location::Object(format!(
                    "memory:///cordon/requests/p3/ckpt-{:020}.bin",
                    offset / 10
                ))
            );
        }
        assert_eq!(loaded_offset(&store), 30);
        let p3 = objects.child("cordon").child("requests").child("p3");
        let mut names = p3.list().expect("list");
        names.sort();
        assert_eq!(
            names,
            [
                "ckpt-00000000000000000002.bin",
                "ckpt-00000000000000000003.bin"
            ],
            "the newest two are kept"
        );
        // A torn newest object: the previous complete one is loaded.
        let full = p3.get(&names[1]).expect("get").expect("there");
        p3.put(&names[1], [full[..full.len() / 2].to_vec()])
            .expect("tear");
        assert_eq!(loaded_offset(&store), 20);
        // Another replica opening the same store finds them (here: the same client).
        let other = CheckpointStore::objects(&objects.child("cordon"), "requests");
        assert_eq!(loaded_offset(&other), 20);
        // An unknown version stops the load, naming the object.
        let mut b = bytes(40);
        b[4..6].copy_from_slice(&99u16.to_le_bytes());
        store.write(3, &b).expect("write");
        let msg = store.load(3).expect_err("version").to_string();
        assert!(
            msg.contains("memory:///cordon/requests/p3/ckpt-00000000000000000004.bin")
                && msg.contains("state format version 99"),
            "{msg}"
        );
        // No seed file: each process draws its own, and never 0.
        assert_ne!(store.sketch_seed().expect("seed"), 0);
        assert!(
            p3.list()
                .expect("list")
                .iter()
                .all(|n| n.starts_with("ckpt-"))
        );
    }

    #[test]
    fn unknown_format_version_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        let mut b = bytes(10);
        b[4..6].copy_from_slice(&99u16.to_le_bytes());
        store.write(3, &b).expect("write");
        let msg = store.load(3).expect_err("version").to_string();
        assert!(
            msg.contains("state format version 99 is not supported")
                && msg.contains("another Cordon version"),
            "{msg}"
        );
    }

    #[test]
    fn the_sketch_seed_is_made_once_and_kept_beside_the_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        let seed = store.sketch_seed().expect("made");
        assert_ne!(seed, 0, "a new state directory is seeded");
        let path = dir.path().join("requests").join(SKETCH_SEED_FILE);
        assert_eq!(
            fs::read_to_string(&path).expect("written"),
            format!("{seed:016x}\n")
        );
        let again = CheckpointStore::new(dir.path(), "requests");
        assert_eq!(again.sketch_seed().expect("read"), seed, "kept");
        // Checkpoints already here (they keep their own seeds) do not stop a new file.
        let old = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(old.path(), "requests");
        store.write(0, &bytes(5)).expect("write");
        let seed = store.sketch_seed().expect("made");
        assert_ne!(seed, 0);
        assert_eq!(store.sketch_seed().expect("read"), seed);
        // A damaged file stops start-up, naming it.
        fs::write(&path, "not a seed").expect("damage");
        let err = CheckpointStore::new(dir.path(), "requests")
            .sketch_seed()
            .expect_err("damaged")
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("delete it"),
            "{err}"
        );
    }

    #[test]
    fn replicas_making_the_sketch_seed_at_once_agree_on_one() {
        // Replicas sharing a state directory may start together, with the same process id.
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let seeds: Vec<u64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| CheckpointStore::new(dir.path(), "requests").sketch_seed()))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread").expect("seed"))
                    .collect()
            });
            let kept = CheckpointStore::new(dir.path(), "requests")
                .sketch_seed()
                .expect("read");
            assert!(
                seeds.iter().all(|s| *s == kept),
                "{seeds:x?} against {kept:x}"
            );
            let left: Vec<_> = fs::read_dir(dir.path().join("requests"))
                .expect("list")
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(left, [SKETCH_SEED_FILE], "no temp file left");
        }
    }

    #[test]
    fn parts_encoded_in_parallel_make_the_whole_encoding() {
        // Two tables large enough for threads of their own, one small one, distinct states.
        let table = |n: u64, mul: u64| {
            let mut t = KeyTable::default();
            for k in 0..n {
                let (slot, _) = t.slot_or_insert(k.wrapping_mul(mul));
                t.state_mut(slot).expect("slot").touch = k as u32;
            }
            t
        };
        let big = PARALLEL_MIN_KEYS as u64;
        let (a, b, small) = (table(big + 17, 7919), table(big + 3, 104_729), table(40, 3));
        let gate = Gate::default();
        let layout = |n: usize| Layout {
            tables: (0..n)
                .map(|i| crate::remap::TableId {
                    entity: format!("e{i}"),
                    pane_ms: 300_000,
                    panes: 12,
                    slots: vec!["Count() where []".into()],
                })
                .collect(),
            rules: vec!["r".into()],
        };
        let c = CheckpointRef {
            meta: meta(99),
            sketch_seed: SEED,
            forwarded: Vec::new(),
            layout: layout(3),
            tables: vec![&small, &a, &b],
            gates: vec![&gate],
        };
        let whole = c.encode().expect("encode");
        let parts = c.encode_parts().expect("encode in parts");
        assert_eq!(parts.len(), 3 + 2, "head, one per table, gates");
        let mut joined = codec::header(&parts).to_vec();
        for p in &parts {
            joined.extend_from_slice(p);
        }
        assert!(joined == whole, "the parts differ from the whole encoding");
        // Written as parts by the store, the file is the whole encoding and loads back.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        let path = store.write_parts(3, parts).expect("write");
        assert!(fs::read(path.as_file().expect("a file")).expect("read") == whole);
        let back = store.load(3).expect("load").expect("a checkpoint").0;
        let lens: Vec<usize> = back.tables.iter().map(KeyTable::len).collect();
        assert_eq!(lens, [40, big as usize + 17, big as usize + 3]);
    }

    fn job(partition: i32, next_offset: i64) -> WriteJob {
        WriteJob {
            partition,
            next_offset,
            taken: Instant::now(),
            encode: Duration::ZERO,
            parts: vec![bytes(next_offset)[codec::HEADER_LEN..].to_vec()],
        }
    }

    #[test]
    fn the_writer_thread_writes_in_order_and_reports_each_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        let mut w = CheckpointWriter::new(store.clone()).expect("writer");
        for offset in [10, 20, 30] {
            w.submit(job(3, offset)).expect("submit");
        }
        let done = w.wait_all().expect("written");
        assert_eq!(w.in_flight(), 0);
        let offsets: Vec<i64> = done.iter().map(|d| d.next_offset).collect();
        assert_eq!(offsets, [10, 20, 30]);
        for d in &done {
            let path = d.result.as_ref().expect("each write succeeds");
            assert_eq!(d.partition, 3);
            let dir = store.partition_dir(3).expect("a directory");
            assert!(
                path.as_file()
                    .is_some_and(|f| f.parent() == Some(dir.as_path())),
                "{path}"
            );
        }
        // Written in the order handed over: the newest file holds the last.
        assert_eq!(loaded_offset(&store), 30);
        assert!(w.finished().expect("nothing pending").is_empty());
    }

    #[test]
    fn a_failed_write_is_reported_with_the_path_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        // Partition 4's directory cannot be created: a file stands in its place.
        fs::create_dir_all(dir.path().join("requests")).expect("topic dir");
        fs::write(
            store.partition_dir(4).expect("a directory"),
            b"not a directory",
        )
        .expect("blocker");
        let mut w = CheckpointWriter::new(store.clone()).expect("writer");
        w.submit(job(4, 10)).expect("submit");
        w.submit(job(3, 11)).expect("submit");
        let done = w.wait_all().expect("reported");
        let err = done[0].result.as_ref().expect_err("partition 4 fails");
        assert!(err.to_string().contains("/requests/p4"), "{err}");
        assert!(done[1].result.is_ok(), "{:?}", done[1].result);
        assert_eq!(loaded_offset(&store), 11);
    }

    #[test]
    fn dropping_the_writer_finishes_what_it_was_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(dir.path(), "requests");
        let mut w = CheckpointWriter::new(store.clone()).expect("writer");
        w.submit(job(3, 7)).expect("submit");
        drop(w);
        assert_eq!(loaded_offset(&store), 7);
    }
}
