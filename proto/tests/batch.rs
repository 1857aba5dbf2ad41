//! Batches (`frame::split_batch`, `frame::frames`, `frame::reserve_next`):
//! what the proxy's forwarding path runs. Every whole frame of a read comes
//! out as one `Bytes`; split and merged reads, a bad length after good
//! frames, and growth towards a large claimed frame.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use bytes::BytesMut;
use common::{frame, mixed_messages, put_i32, Rng, MAX};
use mongotap_proto::frame::{frames, reserve_next, split_batch, MAX_GROWTH, READ_CHUNK};
use mongotap_proto::DecodeError;

/// Feeds `stream` in reads of `sizes`, collecting every batch; returns the
/// frames as the batches' iterators saw them and the number of batches.
fn feed_batches(stream: &[u8], sizes: impl IntoIterator<Item = usize>) -> (Vec<Vec<u8>>, usize) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut batches = 0;
    let mut sizes = sizes.into_iter();
    let mut pos = 0;
    while pos < stream.len() {
        let n = sizes
            .next()
            .unwrap_or(stream.len() - pos)
            .clamp(1, stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        if let Some(batch) = split_batch(&mut buf, MAX).expect("valid stream") {
            batches += 1;
            let mut next = 0;
            for (at, f) in frames(&batch) {
                assert_eq!(at, next, "offsets are contiguous");
                next = at + f.len();
                out.push(f.to_vec());
            }
            assert_eq!(next, batch.len(), "the batch holds whole frames only");
        }
    }
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    (out, batches)
}

#[test]
fn merged_reads_make_one_batch() {
    let messages = mixed_messages();
    let (got, batches) = feed_batches(&messages.concat(), [usize::MAX]);
    assert_eq!(got, messages);
    assert_eq!(batches, 1);
}

#[test]
fn split_reads_at_every_size() {
    let messages = mixed_messages();
    let stream = messages.concat();
    let (got, batches) = feed_batches(&stream, std::iter::repeat(1));
    assert_eq!(got, messages);
    assert_eq!(batches, messages.len(), "byte by byte: one frame per batch");
    for seed in 1..=50u64 {
        let mut rng = Rng::new(seed);
        let max = if seed % 2 == 0 { 40 } else { 70_000 };
        let sizes: Vec<usize> = (0..stream.len()).map(|_| rng.range(1, max)).collect();
        assert_eq!(feed_batches(&stream, sizes).0, messages, "seed {seed}");
    }
}

#[test]
fn a_truncated_frame_stays_in_the_buffer() {
    let messages = mixed_messages();
    for m in &messages {
        for cut in 0..m.len() {
            let mut buf = BytesMut::from(&m[..cut]);
            assert!(
                split_batch(&mut buf, MAX).unwrap().is_none(),
                "cut at {cut}"
            );
            assert_eq!(&buf[..], &m[..cut], "nothing consumed at {cut}");
        }
    }
    // Whole frames, then part of one: the whole ones come out, the part stays.
    let mut bytes = messages[..2].concat();
    bytes.extend_from_slice(&messages[2][..10]);
    let mut buf = BytesMut::from(&bytes[..]);
    let batch = split_batch(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(&batch[..], &messages[..2].concat()[..]);
    assert_eq!(&buf[..], &messages[2][..10]);
}

#[test]
fn a_bad_length_after_good_frames_is_reported_on_the_next_call() {
    let good = frame(2013, 1, 0, &[0; 8], 0);
    let mut bad = frame(2013, 2, 0, &[0; 8], 0);
    put_i32(&mut bad, 0, 1 << 30);
    let mut buf = BytesMut::from(&[good.clone(), good.clone(), bad.clone()].concat()[..]);
    let batch = split_batch(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(&batch[..], &[good.clone(), good].concat()[..]);
    let err = split_batch(&mut buf, MAX).unwrap_err();
    assert_eq!(
        err,
        DecodeError::LengthTooLarge {
            claimed: 1 << 30,
            limit: MAX.min(mongotap_proto::MAX_MESSAGE_LEN)
        }
    );
    assert_eq!(&buf[..], &bad[..], "the bad bytes are left for the error");
    // Too small a length is refused too.
    let mut tiny = BytesMut::from(&[8u8, 0, 0, 0, 1, 2, 3, 4][..]);
    assert_eq!(
        split_batch(&mut tiny, MAX).unwrap_err(),
        DecodeError::LengthTooSmall { claimed: 8 }
    );
}

#[test]
fn an_oversized_claim_is_refused_before_growing() {
    let mut m = frame(2013, 1, 0, &[0; 16], 0);
    put_i32(&mut m, 0, 1_000_000);
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&m);
    // Above the configured limit: an error, and nothing reserved.
    assert!(matches!(
        split_batch(&mut buf, 64 * 1024),
        Err(DecodeError::LengthTooLarge { .. })
    ));
    assert!(buf.capacity() <= 64, "capacity grew to {}", buf.capacity());
}

#[test]
fn growth_follows_the_claim_in_bounded_steps() {
    // No length known yet: a read chunk.
    let mut buf = BytesMut::new();
    reserve_next(&mut buf, MAX);
    assert!(buf.capacity() >= READ_CHUNK);
    // A 40 MB claim with 32 bytes in: one step of MAX_GROWTH, not 40 MB.
    let mut m = frame(2013, 1, 0, &[0; 16], 0);
    put_i32(&mut m, 0, 40_000_000);
    let mut buf = BytesMut::from(&m[..]);
    reserve_next(&mut buf, MAX);
    let cap = buf.capacity();
    assert!(cap >= m.len() + MAX_GROWTH, "room for the next step: {cap}");
    assert!(
        cap <= 2 * (m.len() + MAX_GROWTH),
        "grew past one step: {cap}"
    );
    // A small frame's rest: at least what is missing.
    let small = frame(2013, 1, 0, &[0; 3000], 0);
    let mut buf = BytesMut::from(&small[..20]);
    reserve_next(&mut buf, MAX);
    assert!(buf.capacity() >= small.len());
}
