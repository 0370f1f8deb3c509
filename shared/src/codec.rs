//! Framing: `[u32 big-endian length][kind byte][MessagePack map]`, where the length counts the kind
//! byte and the payload. Frames have a hard size limit, checked from the header before any
//! payload is buffered. Decoding never panics: anything malformed becomes a [`DecodeError`]
//! whose [`DecodeError::reason`] labels `vigil_ingest_rejected_total`.
//!
//! No I/O here: [`FrameDecoder`] takes bytes as they arrive and yields messages.

use bytes::{Buf, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use crate::proto::{kind, Message};

/// Length prefix plus kind byte.
pub const HEADER_LEN: usize = 5;
/// Default hard limit of one frame's payload (kind byte excluded).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Hard limit for inventory frames: a full snapshot of a large host (10,000 packages) fits.
pub const MAX_INVENTORY_FRAME: usize = 16 << 20;
/// Deepest nesting of arrays and maps a frame body may have, the message's own structure
/// included (an inventory attribute sits 5 levels down). Bounds the decoder's recursion, and
/// keeps every attribute value within what the collector can read back from its store
/// (serde_json parses at most 128 levels).
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated { have: usize, need: usize },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// Bounded label value for `vigil_ingest_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::Malformed(_) => "malformed",
        }
    }

    /// QUIC application error code to close the stream with.
    pub fn code(&self) -> u32 {
        use crate::proto::codes;
        match self {
            DecodeError::Oversized { .. } => codes::OVERSIZED,
            DecodeError::UnknownKind(_) => codes::UNKNOWN_KIND,
            DecodeError::Truncated { .. } | DecodeError::Malformed(_) => codes::MALFORMED,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the {max}-byte frame limit")]
    Oversized { len: usize, max: usize },
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Appends `msg` as one frame to `out`.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>, max: usize) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, msg.kind()]);
    let res = match msg {
        Message::Enroll(m) => write_body(out, m),
        Message::Enrolled(m) => write_body(out, m),
        Message::Hello(m) => write_body(out, m),
        Message::Welcome(m) => write_body(out, m),
        Message::Settings(m) => write_body(out, m),
        Message::Batch(m) => write_body(out, m),
        Message::Ack(m) => write_body(out, m),
        Message::Goodbye(m) => write_body(out, m),
        Message::Error(m) => write_body(out, m),
        Message::InventorySnapshot(m) => write_body(out, m),
        Message::InventoryDelta(m) => write_body(out, m),
        Message::InventoryAck(m) => write_body(out, m),
        Message::InventoryResync(m) => write_body(out, m),
    };
    if let Err(e) = res {
        out.truncate(start);
        return Err(e.into());
    }
    let payload = out.len() - start - HEADER_LEN;
    if payload > max {
        out.truncate(start);
        return Err(EncodeError::Oversized { len: payload, max });
    }
    let len =
        u32::try_from(payload + 1).map_err(|_| EncodeError::Oversized { len: payload, max })?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Encodes `msg` as one frame.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out, DEFAULT_MAX_FRAME)?;
    Ok(out)
}

/// The body of a frame carrying `msg` (what [`RawFrame::body`] holds): the message as a
/// MessagePack map, without the header.
pub fn encode_body(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out, usize::MAX)?;
    out.drain(..HEADER_LEN);
    Ok(out)
}

fn write_body<T: Serialize>(out: &mut Vec<u8>, body: &T) -> Result<(), rmp_serde::encode::Error> {
    body.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
}

/// Decodes one frame body given its kind byte.
pub fn decode_body(kind_byte: u8, payload: &[u8]) -> Result<Message, DecodeError> {
    Ok(match kind_byte {
        kind::ENROLL => Message::Enroll(read_body(payload)?),
        kind::ENROLLED => Message::Enrolled(read_body(payload)?),
        kind::HELLO => Message::Hello(read_body(payload)?),
        kind::WELCOME => Message::Welcome(read_body(payload)?),
        kind::SETTINGS => Message::Settings(read_body(payload)?),
        kind::BATCH => Message::Batch(read_body(payload)?),
        kind::ACK => Message::Ack(read_body(payload)?),
        kind::GOODBYE => Message::Goodbye(read_body(payload)?),
        kind::ERROR => Message::Error(read_body(payload)?),
        kind::INVENTORY_SNAPSHOT => Message::InventorySnapshot(read_body(payload)?),
        kind::INVENTORY_DELTA => Message::InventoryDelta(read_body(payload)?),
        kind::INVENTORY_ACK => Message::InventoryAck(read_body(payload)?),
        kind::INVENTORY_RESYNC => Message::InventoryResync(read_body(payload)?),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

fn read_body<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::new(payload);
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    // Trailing bytes inside a frame mean the sender and we disagree about the frame.
    if de.get_ref().is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::Malformed(
            "trailing bytes after message".into(),
        ))
    }
}

/// One frame as received: its kind byte and its encoded body.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub kind: u8,
    pub body: bytes::Bytes,
}

impl RawFrame {
    pub fn decode(&self) -> Result<Message, DecodeError> {
        decode_body(self.kind, &self.body)
    }
}

/// Incremental decoder: push bytes as they arrive, pull whole messages.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// How many more bytes the decoder wants before it can yield the next frame; at least 1.
    /// Callers use it to cap each read so a peer cannot make us buffer more than one frame.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let len = frame_len(&self.buf);
        (4 + len).saturating_sub(self.buf.len()).max(1)
    }

    /// The kind byte of the next frame once its header has arrived. Lets a receiver pick the
    /// limit for a stream from its first frame (see [`FrameDecoder::set_max`]).
    pub fn peek_kind(&self) -> Option<u8> {
        (self.buf.len() >= HEADER_LEN).then(|| self.buf[4])
    }

    /// The whole size (header and body) of the next frame once its header has arrived, checked
    /// against the limit: what a receiver reserves before it reads the body.
    pub fn announced(&self) -> Result<Option<usize>, DecodeError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = frame_len(&self.buf);
        if len == 0 {
            return Err(DecodeError::Malformed("zero-length frame".into()));
        }
        if len - 1 > self.max {
            return Err(DecodeError::Oversized {
                len: len - 1,
                max: self.max,
            });
        }
        Ok(Some(4 + len))
    }

    /// Changes the frame size limit for the frames still to come.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Next whole message, `Ok(None)` if more bytes are needed. After an error the stream is
    /// unusable: the caller closes it.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        match self.next_frame()? {
            Some(frame) => frame.decode().map(Some),
            None => Ok(None),
        }
    }

    /// Next whole frame, not yet decoded; for receivers that keep the encoded body (the
    /// collector stores a batch as the bytes it received).
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, DecodeError> {
        let Some(total) = self.announced()? else {
            return Ok(None);
        };
        if self.buf.len() < total {
            return Ok(None);
        }
        let len = total - 4;
        self.buf.advance(4);
        let mut body = self.buf.split_to(len);
        let kind = body[0];
        body.advance(1);
        Ok(Some(RawFrame {
            kind,
            body: body.freeze(),
        }))
    }

    /// Call at end of stream: an unfinished frame is an error.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = if self.buf.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            4 + frame_len(&self.buf)
        };
        Err(DecodeError::Truncated {
            have: self.buf.len(),
            need,
        })
    }
}

fn frame_len(buf: &[u8]) -> usize {
    u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    fn batch(seq: u64) -> Message {
        Message::Batch(Batch {
            seq,
            samples: vec![Sample {
                ts_ms: 1_700_000_000_000,
                name: "filesystem_used_ratio".into(),
                labels: vec![("mountpoint".into(), "/".into())],
                value: 0.5,
            }],
        })
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut out = Vec::new();
        // Byte by byte: the worst split a network can produce.
        for b in bytes {
            dec.push(&[*b]);
            while let Some(m) = dec.next_message()? {
                out.push(m);
            }
        }
        dec.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trip_every_kind() {
        let msgs = vec![
            Message::Enroll(Enroll {
                token: "t".into(),
                csr_pem: "csr".into(),
                hostname: "h".into(),
                version: "0.1.0".into(),
            }),
            Message::Enrolled(Enrolled {
                agent_id: "a".into(),
                cert_pem: "c".into(),
                ca_pem: "ca".into(),
            }),
            Message::Hello(Hello {
                agent_id: "a".into(),
                hostname: "h".into(),
                version: "0.1.0".into(),
                capabilities: vec!["metrics.v1".into()],
                interval_ms: 1000,
            }),
            Message::Welcome(Welcome {
                version: "0.1.0".into(),
                capabilities: vec![],
                last_seq: Some(7),
                settings: Settings {
                    interval_ms: Some(5000),
                },
            }),
            Message::Settings(Settings { interval_ms: None }),
            batch(42),
            Message::Ack(Ack { seq: 42 }),
            Message::Goodbye(Goodbye {
                reason: "shutdown".into(),
            }),
            Message::Error(ErrorMsg {
                code: "enroll_refused".into(),
                message: "token expired".into(),
            }),
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            encode_into(m, &mut bytes, DEFAULT_MAX_FRAME).expect("encode");
        }
        assert_eq!(decode_all(&bytes).expect("decode"), msgs);
    }

    fn check_err(bytes: &[u8], reason: &str) {
        let err = decode_all(bytes).expect_err("must be rejected");
        assert_eq!(err.reason(), reason, "{err}");
    }

    #[test]
    fn rejects_bad_frames() {
        let good = encode(&batch(1)).expect("encode");
        // truncated inside the payload and inside the header
        check_err(&good[..good.len() - 3], "truncated");
        check_err(&good[..3], "truncated");
        // garbage payload
        check_err(&[0, 0, 0, 4, kind::BATCH, 0xc1, 0xff, 0x00], "malformed");
        // unknown kind
        check_err(&[0, 0, 0, 2, 200, 0x80], "unknown_kind");
        // zero length
        check_err(&[0, 0, 0, 0, 0], "malformed");
        // oversized: rejected from the header alone, before the payload arrives
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0, 0, 1, 0, kind::BATCH]);
        assert_eq!(
            dec.next_message()
                .map(|_| ())
                .expect_err("oversized")
                .reason(),
            "oversized"
        );
        // right kind, wrong shape: an Ack body where a Batch is expected
        let mut ack = encode(&Message::Ack(Ack { seq: 1 })).expect("encode");
        ack[4] = kind::BATCH;
        check_err(&ack, "malformed");
        // trailing bytes inside the frame
        let mut long = encode(&Message::Ack(Ack { seq: 1 })).expect("encode");
        long.push(0);
        let n = (long.len() - 4) as u32;
        long[..4].copy_from_slice(&n.to_be_bytes());
        check_err(&long, "malformed");
    }

    /// Found by the `inventory_delta` fuzz target: an attribute nested deeper than serde_json
    /// reads back (128 levels) was decoded (rmp_serde allows 1,024), stored, and then every read
    /// of the CI failed (the API answered 500, reconciliation took it for no attributes). Near
    /// 1,000 levels a debug build also overflowed a 2 MiB thread's stack (a tokio worker's).
    #[test]
    fn nesting_is_bounded() {
        use crate::inventory::{Ci, Inventory};
        let nested = |levels: usize| {
            let mut v = serde_json::json!(1);
            for _ in 0..levels {
                v = serde_json::json!([v]);
            }
            let inventory = Inventory {
                cis: vec![Ci::new("package", "a:amd64", "a").attr("x", v)],
                ..Inventory::default()
            };
            encode_body(&Message::InventorySnapshot(InventorySnapshot {
                version: 1,
                ts_ms: 0,
                inventory,
            }))
            .expect("encode")
        };
        let body = nested(MAX_DEPTH - 6);
        assert!(decode_body(kind::INVENTORY_SNAPSHOT, &body).is_ok());
        for levels in [MAX_DEPTH, 200, 1000] {
            let err = decode_body(kind::INVENTORY_SNAPSHOT, &nested(levels)).expect_err("too deep");
            assert_eq!(err.reason(), "malformed", "{levels}: {err}");
        }
    }

    #[test]
    fn a_frame_announces_its_size_once_its_header_is_in() {
        let bytes = encode(&batch(1)).expect("encode");
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.push(&bytes[..HEADER_LEN - 1]);
        assert_eq!(dec.announced().expect("fine"), None);
        dec.push(&bytes[HEADER_LEN - 1..HEADER_LEN]);
        assert_eq!(dec.announced().expect("fine"), Some(bytes.len()));
        assert_eq!(dec.wanted(), bytes.len() - HEADER_LEN);
        // An oversized frame is refused from its header, before any of its body is read.
        let mut small = FrameDecoder::new(4);
        small.push(&bytes[..HEADER_LEN]);
        assert!(matches!(
            small.announced(),
            Err(DecodeError::Oversized { .. })
        ));
    }

    #[test]
    fn encoder_enforces_limit() {
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            encode_into(&batch(1), &mut out, 8),
            Err(EncodeError::Oversized { .. })
        ));
        assert_eq!(
            out,
            vec![1, 2, 3],
            "a failed encode leaves the buffer as it was"
        );
    }

    /// The compatibility rule of `proto`: a frame from the previous minor version (fewer fields)
    /// and one from the next (extra fields) both decode.
    #[test]
    fn minor_versions_interoperate() {
        #[derive(serde::Serialize)]
        struct HelloPrev {
            agent_id: String,
            hostname: String,
            version: String,
        }
        #[derive(serde::Serialize)]
        struct HelloNext {
            agent_id: String,
            hostname: String,
            version: String,
            capabilities: Vec<String>,
            interval_ms: u64,
            kernel: String,
        }
        let frame = |body: Vec<u8>| {
            let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            f.push(kind::HELLO);
            f.extend(body);
            f
        };
        let prev = rmp_serde::to_vec_named(&HelloPrev {
            agent_id: "a".into(),
            hostname: "h".into(),
            version: "0.0.9".into(),
        })
        .expect("encode");
        let next = rmp_serde::to_vec_named(&HelloNext {
            agent_id: "a".into(),
            hostname: "h".into(),
            version: "0.2.0".into(),
            capabilities: vec!["metrics.v1".into(), "metrics.v2".into()],
            interval_ms: 1000,
            kernel: "6.1".into(),
        })
        .expect("encode");
        let got = decode_all(&frame(prev)).expect("previous shape decodes");
        assert!(
            matches!(&got[0], Message::Hello(h) if h.capabilities.is_empty() && h.interval_ms == 0)
        );
        let got = decode_all(&frame(next)).expect("next shape decodes");
        assert!(
            matches!(&got[0], Message::Hello(h) if h.version == "0.2.0" && h.interval_ms == 1000)
        );
    }
}
