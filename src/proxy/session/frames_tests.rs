use super::*;
use bson::rawdoc;
use mongotap_proto::{op_msg, MAX_MESSAGE_LEN};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncWriteExt, ReadBuf};

/// A stream that returns exactly the chunks it was given, one per read,
/// then EOF: the reads a TCP socket might deliver.
struct Chunks(VecDeque<Vec<u8>>);

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut chunk) = self.0.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn msg(id: i32, pad: usize) -> Vec<u8> {
    op_msg::encode(
        id,
        0,
        0,
        &rawdoc! { "ping": 1, "pad": "x".repeat(pad) },
        &[],
    )
}

fn reader<R: AsyncRead + Unpin>(r: R, side: Side) -> FrameReader<R> {
    FrameReader::new(r, side, MAX_MESSAGE_LEN, Duration::from_secs(60))
}

/// A client-side reader over an in-memory pipe, and the pipe's other end
/// to write the client's bytes into.
fn client_over_duplex(
    frame_timeout: Duration,
) -> (
    tokio::io::DuplexStream,
    FrameReader<tokio::io::DuplexStream>,
) {
    let (peer, stream) = tokio::io::duplex(64 * 1024);
    let reader = FrameReader::new(stream, Side::Client, MAX_MESSAGE_LEN, frame_timeout);
    (peer, reader)
}

fn chunked(stream: &[u8], sizes: &[usize]) -> Chunks {
    let mut chunks = VecDeque::new();
    let mut at = 0;
    for &n in sizes.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + n).min(stream.len());
        chunks.push_back(stream[at..end].to_vec());
        at = end;
    }
    Chunks(chunks)
}

/// Reads batches to EOF: the frames seen in each batch.
async fn batches<R: AsyncRead + Unpin>(mut r: FrameReader<R>) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(batch) = r.next_batch().await.expect("valid stream") {
        out.push(frame::frames(&batch).map(|(_, f)| f.to_vec()).collect());
    }
    out
}

#[tokio::test]
async fn merged_frames_come_out_as_one_batch() {
    let frames = vec![msg(1, 10), msg(2, 3000), msg(3, 0)];
    let got = batches(reader(
        chunked(&frames.concat(), &[usize::MAX]),
        Side::Client,
    ))
    .await;
    assert_eq!(got, vec![frames]);
}

#[tokio::test]
async fn split_frames_are_put_back_together() {
    let frames = vec![msg(1, 10), msg(2, 40_000), msg(3, 0)];
    let stream = frames.concat();
    for sizes in [&[1][..], &[7], &[15, 1], &[4096], &[30_000, 3]] {
        let got: Vec<Vec<u8>> = batches(reader(chunked(&stream, sizes), Side::Upstream))
            .await
            .concat();
        assert!(got == frames, "reads of {sizes:?}: frames differ");
    }
    // Split mid-frame: the whole frames of a read come out together and
    // the partial one waits for its rest (small frames: one read each).
    let frames = [msg(1, 10), msg(2, 3000), msg(3, 0)];
    let stream = frames.concat();
    let cut = frames[0].len() + frames[1].len() + 5;
    let got = batches(reader(
        Chunks(VecDeque::from([
            stream[..cut].to_vec(),
            stream[cut..].to_vec(),
        ])),
        Side::Client,
    ))
    .await;
    assert_eq!(got, vec![frames[..2].to_vec(), frames[2..].to_vec()]);
}

#[tokio::test]
async fn a_batch_is_split_off_the_read_buffer_without_copying() {
    let stream = [msg(1, 10), msg(2, 20)].concat();
    let mut r = reader(chunked(&stream, &[usize::MAX]), Side::Client);
    let buffer = r.buf.as_ptr();
    let batch = r.next_batch().await.expect("read").expect("a batch");
    assert_eq!(
        batch.as_ptr(),
        buffer,
        "the batch is the read buffer itself"
    );
    assert_eq!(&batch[..], &stream[..]);
}

#[tokio::test]
async fn a_truncated_frame_at_eof_is_an_error_and_a_clean_eof_is_not() {
    let m = msg(1, 100);
    let mut r = reader(Chunks(VecDeque::from([m[..50].to_vec()])), Side::Upstream);
    match r.next_batch().await {
        Err(SessionError::Decode {
            side: Side::Upstream,
            source: DecodeError::Truncated { needed, left, .. },
        }) => assert_eq!((needed, left), (m.len(), 50)),
        other => panic!("expected a truncated frame, got {other:?}"),
    }
    let mut r = reader(Chunks(VecDeque::from([m.clone()])), Side::Upstream);
    assert_eq!(&r.next_batch().await.unwrap().unwrap()[..], &m[..]);
    assert!(r.next_batch().await.unwrap().is_none());
}

#[tokio::test]
async fn an_oversized_claim_is_refused_before_it_is_read_or_reserved() {
    let mut m = msg(1, 10);
    m[..4].copy_from_slice(&(1_000_000i32).to_le_bytes());
    let mut r = FrameReader::new(
        Chunks(VecDeque::from([m])),
        Side::Upstream,
        64 * 1024,
        Duration::from_secs(60),
    );
    match r.next_batch().await {
        Err(SessionError::Decode {
            source: DecodeError::LengthTooLarge { claimed, limit },
            ..
        }) => assert_eq!((claimed, limit), (1_000_000, 64 * 1024)),
        other => panic!("expected a refused length, got {other:?}"),
    }
    assert!(
        r.buf.capacity() <= frame::READ_CHUNK,
        "grew towards the claim"
    );
}

#[tokio::test]
async fn good_frames_before_a_bad_one_come_out_first() {
    let good = msg(1, 10);
    let mut bad = msg(2, 10);
    bad[..4].copy_from_slice(&8i32.to_le_bytes());
    let mut r = reader(
        chunked(&[good.clone(), bad].concat(), &[usize::MAX]),
        Side::Client,
    );
    assert_eq!(&r.next_batch().await.unwrap().unwrap()[..], &good[..]);
    assert!(matches!(
        r.next_batch().await,
        Err(SessionError::Decode {
            side: Side::Client,
            source: DecodeError::LengthTooSmall { claimed: 8 }
        })
    ));
}

#[tokio::test]
async fn a_client_speaking_http_is_named() {
    let mut r = reader(
        Chunks(VecDeque::from([
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()
        ])),
        Side::Client,
    );
    assert!(matches!(
        r.next_batch().await,
        Err(SessionError::Decode {
            source: DecodeError::HttpOnMongoPort { .. },
            ..
        })
    ));
}

#[tokio::test]
async fn a_frame_that_does_not_complete_in_time_is_a_slow_sender() {
    let m = msg(1, 100);
    let (mut peer, mut r) = client_over_duplex(Duration::from_millis(200));
    peer.write_all(&m[..30]).await.unwrap();
    let started = Instant::now();
    let trickle = async {
        // Bytes keep coming, but the frame never completes.
        for i in 30..60 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.write_all(&m[i..i + 1]).await.unwrap();
        }
    };
    let read = async {
        let result = r.next_batch().await;
        (result, started.elapsed())
    };
    let ((result, took), ()) = tokio::join!(read, trickle);
    match result {
        Err(SessionError::FrameTimeout { have, need, ms, .. }) => {
            assert_eq!((need, ms), (m.len(), 200));
            assert!((30..60).contains(&have), "have {have}");
        }
        other => panic!("expected a frame timeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(200),
        "timed out after {took:?}"
    );
    assert!(
        took < Duration::from_millis(1_000),
        "timed out after {took:?}"
    );
}

#[tokio::test]
async fn waiting_for_a_new_frame_has_no_deadline_and_a_cancelled_read_loses_nothing() {
    let m = msg(1, 100);
    let (mut peer, mut r) = client_over_duplex(Duration::from_millis(50));
    // Idle between frames: past the frame timeout is no error.
    let idle = tokio::time::timeout(Duration::from_millis(150), r.next_batch()).await;
    assert!(idle.is_err(), "an idle stream returned {idle:?}");
    // A call cancelled after reading part of a frame keeps those bytes.
    peer.write_all(&m[..40]).await.unwrap();
    let part = tokio::time::timeout(Duration::from_millis(20), r.next_batch()).await;
    assert!(part.is_err(), "a partial frame returned {part:?}");
    assert_eq!(r.buffered(), 40);
    peer.write_all(&m[40..]).await.unwrap();
    let batch = r.next_batch().await.unwrap().unwrap();
    assert_eq!(&batch[..], &m[..]);
}
