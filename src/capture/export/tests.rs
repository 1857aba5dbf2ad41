//! Unit tests for the pcapng encodings; tests/capture.rs has tshark read them.

use super::*;
use etherparse::{SlicedPacket, TransportSlice};

fn record<'a>(conn: u64, up: bool, frame: &'a [u8]) -> Record<'a> {
    Record {
        mono_ns: 1,
        unix_ns: 1_700_000_000_000_000_000,
        conn,
        direction: if up {
            Direction::ToServer
        } else {
            Direction::ToClient
        },
        redacted: false,
        client: "10.1.2.3:50000",
        frame,
    }
}

/// (source port, seq, ack, syn, payload length) of a TCP packet.
fn tcp(p: &EnhancedPacketBlock<'_>) -> (u16, u32, u32, bool, usize) {
    let s = SlicedPacket::from_ethernet(&p.data).unwrap();
    let Some(TransportSlice::Tcp(t)) = s.transport else {
        panic!("not TCP")
    };
    (
        t.source_port(),
        t.sequence_number(),
        t.acknowledgment_number(),
        t.syn(),
        t.payload().len(),
    )
}

#[test]
fn tcp_streams_have_consistent_sequence_numbers() {
    let server: SocketAddr = "127.0.0.1:27017".parse().unwrap();
    let mut s = Streams::new(Link::Tcp, server);
    let request = vec![7u8; 100];
    let reply = vec![8u8; 150_000];
    let first = s.packets(&record(9, true, &request)).unwrap();
    // Handshake, then one segment.
    assert_eq!(first.len(), 4);
    let (port, isn, _, syn, _) = tcp(&first[0]);
    assert!(syn);
    assert_eq!(port, 50000);
    let (port, sisn, ack, syn, _) = tcp(&first[1]);
    assert!(syn);
    assert_eq!((port, ack), (27017, isn.wrapping_add(1)));
    let (_, seq, ack, _, len) = tcp(&first[3]);
    assert_eq!(
        (seq, ack, len),
        (isn.wrapping_add(1), sisn.wrapping_add(1), 100)
    );

    // 150,000 bytes: three segments, each following the last.
    let down = s.packets(&record(9, false, &reply)).unwrap();
    assert_eq!(down.len(), 3);
    let mut next = sisn.wrapping_add(1);
    for p in &down {
        let (port, seq, ack, _, len) = tcp(p);
        assert_eq!((port, seq, ack), (27017, next, isn.wrapping_add(101)));
        next = next.wrapping_add(len as u32);
    }
    assert_eq!(next.wrapping_sub(sisn.wrapping_add(1)), 150_000);
    // The next request acknowledges the whole reply.
    let again = s.packets(&record(9, true, &request)).unwrap();
    let (_, seq, ack, _, _) = tcp(&again[0]);
    assert_eq!((seq, ack), (isn.wrapping_add(101), next));
    assert_eq!(s.packets, 4 + 3 + 1);
}

#[test]
fn upper_pdu_names_the_mongo_dissector_and_the_addresses() {
    let server: SocketAddr = "127.0.0.1:27017".parse().unwrap();
    let mut s = Streams::new(Link::UpperPdu, server);
    let frame = vec![1u8; 40];
    let p = s.packets(&record(3, false, &frame)).unwrap().remove(0);
    let d = &p.data;
    // Tag 12, length 8 ("mongo" padded), value.
    assert_eq!(&d[..4], &[0, 12, 0, 8]);
    assert_eq!(&d[4..12], b"mongo\0\0\0");
    // IPv4 source (the server: this record goes to the client).
    assert_eq!(&d[12..20], &[0, 20, 0, 4, 127, 0, 0, 1]);
    assert_eq!(&d[20..28], &[0, 21, 0, 4, 10, 1, 2, 3]);
    assert!(d.ends_with(&frame));
    assert_eq!(
        &d[d.len() - 44..d.len() - 40],
        &[0, 0, 0, 0],
        "end-of-options tag"
    );
    assert_eq!(p.original_len as usize, d.len());

    let big = vec![2u8; UPPER_PDU_SNAP + 10];
    let p = s.packets(&record(3, true, &big)).unwrap().remove(0);
    assert_eq!(p.data.len(), UPPER_PDU_SNAP);
    assert!(p.original_len as usize > UPPER_PDU_SNAP);
}

#[test]
fn unparseable_or_v6_clients_get_usable_endpoints() {
    let server: SocketAddr = "127.0.0.1:27017".parse().unwrap();
    let (c, s) = endpoints("not an address", 258, server);
    assert_eq!(c.ip(), IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)));
    assert_eq!(s, server);
    let (c, s) = endpoints("[::1]:4000", 1, server);
    assert!(c.is_ipv6() && s.is_ipv6());
    assert_eq!(s.port(), 27017);
}
