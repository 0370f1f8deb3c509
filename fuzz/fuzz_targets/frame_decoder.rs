//! `FrameDecoder` fed a byte stream in arbitrary chunks, as a receiver does (never more than
//! `wanted()` at a time), against a plain reference reading of the same stream: the same frames,
//! the same error, the same leftover, whatever the split; never more than one frame buffered;
//! every frame that decodes to a message round-trips (`check_round_trip`).
//!
//! Input: `[limit selector][split count n][n chunk lengths][stream...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_shared::codec::{
    DecodeError, FrameDecoder, DEFAULT_MAX_FRAME, HEADER_LEN, MAX_INVENTORY_FRAME,
};

/// What the reference reading of a whole stream gives.
#[derive(Debug, PartialEq)]
struct Reading {
    frames: Vec<(u8, Vec<u8>)>,
    error: Option<&'static str>,
    leftover: usize,
}

fn reference(stream: &[u8], max: usize) -> Reading {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < HEADER_LEN {
            return Reading {
                frames,
                error: None,
                leftover: rest.len(),
            };
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 {
            return Reading {
                frames,
                error: Some("malformed"),
                leftover: 0,
            };
        }
        if len - 1 > max {
            return Reading {
                frames,
                error: Some("oversized"),
                leftover: 0,
            };
        }
        if rest.len() < 4 + len {
            return Reading {
                frames,
                error: None,
                leftover: rest.len(),
            };
        }
        frames.push((rest[4], rest[5..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
}

fn limit(selector: u8) -> usize {
    match selector % 4 {
        0 => DEFAULT_MAX_FRAME,
        1 => MAX_INVENTORY_FRAME,
        2 => usize::from(selector >> 2),
        _ => usize::from(selector >> 2) * 64,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let Some((&n, data)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 32).min(data.len());
    let (splits, stream) = data.split_at(n);
    let max = limit(selector);
    let want = reference(stream, max);

    let mut dec = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut error: Option<DecodeError> = None;
    let mut fed = 0usize;
    let mut chunks = splits
        .iter()
        .map(|&s| usize::from(s) + 1)
        .chain(std::iter::repeat(usize::MAX));
    'feed: while fed < stream.len() {
        let chunk = chunks.next().unwrap_or(usize::MAX).min(stream.len() - fed);
        let end = fed + chunk;
        while fed < end {
            let wanted = dec.wanted();
            assert!(wanted >= 1, "wanted() is at least 1");
            let take = wanted.min(end - fed);
            dec.push(&stream[fed..fed + take]);
            fed += take;
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        assert!(f.body.len() <= max, "a frame over the limit was yielded");
                        if let Ok(m) = f.decode() {
                            assert_eq!(m.kind(), f.kind);
                            vigil_fuzz::check_round_trip(&m);
                        }
                        frames.push((f.kind, f.body.to_vec()));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'feed;
                    }
                }
            }
            // A receiver that reads only what is wanted holds at most one frame (its header,
            // kind byte and body).
            let buffered = fed - frames.iter().map(|(_, b)| 4 + 1 + b.len()).sum::<usize>();
            assert!(
                buffered <= HEADER_LEN + max,
                "buffered {buffered} bytes with a limit of {max}"
            );
        }
    }
    let leftover = if error.is_some() {
        0
    } else {
        fed - frames.iter().map(|(_, b)| 4 + 1 + b.len()).sum::<usize>()
    };
    let got = Reading {
        frames,
        error: error.as_ref().map(DecodeError::reason),
        leftover,
    };
    assert_eq!(got, want);
    if got.error.is_none() {
        match dec.finish() {
            Ok(()) => assert_eq!(got.leftover, 0),
            Err(e) => {
                assert_eq!(e.reason(), "truncated");
                assert!(got.leftover > 0);
            }
        }
    }
});
