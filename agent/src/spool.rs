//! The agent's bounded on-disk store-and-forward spool of metric batches.
//!
//! Every batch gets the agent's next sequence number and is appended to the spool before it is
//! sent; the collector acknowledges the highest durable sequence number and [`Spool::ack`] drops
//! everything at or below it; after a reconnect the sender replays [`Spool::pending`] oldest first.
//!
//! Layout of the spool directory (mode 0700):
//! - `seg-<first seq, 20 digits>.log`: segment files of records
//!   `[u32 le payload length][u32 le crc32 of payload][payload]`, where the payload is the complete
//!   wire frame of `Message::Batch` (so replay sends it without re-encoding). Sequence numbers are
//!   consecutive inside a segment (a jump in numbering starts a new segment), so a record's number
//!   follows from the file name and its position; recovery still checks it against the frame.
//!   Segments rotate at [`SEGMENT_SIZE`].
//! - `state`: the watermark, replaced atomically (write `state.tmp`, fsync, rename): `acked`, the
//!   highest acknowledged number, and `next_seq`, a number no batch has been given yet. Numbers
//!   are reserved in blocks of [`SEQ_RESERVATION`] so pushes do not fsync; after a crash numbering
//!   resumes past the block, which leaves a harmless gap. [`Spool::close`] persists the exact value.
//!
//! What it must never do: reuse a sequence number (even across restarts and after everything was
//! acknowledged and deleted), hold payloads in memory (only a small index of offsets), panic or
//! lose good records because of a torn or corrupt tail (that tail is cut off with a warning), or
//! delete the segment being written. When full it drops the *oldest* segments and counts the
//! batches lost.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use vigil_shared::codec::{self, EncodeError, DEFAULT_MAX_FRAME, HEADER_LEN};
use vigil_shared::proto::{Batch, Message, Sample};

/// Segment files rotate once they would grow past this many bytes.
pub const SEGMENT_SIZE: u64 = 1 << 20;
/// Sequence numbers are reserved (persisted in `state`) this many at a time.
pub const SEQ_RESERVATION: u64 = 1024;

/// Keeps record offsets within `u32` (the index stores them that way to stay small).
const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// `[u32 len][u32 crc]`.
const RECORD_HEADER: usize = 8;
/// Largest payload (a whole frame) a record may hold.
const MAX_PAYLOAD: usize = DEFAULT_MAX_FRAME + HEADER_LEN;
const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const STATE_MAGIC: &str = "vigil-spool-state v1";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt spool record in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("cannot encode batch {seq}: {source}")]
    Encode {
        seq: u64,
        #[source]
        source: EncodeError,
    },
    #[error("spool sequence numbers are exhausted")]
    SeqExhausted,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// In-memory index of one segment file; never empty.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// `(offset of the record header, payload length)` of record `first_seq + i`.
    records: Vec<(u32, u32)>,
    /// File size in bytes.
    size: u64,
}

impl Segment {
    /// One past the last sequence number in this segment.
    fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(self.records.len() as u64)
    }

    /// How many records have a sequence number `>= from`.
    fn count_from(&self, from: u64) -> u64 {
        self.end_seq().saturating_sub(from.max(self.first_seq))
    }
}

/// The bounded on-disk spool. See the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_size: u64,
    /// Oldest first.
    segments: VecDeque<Segment>,
    /// Write handle on `segments.back()`; `None` means the next push starts a new segment.
    active: Option<File>,
    acked: u64,
    next_seq: u64,
    /// The `next_seq` persisted in `state`: no number at or above it has been handed out.
    reserved: u64,
    bytes: u64,
    dropped_total: u64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, holding at most about `max_bytes` of
    /// segments, and recovers its state after a restart or a crash.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        Self::with_segment_size(dir, max_bytes, SEGMENT_SIZE)
    }

    /// [`Spool::open`] with another segment size. The size is also capped at `max_bytes / 4` so
    /// that a small spool still drops in small steps.
    pub fn with_segment_size(
        dir: &Path,
        max_bytes: u64,
        segment_size: u64,
    ) -> Result<Spool, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let segment_size = segment_size.min(max_bytes / 4).clamp(1, MAX_SEGMENT_SIZE);

        let (acked, state_next) = read_state(dir)?.unwrap_or((0, 0));
        let mut segments = VecDeque::new();
        let mut disk_end = 0u64;
        for (first_seq, path) in list_segments(dir)? {
            if first_seq < disk_end {
                warn!(path = %path.display(), "spool: segment overlaps the one before it; deleting it");
                remove_file(&path)?;
                continue;
            }
            let Some(seg) = recover_segment(first_seq, path)? else {
                continue;
            };
            disk_end = seg.end_seq();
            if seg.end_seq() <= acked.saturating_add(1) {
                // Acknowledged before a crash cut the deletion short.
                remove_file(&seg.path)?;
            } else {
                segments.push_back(seg);
            }
        }
        let next_seq = state_next.max(disk_end).max(acked.saturating_add(1)).max(1);
        let bytes = segments.iter().map(|s| s.size).sum();
        debug!(dir = %dir.display(), acked, next_seq, segments = segments.len(), bytes, "spool opened");
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_size,
            segments,
            active: None,
            acked,
            next_seq,
            // Nothing at or above `next_seq` was handed out; the first push persists a new block.
            reserved: next_seq,
            bytes,
            dropped_total: 0,
        })
    }

    /// The sequence number the next [`push`](Spool::push) will assign.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Highest acknowledged sequence number (0 if none).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Spools `samples` as the next batch and returns its sequence number. Appends without
    /// fsync (the data reaches the OS), then drops the oldest segments if the spool is over its
    /// cap. The number is consumed even if the write fails.
    pub fn push(&mut self, samples: Vec<Sample>) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        if seq == u64::MAX {
            return Err(SpoolError::SeqExhausted);
        }
        let mut record = vec![0u8; RECORD_HEADER];
        codec::encode_into(
            &Message::Batch(Batch { seq, samples }),
            &mut record,
            DEFAULT_MAX_FRAME,
        )
        .map_err(|source| SpoolError::Encode { seq, source })?;
        let payload_len = record.len() - RECORD_HEADER;
        let crc = crc32fast::hash(&record[RECORD_HEADER..]);
        // encode_into caps the frame at DEFAULT_MAX_FRAME, far below u32::MAX.
        let len32 = u32::try_from(payload_len).unwrap_or(u32::MAX);
        record[..4].copy_from_slice(&len32.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());

        if seq >= self.reserved {
            let reserved = seq.saturating_add(SEQ_RESERVATION);
            self.write_state(self.acked, reserved)?;
            self.reserved = reserved;
        }
        self.next_seq = seq + 1;
        self.append(seq, &record, len32)?;
        if let Err(e) = self.enforce_cap() {
            // The batch is stored; failing to trim is worth a warning, not a lost batch.
            warn!(error = %e, "spool: cannot delete an old segment to stay under the cap");
        }
        Ok(seq)
    }

    /// Everything at or below `seq` is durable at the collector: forget it, delete the segments
    /// that hold nothing newer and persist the watermark. Acks beyond the highest number handed
    /// out are clamped to it.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let seq = seq.min(self.next_seq.saturating_sub(1));
        if seq <= self.acked {
            return Ok(());
        }
        self.write_state(seq, self.reserved)?;
        self.acked = seq;
        while let Some(front) = self.segments.front() {
            if front.end_seq() > seq.saturating_add(1) {
                break;
            }
            remove_file(&front.path)?;
            self.bytes -= front.size;
            self.segments.pop_front();
            if self.segments.is_empty() {
                self.active = None;
            }
        }
        Ok(())
    }

    /// The collector already holds everything up to `seq` (`Welcome.last_seq`): treat it as
    /// acknowledged and make sure later batches are numbered above it.
    pub fn observe_remote_last_seq(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq >= self.next_seq {
            self.next_seq = seq.saturating_add(1);
        }
        self.ack(seq)
    }

    /// Up to `max` unacknowledged batches with a sequence number above `after`, oldest first, as
    /// `(seq, frame)` where `frame` is ready to write to the stream. Reads the payloads from
    /// disk; a record whose checksum no longer matches is skipped with a warning.
    pub fn pending(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let from = after.max(self.acked).saturating_add(1);
        let mut out = Vec::new();
        for seg in &self.segments {
            if out.len() >= max {
                break;
            }
            if seg.end_seq() <= from {
                continue;
            }
            let start = usize::try_from(from.saturating_sub(seg.first_seq)).unwrap_or(usize::MAX);
            let Some(&(offset, _)) = seg.records.get(start) else {
                continue;
            };
            let path = &seg.path;
            let mut file = BufReader::new(File::open(path).map_err(io_err(path))?);
            file.seek(SeekFrom::Start(u64::from(offset)))
                .map_err(io_err(path))?;
            for (i, &(offset, len)) in seg.records.iter().enumerate().skip(start) {
                let seq = seg.first_seq + i as u64;
                let mut header = [0u8; RECORD_HEADER];
                file.read_exact(&mut header).map_err(io_err(path))?;
                let mut payload = vec![0u8; len as usize];
                file.read_exact(&mut payload).map_err(io_err(path))?;
                let (stored_len, crc) = split_header(&header);
                if stored_len != len || crc != crc32fast::hash(&payload) {
                    warn!(path = %path.display(), offset, seq, "spool: record damaged on disk; skipping it");
                    continue;
                }
                out.push((seq, payload));
                if out.len() >= max {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Number of unacknowledged batches held.
    pub fn len(&self) -> usize {
        let from = self.acked.saturating_add(1);
        let n: u64 = self.segments.iter().map(|s| s.count_from(from)).sum();
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of segment files on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Unacknowledged batches deleted to stay under the cap since this spool was opened.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Clean shutdown: flushes the active segment and persists the exact next sequence number, so
    /// that the next start continues without a gap. Dropping a spool without closing it is safe.
    pub fn close(mut self) -> Result<(), SpoolError> {
        if let (Some(file), Some(seg)) = (self.active.take(), self.segments.back()) {
            file.sync_data().map_err(io_err(&seg.path))?;
        }
        self.write_state(self.acked, self.next_seq)
    }

    /// Appends one encoded record for `seq`, starting a new segment when needed.
    fn append(&mut self, seq: u64, record: &[u8], payload_len: u32) -> Result<(), SpoolError> {
        let rec_len = record.len() as u64;
        let reuse = match (self.segments.back(), &self.active) {
            (Some(last), Some(_)) => {
                last.end_seq() == seq && last.size + rec_len <= self.segment_size
            }
            _ => false,
        };
        if !reuse {
            if let (Some(old), Some(last)) = (self.active.take(), self.segments.back()) {
                // One fsync per full segment, not per push.
                if let Err(e) = old.sync_data() {
                    warn!(path = %last.path.display(), error = %e, "spool: cannot sync a full segment");
                }
            }
            let path = self.dir.join(segment_name(seq));
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            self.segments.push_back(Segment {
                first_seq: seq,
                path,
                records: Vec::new(),
                size: 0,
            });
            self.active = Some(file);
        }
        let (Some(seg), Some(file)) = (self.segments.back_mut(), self.active.as_mut()) else {
            let path = self.dir.join(segment_name(seq));
            return Err(SpoolError::Io {
                path,
                source: io::Error::other("no active segment"),
            });
        };
        if let Err(source) = file.write_all(record) {
            // Leave no half record behind: cut it off, or give the segment up if that fails too
            // (recovery cuts torn tails at the next start).
            let restored = file
                .set_len(seg.size)
                .and_then(|()| file.seek(SeekFrom::Start(seg.size)));
            let empty = seg.records.is_empty();
            let path = seg.path.clone();
            if restored.is_err() || empty {
                self.active = None;
            }
            if empty {
                self.segments.pop_back();
                let _ = fs::remove_file(&path);
            }
            return Err(SpoolError::Io { path, source });
        }
        // Offsets fit: segment_size <= 1 GiB and a record is at most ~1 MiB.
        seg.records
            .push((u32::try_from(seg.size).unwrap_or(u32::MAX), payload_len));
        seg.size += rec_len;
        self.bytes += rec_len;
        Ok(())
    }

    /// Deletes the oldest segments (never the one being written) while over the cap.
    fn enforce_cap(&mut self) -> Result<(), SpoolError> {
        let first_unacked = self.acked.saturating_add(1);
        let mut lost: Option<(u64, u64)> = None;
        let mut count = 0u64;
        let mut result = Ok(());
        while self.bytes > self.max_bytes && self.segments.len() > 1 {
            let Some(front) = self.segments.front() else {
                break;
            };
            if let Err(e) = remove_file(&front.path) {
                result = Err(e);
                break;
            }
            let n = front.count_from(first_unacked);
            if n > 0 {
                let first = front.first_seq.max(first_unacked);
                lost = Some((lost.map_or(first, |(f, _)| f), front.end_seq() - 1));
                count += n;
            }
            self.bytes -= front.size;
            self.segments.pop_front();
        }
        if let Some((first, last)) = lost {
            self.dropped_total += count;
            warn!(
                first_seq = first,
                last_seq = last,
                count,
                max_bytes = self.max_bytes,
                "spool full: dropped the oldest unacknowledged batches"
            );
        }
        result
    }

    /// Atomically replaces `state` with the given watermark.
    fn write_state(&self, acked: u64, next_seq: u64) -> Result<(), SpoolError> {
        let text = format!("{STATE_MAGIC}\nacked {acked}\nnext_seq {next_seq}\n");
        let state = self.dir.join(STATE_FILE);
        // Temporary file `state.tmp` (STATE_TMP), synced, renamed, directory synced.
        vigil_runtime::fs::write_atomic(&state, text.as_bytes(), vigil_runtime::fs::PRIVATE)
            .map_err(io_err(&state))
    }
}

fn split_header(header: &[u8; RECORD_HEADER]) -> (u32, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc)
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Removes a file; one that is already gone counts as removed.
fn remove_file(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SpoolError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Segment files in `dir`, by first sequence number.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match parse_segment_name(&name) {
            Some(seq) => found.push((seq, entry.path())),
            None if name == STATE_FILE || name == STATE_TMP => {}
            None => debug!(file = %entry.path().display(), "spool: ignoring unknown file"),
        }
    }
    found.sort();
    Ok(found)
}

/// Reads `(acked, next_seq)` from `state`; `None` if absent or unreadable (with a warning: the
/// segments still tell where numbering stands, short of a power loss right after a crash).
fn read_state(dir: &Path) -> Result<Option<(u64, u64)>, SpoolError> {
    remove_file(&dir.join(STATE_TMP))?;
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SpoolError::Io { path, source }),
    };
    let parsed = parse_state(&String::from_utf8_lossy(&text));
    if parsed.is_none() {
        warn!(path = %path.display(), "spool: state file is corrupt; recovering from the segments");
    }
    Ok(parsed)
}

fn parse_state(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines();
    if lines.next()? != STATE_MAGIC {
        return None;
    }
    let (mut acked, mut next) = (None, None);
    for line in lines {
        match line.split_once(' ')? {
            ("acked", v) => acked = Some(v.parse().ok()?),
            ("next_seq", v) => next = Some(v.parse().ok()?),
            _ => {} // a later version's field
        }
    }
    Some((acked?, next?))
}

/// Indexes one segment file, cutting off a torn or corrupt tail. `None` if nothing good is left
/// (the file is then deleted).
fn recover_segment(first_seq: u64, path: PathBuf) -> Result<Option<Segment>, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let file_len = file.metadata().map_err(io_err(&path))?.len();
    let mut reader = BufReader::new(&file);
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut payload = Vec::new();
    let problem = loop {
        let seq = first_seq.saturating_add(records.len() as u64);
        let left = file_len - offset;
        if left == 0 {
            break None;
        }
        if offset > MAX_SEGMENT_SIZE * 2 || seq == u64::MAX {
            break Some("segment too large".to_string());
        }
        if left < RECORD_HEADER as u64 {
            break Some(format!("torn record header ({left} bytes)"));
        }
        let mut header = [0u8; RECORD_HEADER];
        reader.read_exact(&mut header).map_err(io_err(&path))?;
        let (len, crc) = split_header(&header);
        let len_usize = len as usize;
        if !(HEADER_LEN..=MAX_PAYLOAD).contains(&len_usize) {
            break Some(format!("bad record length {len}"));
        }
        if left - (RECORD_HEADER as u64) < u64::from(len) {
            break Some(format!(
                "torn record ({} of {len} payload bytes)",
                left - RECORD_HEADER as u64
            ));
        }
        payload.resize(len_usize, 0);
        reader.read_exact(&mut payload).map_err(io_err(&path))?;
        if crc32fast::hash(&payload) != crc {
            break Some("checksum mismatch".to_string());
        }
        if let Err(reason) = check_frame(&payload, seq) {
            break Some(reason);
        }
        records.push((u32::try_from(offset).unwrap_or(u32::MAX), len));
        offset += RECORD_HEADER as u64 + u64::from(len);
    };
    drop(reader);
    if let Some(reason) = problem {
        let err = SpoolError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        warn!(error = %err, kept = records.len(), cut_bytes = file_len - offset, "spool: truncating a torn or corrupt tail");
        file.set_len(offset).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
    }
    if records.is_empty() {
        remove_file(&path)?;
        return Ok(None);
    }
    Ok(Some(Segment {
        first_seq,
        path,
        records,
        size: offset,
    }))
}

/// A record's payload must be the frame of the batch numbered `seq`.
fn check_frame(frame: &[u8], seq: u64) -> Result<(), String> {
    let declared = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if declared != frame.len() - 4 {
        return Err(format!("frame length {declared} does not match the record"));
    }
    match codec::decode_body(frame[4], &frame[HEADER_LEN..]) {
        Ok(Message::Batch(b)) if b.seq == seq => Ok(()),
        Ok(Message::Batch(b)) => Err(format!("batch {} where {seq} was expected", b.seq)),
        Ok(other) => Err(format!("message kind {} is not a batch", other.kind())),
        Err(e) => Err(format!("undecodable frame: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::{rngs::StdRng, Rng, SeedableRng};
    use vigil_shared::proto::kind;

    use super::*;

    fn samples(value: f64, n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                ts_ms: 1_700_000_000_000 + i as i64,
                name: "cpu_usage_ratio".into(),
                labels: vec![("cpu".into(), i.to_string())],
                value,
            })
            .collect()
    }

    fn open(dir: &Path) -> Spool {
        Spool::open(dir, 64 << 20).expect("open")
    }

    fn seqs(pending: &[(u64, Vec<u8>)]) -> Vec<u64> {
        pending.iter().map(|(s, _)| *s).collect()
    }

    fn all_pending(spool: &Spool) -> Vec<(u64, Vec<u8>)> {
        spool.pending(0, usize::MAX).expect("pending")
    }

    /// Decodes a pending frame back into its batch.
    fn decode(frame: &[u8]) -> Batch {
        assert_eq!(frame[4], kind::BATCH);
        match codec::decode_body(frame[4], &frame[HEADER_LEN..]).expect("decode") {
            Message::Batch(b) => b,
            other => panic!("not a batch: {other:?}"),
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .expect("list")
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    fn push_n(spool: &mut Spool, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                spool
                    .push(samples(spool.next_seq() as f64, 2))
                    .expect("push")
            })
            .collect()
    }

    #[test]
    fn push_ack_pending_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = open(tmp.path());
        assert!(spool.is_empty());
        assert_eq!(push_n(&mut spool, 5), vec![1, 2, 3, 4, 5]);
        assert_eq!(spool.len(), 5);
        let pending = all_pending(&spool);
        assert_eq!(seqs(&pending), vec![1, 2, 3, 4, 5]);
        for (seq, frame) in &pending {
            let batch = decode(frame);
            assert_eq!(batch.seq, *seq);
            assert_eq!(batch.samples, samples(*seq as f64, 2));
        }
        let on_disk: u64 = segment_files(tmp.path())
            .iter()
            .map(|p| fs::metadata(p).expect("meta").len())
            .sum();
        assert_eq!(spool.bytes(), on_disk);

        spool.ack(2).expect("ack");
        assert_eq!(seqs(&all_pending(&spool)), vec![3, 4, 5]);
        assert_eq!(spool.len(), 3);
        spool.ack(1).expect("an older ack changes nothing");
        assert_eq!(spool.acked(), 2);
        spool.ack(5).expect("ack");
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(
            segment_files(tmp.path()).is_empty(),
            "fully acked segments are deleted"
        );
        assert_eq!(spool.push(samples(0.0, 1)).expect("push"), 6);
    }

    #[test]
    fn pending_after_and_max() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Small segments so that the reads cross segment boundaries.
        let mut spool = Spool::with_segment_size(tmp.path(), 1 << 20, 300).expect("open");
        push_n(&mut spool, 10);
        spool.ack(3).expect("ack");
        assert!(segment_files(tmp.path()).len() > 2);
        let check = |after: u64, max: usize, expected: &[u64]| {
            let got = spool.pending(after, max).expect("pending");
            assert_eq!(seqs(&got), expected, "pending({after}, {max})");
        };
        check(0, 100, &[4, 5, 6, 7, 8, 9, 10]);
        check(2, 100, &[4, 5, 6, 7, 8, 9, 10]);
        check(3, 2, &[4, 5]);
        check(5, 3, &[6, 7, 8]);
        check(9, 100, &[10]);
        check(10, 100, &[]);
        check(u64::MAX, 100, &[]);
        check(0, 0, &[]);
    }

    #[test]
    fn rotates_segments_and_ack_deletes_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::with_segment_size(tmp.path(), 1 << 20, 400).expect("open");
        push_n(&mut spool, 20);
        let files = segment_files(tmp.path());
        assert!(files.len() >= 5, "{files:?}");
        for f in &files {
            // A segment holds whole records and stays under the size unless one record is bigger.
            assert!(fs::metadata(f).expect("meta").len() <= 400);
        }
        assert_eq!(
            files[0].file_name().and_then(|n| n.to_str()),
            Some("seg-00000000000000000001.log")
        );
        spool.ack(10).expect("ack");
        let left = segment_files(tmp.path());
        assert!(left.len() < files.len());
        assert_eq!(seqs(&all_pending(&spool)), (11..=20).collect::<Vec<_>>());
    }

    #[test]
    fn reopen_keeps_unacked_and_numbering_continues() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = open(tmp.path());
        push_n(&mut spool, 3);
        spool.ack(1).expect("ack");
        drop(spool); // a crash, as far as the spool can tell

        let mut spool = open(tmp.path());
        assert_eq!(seqs(&all_pending(&spool)), vec![2, 3]);
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.acked(), 1);
        let seq = spool.push(samples(9.0, 1)).expect("push");
        assert!(seq > 3, "{seq}");
        assert_eq!(seqs(&all_pending(&spool)), vec![2, 3, seq]);

        // A clean close persists the exact number: no gap.
        let next = spool.next_seq();
        spool.close().expect("close");
        let spool = open(tmp.path());
        assert_eq!(spool.next_seq(), next);
        assert_eq!(seqs(&all_pending(&spool)), vec![2, 3, seq]);
    }

    #[test]
    fn numbering_continues_when_everything_was_acked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = open(tmp.path());
        push_n(&mut spool, 3);
        spool.ack(3).expect("ack");
        drop(spool);
        assert!(segment_files(tmp.path()).is_empty());

        let mut spool = open(tmp.path());
        assert!(spool.is_empty());
        assert!(spool.next_seq() > 3);
        let seq = spool.push(samples(1.0, 1)).expect("push");
        assert!(seq > 3);
        spool.ack(seq).expect("ack");
        spool.close().expect("close");
        assert_eq!(open(tmp.path()).next_seq(), seq + 1);
    }

    #[test]
    fn numbering_survives_a_lost_state_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = open(tmp.path());
        push_n(&mut spool, 4);
        drop(spool);
        for garbage in [&b""[..], b"nonsense", b"vigil-spool-state v1\nacked x\n"] {
            fs::write(tmp.path().join(STATE_FILE), garbage).expect("write");
            let spool = open(tmp.path());
            assert_eq!(seqs(&all_pending(&spool)), vec![1, 2, 3, 4]);
            assert_eq!(
                spool.next_seq(),
                5,
                "the segments still tell where numbering stands"
            );
        }
    }

    #[test]
    fn observe_remote_last_seq() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = open(tmp.path());
        push_n(&mut spool, 5);
        spool.observe_remote_last_seq(3).expect("observe");
        assert_eq!(seqs(&all_pending(&spool)), vec![4, 5]);
        assert_eq!(spool.next_seq(), 6);
        // The collector knows more than we ever sent (e.g. a reinstalled agent with its old id).
        spool.observe_remote_last_seq(100).expect("observe");
        assert!(spool.is_empty());
        assert_eq!(spool.next_seq(), 101);
        assert_eq!(spool.push(samples(1.0, 1)).expect("push"), 101);
        drop(spool);
        let spool = open(tmp.path());
        assert_eq!(seqs(&all_pending(&spool)), vec![101]);
        assert!(spool.next_seq() > 101);
    }

    #[test]
    fn ack_beyond_what_was_sent_is_clamped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = open(tmp.path());
        push_n(&mut spool, 2);
        spool.ack(1000).expect("ack");
        assert_eq!(spool.acked(), 2);
        let seq = spool.push(samples(1.0, 1)).expect("push");
        assert_eq!(
            seqs(&all_pending(&spool)),
            vec![seq],
            "a new batch is not hidden by a bogus ack"
        );
    }

    #[test]
    fn cap_drops_oldest_and_counts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let max = 4096;
        let mut spool = Spool::with_segment_size(tmp.path(), max, 1024).expect("open");
        let pushed = push_n(&mut spool, 100);
        let pending = seqs(&all_pending(&spool));
        assert!(spool.dropped_total() > 0);
        assert!(spool.bytes() <= max, "{} bytes", spool.bytes());
        assert_eq!(spool.dropped_total() + pending.len() as u64, 100);
        // What is left is the newest, contiguous, ending with the last push.
        let first = pending[0];
        assert_eq!(pending, (first..=pushed[99]).collect::<Vec<_>>());
        assert_eq!(spool.len(), pending.len());

        // Acked batches deleted to make room are not counted as dropped.
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::with_segment_size(tmp.path(), max, 1024).expect("open");
        push_n(&mut spool, 10);
        spool.ack(10).expect("ack");
        assert_eq!(spool.dropped_total(), 0);
        // The cap also shrinks oversized segments: a 4 KiB spool uses 1 KiB segments.
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(tmp.path(), max).expect("open");
        push_n(&mut spool, 100);
        assert!(spool.bytes() <= max);
        assert!(spool.len() > 10);

        // A batch larger than the whole cap is still kept: the segment being written never goes.
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(tmp.path(), 100).expect("open");
        assert_eq!(push_n(&mut spool, 2), vec![1, 2]);
        assert!(spool.bytes() > 100);
        assert_eq!(seqs(&all_pending(&spool)), vec![2]);
        assert_eq!(spool.dropped_total(), 1);
    }

    /// Pushes `n` batches into `segment_size` segments, damages the spool with `mutate`, reopens
    /// and compares what survived; then checks the spool still works.
    fn check_recovery(n: usize, segment_size: u64, mutate: impl Fn(&[PathBuf]), expected: &[u64]) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::with_segment_size(tmp.path(), 1 << 20, segment_size).expect("open");
        push_n(&mut spool, n);
        drop(spool);
        mutate(&segment_files(tmp.path()));

        let mut spool =
            Spool::with_segment_size(tmp.path(), 1 << 20, segment_size).expect("reopen");
        let pending = all_pending(&spool);
        assert_eq!(seqs(&pending), expected);
        for (seq, frame) in &pending {
            assert_eq!(decode(frame).samples, samples(*seq as f64, 2));
        }
        let on_disk: u64 = segment_files(tmp.path())
            .iter()
            .map(|p| fs::metadata(p).expect("meta").len())
            .sum();
        assert_eq!(spool.bytes(), on_disk, "the bad tail is gone from disk");
        let seq = spool.push(samples(7.0, 1)).expect("push after recovery");
        assert!(seq > n as u64);
        drop(spool);
        let spool = Spool::with_segment_size(tmp.path(), 1 << 20, segment_size).expect("reopen");
        let mut want = expected.to_vec();
        want.push(seq);
        assert_eq!(seqs(&all_pending(&spool)), want);
    }

    fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(path).expect("read");
        f(&mut bytes);
        fs::write(path, bytes).expect("write");
    }

    fn last(files: &[PathBuf]) -> &Path {
        files.last().expect("a segment")
    }

    #[test]
    fn recovers_from_torn_or_corrupt_tails() {
        // One segment holding 1, 2, 3.
        check_recovery(
            3,
            1 << 20,
            |f| edit(last(f), |b| b.truncate(b.len() - 3)),
            &[1, 2],
        );
        check_recovery(
            3,
            1 << 20,
            |f| edit(last(f), |b| b.truncate(b.len() - 1)),
            &[1, 2],
        );
        let record = |f: &[PathBuf]| fs::metadata(last(f)).expect("meta").len() as usize / 3;
        // Cut inside the third record's header.
        check_recovery(
            3,
            1 << 20,
            |f| {
                let r = record(f);
                edit(last(f), |b| b.truncate(2 * r + 5))
            },
            &[1, 2],
        );
        // A flipped byte in the last payload (CRC) and in the last record's length field.
        check_recovery(
            3,
            1 << 20,
            |f| {
                edit(last(f), |b| {
                    let i = b.len() - 4;
                    b[i] ^= 0x40
                })
            },
            &[1, 2],
        );
        check_recovery(
            3,
            1 << 20,
            |f| {
                let r = record(f);
                edit(last(f), |b| b[2 * r + 3] = 0xff)
            },
            &[1, 2],
        );
        // Garbage appended (a zero-length record, then random-looking bytes).
        check_recovery(
            3,
            1 << 20,
            |f| edit(last(f), |b| b.extend_from_slice(&[0; 11])),
            &[1, 2, 3],
        );
        check_recovery(
            3,
            1 << 20,
            |f| {
                edit(last(f), |b| {
                    b.extend_from_slice(b"\x05\0\0\0garbagegarbage")
                })
            },
            &[1, 2, 3],
        );
        // The whole file is garbage: it goes, numbering still moves on.
        check_recovery(
            3,
            1 << 20,
            |f| fs::write(last(f), b"xx").expect("write"),
            &[],
        );
        // A valid record with the wrong sequence number (e.g. a segment renamed by hand).
        check_recovery(
            3,
            1 << 20,
            |f| {
                let dir = last(f).parent().expect("dir");
                fs::rename(last(f), dir.join(segment_name(2))).expect("rename");
            },
            &[],
        );
        // Damage in an older segment loses that segment's tail only; later segments survive.
        check_recovery(
            6,
            300,
            |f| {
                assert_eq!(f.len(), 3, "two records per segment: {f:?}");
                edit(&f[0], |b| {
                    let i = b.len() - 2;
                    b[i] ^= 1
                });
            },
            &[1, 3, 4, 5, 6],
        );
    }

    #[test]
    fn directory_is_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/spool");
        let mut spool = open(&dir);
        spool.push(samples(1.0, 1)).expect("push");
        let mode = fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        for f in segment_files(&dir) {
            assert_eq!(
                fs::metadata(f).expect("meta").permissions().mode() & 0o777,
                0o600
            );
        }
        // Stray files are left alone.
        fs::write(dir.join("notes.txt"), "x").expect("write");
        drop(spool);
        assert_eq!(open(&dir).len(), 1);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(42), "seg-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "seg-42.log",
            "seg-0000000000000000004x.log",
            "seg-99999999999999999999.log",
            "state",
            "seg-00000000000000000042.tmp",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    /// Random pushes, acks, remote watermarks, reads and restarts against a model: the spool
    /// holds exactly the pushed batches that are neither acknowledged nor dropped (and drops only
    /// take the oldest), oldest first, numbers strictly increasing and never reused.
    #[test]
    fn random_operations_keep_the_invariants() {
        for seed in 0..3u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let tmp = tempfile::tempdir().expect("tempdir");
            let (max, seg) = (6000, 700);
            let reopen = || Spool::with_segment_size(tmp.path(), max, seg).expect("open");
            let mut spool = reopen();
            let mut live = BTreeSet::new();
            let mut highest = 0u64; // highest number handed out or known remotely
            let mut acked = 0u64;
            let mut session_dropped = 0u64;
            let mut dropped_seen = 0u64;
            for step in 0..400 {
                match rng.random_range(0..100) {
                    0..=54 => {
                        let want = spool.next_seq();
                        let seq = spool
                            .push(samples(want as f64, rng.random_range(1..6)))
                            .expect("push");
                        assert_eq!(seq, want);
                        assert!(seq > highest, "seed {seed} step {step}: {seq} reused");
                        highest = seq;
                        live.insert(seq);
                    }
                    55..=74 => {
                        let seq = rng.random_range(0..=highest + 3);
                        spool.ack(seq).expect("ack");
                        acked = acked.max(seq.min(spool.next_seq() - 1));
                    }
                    75..=77 => {
                        let seq = rng.random_range(0..=highest + 20);
                        spool.observe_remote_last_seq(seq).expect("observe");
                        acked = acked.max(seq);
                        highest = highest.max(seq);
                    }
                    78..=89 => {
                        let after = rng.random_range(0..=highest + 1);
                        let n = rng.random_range(0..8);
                        let got = spool.pending(after, n).expect("pending");
                        let want: Vec<u64> = live
                            .range(after + 1..)
                            .copied()
                            .filter(|s| *s > acked)
                            .take(n)
                            .collect();
                        // Drops are only discovered below, so compare against what the spool holds.
                        let held: BTreeSet<u64> = seqs(&all_pending(&spool)).into_iter().collect();
                        let want: Vec<u64> =
                            want.into_iter().filter(|s| held.contains(s)).collect();
                        assert!(got.len() <= n);
                        if got.len() < n {
                            assert_eq!(seqs(&got), want);
                        } else {
                            assert_eq!(seqs(&got), want[..got.len()].to_vec());
                        }
                        for (seq, frame) in &got {
                            let b = decode(frame);
                            assert_eq!((b.seq, b.samples[0].value), (*seq, *seq as f64));
                        }
                    }
                    _ => {
                        if rng.random_bool(0.5) {
                            spool.close().expect("close");
                        } else {
                            drop(spool);
                        }
                        spool = reopen();
                        session_dropped = 0;
                    }
                }
                live.retain(|s| *s > acked);
                // Account for drops: they must be the oldest live batches, and counted.
                let held = seqs(&all_pending(&spool));
                assert!(
                    held.windows(2).all(|w| w[0] < w[1]),
                    "seed {seed} step {step}: {held:?}"
                );
                let held_set: BTreeSet<u64> = held.iter().copied().collect();
                assert!(
                    held_set.is_subset(&live),
                    "seed {seed} step {step}: extra batches"
                );
                let missing: Vec<u64> = live.difference(&held_set).copied().collect();
                if let (Some(m), Some(h)) = (missing.last(), held.first()) {
                    assert!(
                        m < h,
                        "seed {seed} step {step}: dropped {m} but kept older {h}"
                    );
                }
                let newly = spool.dropped_total() - session_dropped;
                assert_eq!(
                    newly,
                    missing.len() as u64,
                    "seed {seed} step {step}: drop count"
                );
                session_dropped = spool.dropped_total();
                dropped_seen += newly;
                for m in missing {
                    live.remove(&m);
                }
                assert_eq!(spool.len(), live.len());
                assert!(
                    spool.bytes() <= max + seg,
                    "seed {seed} step {step}: {} bytes",
                    spool.bytes()
                );
                assert!(spool.next_seq() > highest);
            }
            assert!(dropped_seen > 0, "seed {seed}: the cap was never exercised");
        }
    }
}
