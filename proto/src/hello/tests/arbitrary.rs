//! Arbitrary and mutated frames: the rewriter never panics, and whatever
//! it writes a client can read.

use super::*;
use proptest::prelude::*;

/// Valid hello frames in every encoding, for mutation.
fn hello_frames() -> Vec<Vec<u8>> {
    let hello = secondary_hello();
    let plain = msg(&hello, CHECKSUM_PRESENT);
    let mut frames = vec![plain.clone(), msg(&hello, 0)];
    for compressor in [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd] {
        frames.push(op_compressed::compress(&plain, compressor).expect("compresses"));
    }
    frames
}

const KINDS: [ReplyKind; 3] = [
    ReplyKind::Hello,
    ReplyKind::ReplSetGetStatus,
    ReplyKind::ReplSetGetConfig,
];

/// Whether a client can read every top-level value of the reply.
fn readable(frame: &[u8]) -> bool {
    let all_values = |d: &RawDocument| d.iter().all(|e| e.is_ok());
    with_message(frame, LIMIT, |_, _, m| match m {
        Message::Msg(m) => all_values(m.body),
        Message::Reply(r) => r.first().is_some_and(all_values),
        _ => false,
    })
    .unwrap_or(false)
}

/// Whatever the bytes, no panic; and a rewrite of a readable reply is
/// readable. (An element the rewriter does not own is copied as it is,
/// unreadable or not: the driver judges it, as it would without mongotap.)
fn never_panics(frame: &[u8]) {
    for kind in KINDS {
        if let Ok(Some(out)) = rewrite_reply(frame, kind, &mut Listeners::new(), LIMIT) {
            if readable(frame) {
                assert!(readable(&out), "{kind:?} wrote an unreadable frame");
            }
        }
    }
    let _ = frame_hello_facts(frame, LIMIT);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        never_panics(&bytes);
    }

    #[test]
    fn mutated_hello_frames_never_panic(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<proptest::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut frame = hello_frames().swap_remove(which);
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        if truncate {
            frame.truncate(cut.index(frame.len()));
        }
        never_panics(&frame);
    }
}
