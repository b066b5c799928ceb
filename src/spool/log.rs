//! A shard's durable log: segment files of spooled records under `data_dir/shard-N/`,
//! written with direct I/O and group commit, read back to feed Kafka, and deleted once
//! Kafka has acknowledged every record in them.
//!
//! The bookkeeping (`SpoolLog`) is synchronous and lives in a `RefCell` on the shard; the
//! async parts (flush, read-back, replay) borrow it only between awaits.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use crate::runtime::DirectFile;

use super::record::{decode_one, encode, SpoolRecord, Stop};

/// One segment file.
pub struct Segment {
    pub base_seq: u64,
    pub path: PathBuf,
    pub file: Rc<DirectFile>,
    /// Bytes of records durably written (the file may hold zero padding after them).
    pub durable_bytes: u64,
    /// Records durably written.
    pub records: u64,
    /// Records Kafka has acknowledged (or refused for good).
    pub acked: u64,
    /// No more appends: a newer segment exists.
    pub sealed: bool,
    /// When its first record became durable (replayed segments: when replay began).
    pub first_durable_at: Option<Instant>,
}

/// Where the feeder has read up to: a segment, a byte offset in it, and how many of its
/// records came before (a record is acknowledged as `base_seq + index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedCursor {
    pub base_seq: u64,
    pub offset: u64,
    pub records: u64,
}

/// What replay found wrong in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes_cut: u64,
    pub reason: &'static str,
}

pub struct SpoolLog {
    dir: PathBuf,
    pub segment_bytes_max: u64,
    next_seq: u64,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    /// Last seq in `pending`.
    pending_last_seq: Option<u64>,
    pub pending_since: Option<Instant>,
    /// The bytes of the active segment's last partial block, already on disk, rewritten in
    /// front of the next write (direct I/O writes whole blocks).
    tail_block: Vec<u8>,
    pub segments: VecDeque<Segment>,
    /// Every seq up to this one (inclusive) is durable.
    pub durable_seq: Option<u64>,
    pub feed: FeedCursor,
    /// A flush in progress: appends go on into `pending`, the flush owns its bytes.
    pub flushing: bool,
    /// Bytes of records the flush in progress writes: neither pending nor durable yet, but
    /// counted towards `max_bytes` all the same.
    flushing_bytes: u64,
    pub last_error: Option<String>,
}

impl SpoolLog {
    fn segment_path(dir: &Path, base_seq: u64) -> PathBuf {
        dir.join(format!("{base_seq:020}.log"))
    }

    /// Bytes on disk in all segments plus what waits to be (or is being) written.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.durable_bytes).sum::<u64>()
            + self.flushing_bytes
            + self.pending.len() as u64
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Age of the oldest record Kafka has not acknowledged (to the segment's first flush).
    pub fn oldest_unacked_age(&self, now: Instant) -> Option<std::time::Duration> {
        self.segments
            .iter()
            .find(|s| s.acked < s.records)
            .and_then(|s| s.first_durable_at)
            .map(|at| now.duration_since(at))
    }

    /// Records written but not yet acknowledged by Kafka.
    pub fn records_unacked(&self) -> u64 {
        self.segments.iter().map(|s| s.records - s.acked).sum()
    }

    /// Appends a record (made durable by the next flush) and returns its seq.
    pub fn append(&mut self, mut record: SpoolRecord, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        record.seq = seq;
        encode(&record, &mut self.pending);
        self.pending_last_seq = Some(seq);
        self.pending_since.get_or_insert(now);
        seq
    }

    /// Kafka acknowledged (or refused for good) `seq`. Returns segments now done, to
    /// delete: sealed, every record acknowledged.
    pub fn acked(&mut self, seq: u64) -> Vec<Segment> {
        let index = match self.segments.iter().rposition(|s| s.base_seq <= seq) {
            Some(index) => index,
            None => return Vec::new(),
        };
        self.segments[index].acked += 1;
        let mut done = Vec::new();
        // Only whole segments at the front go, so replay order stays oldest first.
        while self
            .segments
            .front()
            .is_some_and(|s| s.sealed && s.acked >= s.records && self.feed.base_seq > s.base_seq)
        {
            done.push(self.segments.pop_front().expect("front exists"));
        }
        done
    }
}

/// Opens the spool of one shard: replays the segments of `dirs` (this shard's own and any
/// left by shards that no longer exist), cutting damaged tails, and starts a new segment
/// in `dir`.
pub async fn open(
    dir: &Path,
    replay_dirs: &[PathBuf],
    segment_bytes_max: u64,
) -> io::Result<(SpoolLog, Vec<Cut>)> {
    std::fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    for replay_dir in replay_dirs {
        let Ok(entries) = std::fs::read_dir(replay_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                paths.push(path);
            }
        }
    }
    // Oldest first: file names are zero-padded base seqs, but seqs restart per directory,
    // so order by modification time, then name.
    paths.sort_by_key(|p| {
        (
            std::fs::metadata(p).and_then(|m| m.modified()).ok(),
            p.clone(),
        )
    });
    let mut segments = VecDeque::new();
    let mut cuts = Vec::new();
    let mut next_seq = 0u64;
    for path in paths {
        let file = DirectFile::open(&path).await?;
        let (records, valid_bytes, max_seq, cut) = scan(&file, &path).await?;
        if let Some(cut) = cut {
            file.truncate(cut.offset).await?;
            cuts.push(cut);
        }
        if records == 0 {
            file.close().await?;
            std::fs::remove_file(&path)?;
            continue;
        }
        next_seq = next_seq.max(max_seq + 1);
        segments.push_back(Segment {
            base_seq: 0, // renumbered below
            path,
            file: Rc::new(file),
            durable_bytes: valid_bytes,
            records,
            acked: 0,
            sealed: true,
            first_durable_at: Some(Instant::now()),
        });
    }
    // Replayed segments get seq ranges below the new ones, in replay order: acknowledgements
    // find their segment by seq, and seqs inside a replayed segment are renumbered as read.
    let mut base = 0u64;
    for segment in segments.iter_mut() {
        segment.base_seq = base;
        base += segment.records;
    }
    next_seq = next_seq.max(base);
    let first_new = next_seq;
    let path = SpoolLog::segment_path(dir, first_new);
    let file = DirectFile::create(&path).await?;
    segments.push_back(Segment {
        base_seq: first_new,
        path,
        file: Rc::new(file),
        durable_bytes: 0,
        records: 0,
        acked: 0,
        sealed: false,
        first_durable_at: None,
    });
    let feed = FeedCursor {
        base_seq: segments.front().expect("active segment").base_seq,
        offset: 0,
        records: 0,
    };
    Ok((
        SpoolLog {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            next_seq,
            pending: Vec::new(),
            pending_last_seq: None,
            pending_since: None,
            tail_block: Vec::new(),
            segments,
            durable_seq: first_new.checked_sub(1),
            feed,
            flushing: false,
            flushing_bytes: 0,
            last_error: None,
        },
        cuts,
    ))
}

/// Bytes read from a segment at a time.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Reads a segment to its end: (records, bytes of whole records, highest seq, cut).
async fn scan(file: &DirectFile, path: &Path) -> io::Result<(u64, u64, u64, Option<Cut>)> {
    let size = file.size().await?;
    let mut offset = 0u64;
    let mut records = 0;
    let mut max_seq = 0;
    let mut carry = Vec::new();
    loop {
        let chunk = file
            .read_at(offset + carry.len() as u64, READ_CHUNK_BYTES)
            .await?;
        let at_end = chunk.is_empty();
        carry.extend_from_slice(&chunk);
        let bytes = Bytes::from(std::mem::take(&mut carry));
        let mut at = 0usize;
        loop {
            // The chunk ended exactly between two records: read on (an empty remainder
            // is not the zero padding that ends a segment).
            if at == bytes.len() && !at_end {
                break;
            }
            match decode_one(&bytes.slice(at..)) {
                Ok((record, len)) => {
                    records += 1;
                    max_seq = max_seq.max(record.seq);
                    at += len;
                }
                Err(Stop::Truncated) if !at_end => break,
                Err(Stop::End) => {
                    return Ok((records, offset + at as u64, max_seq, None));
                }
                Err(stop) => {
                    let cut_at = offset + at as u64;
                    return Ok((
                        records,
                        cut_at,
                        max_seq,
                        Some(Cut {
                            path: path.to_path_buf(),
                            offset: cut_at,
                            bytes_cut: size.saturating_sub(cut_at),
                            reason: match stop {
                                Stop::Truncated => "record cut short (torn write)",
                                _ => "checksum mismatch",
                            },
                        }),
                    ));
                }
            }
        }
        offset += at as u64;
        carry = bytes.slice(at..).to_vec();
        if at_end {
            return Ok((records, offset, max_seq, None));
        }
    }
}

/// What one flush wrote: records up to `last_seq` are durable.
pub struct Flushed {
    pub last_seq: u64,
}

/// A flush's inputs, taken from the log under a short borrow.
struct FlushJob {
    file: Rc<DirectFile>,
    alignment: u64,
    write_offset: u64,
    bytes: Vec<u8>,
    pending: Vec<u8>,
    last_seq: u64,
}

/// Writes what is pending, durably (group commit: one write and one `fdatasync` for all of
/// it). `Ok(None)` when there was nothing to do. On an error the records stay pending and
/// their acknowledgements wait.
pub async fn flush(log: &std::cell::RefCell<SpoolLog>) -> io::Result<Option<Flushed>> {
    let job = {
        let mut log = log.borrow_mut();
        if log.flushing || log.pending.is_empty() {
            return Ok(None);
        }
        log.flushing = true;
        let pending = std::mem::take(&mut log.pending);
        log.flushing_bytes = pending.len() as u64;
        let last_seq = log
            .pending_last_seq
            .take()
            .expect("pending records have seqs");
        log.pending_since = None;
        let tail_block = std::mem::take(&mut log.tail_block);
        let active = log.segments.back().expect("active segment");
        let alignment = active.file.alignment();
        let write_offset = active.durable_bytes / alignment * alignment;
        debug_assert_eq!(tail_block.len() as u64, active.durable_bytes - write_offset);
        let mut bytes = tail_block;
        bytes.extend_from_slice(&pending);
        let padded = (bytes.len() as u64).div_ceil(alignment) * alignment;
        bytes.resize(padded as usize, 0);
        FlushJob {
            file: active.file.clone(),
            alignment,
            write_offset,
            bytes,
            pending,
            last_seq,
        }
    };
    let result = async {
        job.file.write_at(&job.bytes, job.write_offset).await?;
        job.file.sync_data().await
    }
    .await;
    let mut log = log.borrow_mut();
    log.flushing = false;
    log.flushing_bytes = 0;
    let active_durable = log.segments.back().expect("active segment").durable_bytes;
    let tail_len = (active_durable - job.write_offset) as usize;
    if let Err(error) = result {
        let mut restored = job.pending;
        restored.extend_from_slice(&log.pending);
        log.pending = restored;
        log.pending_last_seq = Some(
            log.pending_last_seq
                .map_or(job.last_seq, |s| s.max(job.last_seq)),
        );
        log.pending_since.get_or_insert(Instant::now());
        log.tail_block = job.bytes[..tail_len].to_vec();
        log.last_error = Some(error.to_string());
        return Err(error);
    }
    log.last_error = None;
    let first_in_flush = log.durable_seq.map_or(0, |s| s + 1);
    let active = log.segments.back_mut().expect("active segment");
    active.durable_bytes += job.pending.len() as u64;
    active.first_durable_at.get_or_insert_with(Instant::now);
    active.records += job.last_seq + 1 - first_in_flush;
    let new_tail_start = active.durable_bytes / job.alignment * job.alignment;
    let written_end = (active.durable_bytes - job.write_offset) as usize;
    let keep_from = (new_tail_start - job.write_offset) as usize;
    log.tail_block = job.bytes[keep_from..written_end].to_vec();
    log.durable_seq = Some(job.last_seq);
    Ok(Some(Flushed {
        last_seq: job.last_seq,
    }))
}

/// Starts a new segment once the active one is full. Called by the flush loop between
/// flushes.
pub async fn rotate_if_full(log: &std::cell::RefCell<SpoolLog>) -> io::Result<()> {
    let path = {
        let log = log.borrow();
        let active = log.segments.back().expect("active segment");
        if log.flushing || active.durable_bytes < log.segment_bytes_max {
            return Ok(());
        }
        let base_seq = log.durable_seq.map_or(0, |s| s + 1);
        SpoolLog::segment_path(&log.dir, base_seq)
    };
    let file = DirectFile::create(&path).await?;
    let mut log = log.borrow_mut();
    let base_seq = log.durable_seq.map_or(0, |s| s + 1);
    log.segments.back_mut().expect("active segment").sealed = true;
    log.tail_block.clear();
    log.segments.push_back(Segment {
        base_seq,
        path,
        file: Rc::new(file),
        durable_bytes: 0,
        records: 0,
        acked: 0,
        sealed: false,
        first_durable_at: None,
    });
    Ok(())
}

/// Records read back for Kafka, with the seq each is acknowledged under.
pub struct ReadBack {
    pub records: Vec<(u64, SpoolRecord)>,
}

/// Reads durable records at the feed cursor, up to about `READ_CHUNK_BYTES`, and advances
/// the cursor past them. Empty when the feeder has caught up.
pub async fn read_back(log: &std::cell::RefCell<SpoolLog>) -> io::Result<ReadBack> {
    loop {
        let (file, offset, available, base_seq, index_start, sealed) = {
            let log = log.borrow();
            let Some(segment) = log
                .segments
                .iter()
                .find(|s| s.base_seq == log.feed.base_seq)
            else {
                return Ok(ReadBack {
                    records: Vec::new(),
                });
            };
            (
                segment.file.clone(),
                log.feed.offset,
                segment.durable_bytes.saturating_sub(log.feed.offset),
                segment.base_seq,
                log.feed.records,
                segment.sealed,
            )
        };
        if available == 0 {
            if !sealed {
                return Ok(ReadBack {
                    records: Vec::new(),
                });
            }
            // Done with a sealed segment: move to the next one.
            let mut log = log.borrow_mut();
            let next = log
                .segments
                .iter()
                .find(|s| s.base_seq > base_seq)
                .map(|s| s.base_seq);
            match next {
                Some(next) => {
                    log.feed = FeedCursor {
                        base_seq: next,
                        offset: 0,
                        records: 0,
                    };
                    continue;
                }
                None => {
                    return Ok(ReadBack {
                        records: Vec::new(),
                    })
                }
            }
        }
        let want = (available as usize).min(READ_CHUNK_BYTES);
        let bytes = Bytes::from(file.read_at(offset, want).await?);
        let bytes = bytes.slice(..want.min(bytes.len()));
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            match decode_one(&bytes.slice(at..)) {
                Ok((record, len)) => {
                    records.push((base_seq + index_start + records.len() as u64, record));
                    at += len;
                }
                // The chunk ends inside a record: the next read starts at it.
                Err(Stop::Truncated) if !records.is_empty() => break,
                // A record larger than a chunk: read exactly it.
                Err(Stop::Truncated) => {
                    let whole = Bytes::from(file.read_at(offset, record_len_at(&bytes)).await?);
                    let (record, len) = decode_one(&whole)
                        .map_err(|_| io::Error::other("spool record unreadable on re-read"))?;
                    records.push((base_seq + index_start, record));
                    at = len;
                    break;
                }
                Err(_) => {
                    return Err(io::Error::other(format!(
                        "spool damaged at offset {} of a live segment",
                        offset + at as u64
                    )))
                }
            }
        }
        let mut log = log.borrow_mut();
        if log.feed.base_seq == base_seq {
            log.feed.offset += at as u64;
            log.feed.records += records.len() as u64;
        }
        return Ok(ReadBack { records });
    }
}

fn record_len_at(bytes: &Bytes) -> usize {
    u32::from_le_bytes(bytes[0..4].try_into().unwrap_or([0; 4])) as usize + 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::SpoolRecord;

    /// Runs `test` on a one-shard runtime (the spool needs io_uring).
    fn on_a_shard<F, Fut>(test: F)
    where
        F: Fn() -> Fut + Send + Clone + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let cpu = crate::runtime::affinity_cpus().unwrap()[0];
        crate::runtime::run_shards::<(), _, _>(&[cpu], 1, move |_env| {
            let test = test.clone();
            async move { test().await }
        })
        .unwrap();
    }

    fn record_of_len(len: usize) -> SpoolRecord {
        let mut record = SpoolRecord {
            seq: 0,
            mapping: 0,
            cluster: "main".into(),
            topic: "t".into(),
            key: Vec::new(),
            headers: Vec::new(),
            payload: Bytes::new(),
        };
        let payload = len - record.encoded_len();
        record.payload = Bytes::from(vec![7u8; payload]);
        assert_eq!(record.encoded_len(), len);
        record
    }

    /// A segment whose records end exactly where a read chunk ends is replayed whole: the
    /// empty remainder of a chunk is not the end of the segment (this once cut replay
    /// short and let Kafka acknowledgements delete a segment with records unsent).
    #[test]
    fn replay_reads_past_a_record_boundary_at_a_chunk_boundary() {
        let dir = std::env::temp_dir().join(format!("ferrymq-spool-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let old = dir.join("old");
        std::fs::create_dir_all(&old).unwrap();
        let records = 2 * READ_CHUNK_BYTES / 1024 + 3;
        let mut bytes = Vec::new();
        for seq in 0..records {
            let mut record = record_of_len(1024);
            record.seq = seq as u64;
            encode(&record, &mut bytes);
        }
        bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
        std::fs::write(old.join("00000000000000000000.log"), &bytes).unwrap();
        let new = dir.join("new");
        let (dir_for_test, old_for_test) = (new.clone(), old.clone());
        on_a_shard(move || {
            let (new, old) = (dir_for_test.clone(), old_for_test.clone());
            async move {
                let (log, cuts) = open(&new, &[old], 1 << 20).await.unwrap();
                assert!(cuts.is_empty(), "{cuts:?}");
                assert_eq!(log.records_unacked(), records as u64);
            }
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
