//! `mongotap capture export`: capture files to a pcapng that Wireshark and
//! tshark open as MongoDB.
//!
//! Two encodings (`--link`):
//!
//! - `upper-pdu` (the default): link type 252, Wireshark's "exported PDU".
//!   Each record is one packet whose tags name the `mongo` dissector and
//!   carry the client's address and the server's, so Wireshark decodes it
//!   with no option. A frame longer than [`UPPER_PDU_SNAP`] is cut there
//!   (Wireshark refuses larger packets); its original length is kept.
//! - `tcp`: synthetic Ethernet/IP/TCP streams, one per captured connection,
//!   between the client's address and the server's (port 27017 unless
//!   `--server` says otherwise). A stream opens with a three-way handshake at
//!   its first record, sequence and acknowledgement numbers advance by the
//!   bytes sent each way, and frames longer than a segment are cut into
//!   several, which Wireshark reassembles. Wireshark 4.0 hands port 27017 to
//!   its TLS dissector, so open these with
//!   `tshark -d tcp.port==27017,mongo -r OUT.pcapng`.
//!
//! Every packet carries its record's wall-clock time (ns resolution).
//! Redacted records keep their marker body and get a packet comment.

use crate::capture;
use etherparse::PacketBuilder;
use mongotap_proto::capture::{Direction, Record};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Payload per synthetic TCP segment: the largest that fits an IPv4 total
/// length (65,535) with both headers, rounded down.
const SEGMENT: usize = 65_000;
/// Wireshark's largest packet (WTAP_MAX_PACKET_SIZE_STANDARD).
pub const UPPER_PDU_SNAP: usize = 262_144;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const WINDOW: u16 = 65_535;
const TTL: u8 = 64;

/// Exported-PDU tags (Wireshark's `exported_pdu.h`).
mod tag {
    pub const END: u16 = 0;
    pub const DISSECTOR_NAME: u16 = 12;
    pub const IPV4_SRC: u16 = 20;
    pub const IPV4_DST: u16 = 21;
    pub const IPV6_SRC: u16 = 22;
    pub const IPV6_DST: u16 = 23;
    pub const PORT_TYPE: u16 = 24;
    pub const SRC_PORT: u16 = 25;
    pub const DST_PORT: u16 = 26;
    /// `EXP_PDU_PT_TCP`.
    pub const PORT_TYPE_TCP: u32 = 2;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Link {
    /// Link type 252 with the `mongo` dissector named in each packet:
    /// Wireshark decodes it with no option.
    UpperPdu,
    /// Ethernet/IP/TCP streams; Wireshark 4.0 needs `-d tcp.port==27017,mongo`.
    Tcp,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Capture files (PATH-000001.mtcap ...), or the capture base path
    /// (capture.path), which stands for all its files in order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The pcapng file to write.
    #[arg(long)]
    pcap: PathBuf,
    /// How packets are encapsulated.
    #[arg(long, value_enum, default_value = "upper-pdu")]
    link: Link,
    /// Server address shown in the packets (captures record only the
    /// client's).
    #[arg(long, default_value = "127.0.0.1:27017")]
    server: SocketAddr,
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("no capture files found for {0}")]
    NoFiles(String),
    #[error("{0}")]
    Read(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Pcap {
        path: String,
        source: pcap_file::PcapError,
    },
    #[error("cannot build a packet: {0}")]
    Packet(String),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}

/// What an export wrote.
#[derive(Debug)]
pub struct Summary {
    pub files: usize,
    pub records: u64,
    pub connections: usize,
    pub packets: u64,
}

pub fn run(args: &ExportArgs) -> Result<(), ExportError> {
    let s = export(&args.files, &args.pcap, args.link, args.server)?;
    let mut out = format!(
        "{}: {} packets from {} records ({} connections, {} capture files)\n",
        args.pcap.display(),
        s.packets,
        s.records,
        s.connections,
        s.files
    );
    if args.link == Link::Tcp {
        out.push_str(&format!(
            "open with: tshark -d tcp.port=={},mongo -r {}\n",
            args.server.port(),
            args.pcap.display()
        ));
    }
    crate::stdout::print(&out).map_err(ExportError::Stdout)
}

pub fn export(
    inputs: &[PathBuf],
    out: &Path,
    link: Link,
    server: SocketAddr,
) -> Result<Summary, ExportError> {
    let files = crate::capture::capture_files(inputs).map_err(ExportError::Read)?;
    if files.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(ExportError::NoFiles(names.join(", ")));
    }
    let path = out.display().to_string();
    let file = std::fs::File::create(out).map_err(|source| ExportError::Write {
        path: path.clone(),
        source,
    })?;
    let pcap_err = |source| ExportError::Pcap {
        path: path.clone(),
        source,
    };
    let mut writer = PcapNgWriter::new(BufWriter::new(file)).map_err(pcap_err)?;
    let interface = InterfaceDescriptionBlock {
        linktype: match link {
            Link::UpperPdu => DataLink::WIRESHARK_UPPER_PDU,
            Link::Tcp => DataLink::ETHERNET,
        },
        snaplen: 0,
        options: vec![
            InterfaceDescriptionOption::IfName(Cow::Borrowed("mongotap")),
            InterfaceDescriptionOption::IfDescription(Cow::Borrowed(
                "MongoDB traffic rebuilt from a mongotap capture",
            )),
            // Nanosecond timestamps, as recorded.
            InterfaceDescriptionOption::IfTsResol(9),
        ],
    };
    writer.write_pcapng_block(interface).map_err(pcap_err)?;

    let mut streams = Streams::new(link, server);
    let mut failed: Option<ExportError> = None;
    let records = capture::read_files(&files, |r| {
        if failed.is_some() {
            return;
        }
        let result = streams.packets(r).and_then(|packets| {
            for p in packets {
                writer.write_pcapng_block(p).map_err(pcap_err)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            failed = Some(e);
        }
    })
    .map_err(ExportError::Read)?;
    if let Some(e) = failed {
        return Err(e);
    }
    writer
        .into_inner()
        .flush()
        .map_err(|source| ExportError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(Summary {
        files: files.len(),
        records,
        connections: streams.by_conn.len(),
        packets: streams.packets,
    })
}

/// One connection's endpoints and, for TCP, the next sequence number each
/// side sends.
struct Stream {
    client: SocketAddr,
    server: SocketAddr,
    client_seq: u32,
    server_seq: u32,
}

struct Streams {
    link: Link,
    server: SocketAddr,
    by_conn: HashMap<u64, Stream>,
    packets: u64,
}

impl Streams {
    fn new(link: Link, server: SocketAddr) -> Streams {
        Streams {
            link,
            server,
            by_conn: HashMap::new(),
            packets: 0,
        }
    }

    /// The packets for one record: for TCP, the handshake first when the
    /// record opens its connection, then the frame in segments.
    fn packets(
        &mut self,
        r: &Record<'_>,
    ) -> Result<Vec<EnhancedPacketBlock<'static>>, ExportError> {
        let ts = Duration::from_nanos(r.unix_ns.max(0) as u64);
        let tcp = self.link == Link::Tcp;
        let mut out = Vec::new();
        let stream = match self.by_conn.entry(r.conn) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let (client, server) = endpoints(r.client, r.conn, self.server);
                // Distinct initial sequence numbers per connection, so two
                // streams never look like retransmissions of each other.
                let c = (r.conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
                let s = c.wrapping_add(0x4000_0000);
                let (c1, s1) = (c.wrapping_add(1), s.wrapping_add(1));
                if tcp {
                    let (up, down) = ((client, server), (server, client));
                    out.push(segment(up, true, c, 0, Flags::Syn, &[], ts)?);
                    out.push(segment(down, false, s, c1, Flags::SynAck, &[], ts)?);
                    out.push(segment(up, true, c1, s1, Flags::Ack, &[], ts)?);
                }
                e.insert(Stream {
                    client,
                    server,
                    client_seq: c1,
                    server_seq: s1,
                })
            }
        };
        let from_client = r.direction == Direction::ToServer;
        let ends = if from_client {
            (stream.client, stream.server)
        } else {
            (stream.server, stream.client)
        };
        let first = out.len();
        if tcp {
            for chunk in r.frame.chunks(SEGMENT) {
                let (seq, ack) = if from_client {
                    (stream.client_seq, stream.server_seq)
                } else {
                    (stream.server_seq, stream.client_seq)
                };
                out.push(segment(
                    ends,
                    from_client,
                    seq,
                    ack,
                    Flags::PshAck,
                    chunk,
                    ts,
                )?);
                let next = seq.wrapping_add(chunk.len() as u32);
                if from_client {
                    stream.client_seq = next;
                } else {
                    stream.server_seq = next;
                }
            }
        } else {
            out.push(upper_pdu(ends, r.frame, ts));
        }
        if r.redacted {
            for p in &mut out[first..] {
                p.options
                    .push(EnhancedPacketOption::Comment(Cow::Owned(format!(
                        "mongotap conn {}: redacted before capture (body replaced by a marker)",
                        r.conn
                    ))));
            }
        }
        self.packets += out.len() as u64;
        Ok(out)
    }
}

/// The client's recorded address and the server address, in one address
/// family. An address that does not parse, or equals the server's, gets a
/// stand-in derived from the connection id.
fn endpoints(client: &str, conn: u64, server: SocketAddr) -> (SocketAddr, SocketAddr) {
    let client = client
        .parse::<SocketAddr>()
        .ok()
        .filter(|c| *c != server)
        .unwrap_or_else(|| {
            let b = conn.to_be_bytes();
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, b[5], b[6], b[7].max(1))),
                40_000 + (conn % 20_000) as u16,
            )
        });
    match (client.ip(), server.ip()) {
        (IpAddr::V6(_), IpAddr::V4(s)) => (
            client,
            SocketAddr::new(IpAddr::V6(s.to_ipv6_mapped()), server.port()),
        ),
        (IpAddr::V4(c), IpAddr::V6(_)) => (
            SocketAddr::new(IpAddr::V6(c.to_ipv6_mapped()), client.port()),
            server,
        ),
        _ => (client, server),
    }
}

/// One exported-PDU packet: tags naming the `mongo` dissector and the
/// addresses, then the frame (cut at [`UPPER_PDU_SNAP`]).
fn upper_pdu(
    (src, dst): (SocketAddr, SocketAddr),
    frame: &[u8],
    ts: Duration,
) -> EnhancedPacketBlock<'static> {
    fn put(out: &mut Vec<u8>, tag: u16, value: &[u8]) {
        // Values are zero-padded to 4 bytes; the length counts the padding.
        let padded = value.len().div_ceil(4) * 4;
        out.extend_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(&(padded as u16).to_be_bytes());
        out.extend_from_slice(value);
        out.resize(out.len() + padded - value.len(), 0);
    }
    let mut data = Vec::with_capacity(96 + frame.len().min(UPPER_PDU_SNAP));
    put(&mut data, tag::DISSECTOR_NAME, b"mongo");
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(&mut data, tag::IPV4_SRC, &s.octets());
            put(&mut data, tag::IPV4_DST, &d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            put(&mut data, tag::IPV6_SRC, &v6(s));
            put(&mut data, tag::IPV6_DST, &v6(d));
        }
    }
    put(&mut data, tag::PORT_TYPE, &tag::PORT_TYPE_TCP.to_be_bytes());
    put(
        &mut data,
        tag::SRC_PORT,
        &u32::from(src.port()).to_be_bytes(),
    );
    put(
        &mut data,
        tag::DST_PORT,
        &u32::from(dst.port()).to_be_bytes(),
    );
    put(&mut data, tag::END, &[]);
    let original_len = data.len() + frame.len();
    let room = UPPER_PDU_SNAP.saturating_sub(data.len());
    data.extend_from_slice(&frame[..frame.len().min(room)]);
    let mut block = EnhancedPacketBlock::default();
    block.timestamp = ts;
    block.original_len = original_len.min(u32::MAX as usize) as u32;
    block.data = Cow::Owned(data);
    block
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
    PshAck,
}

/// One Ethernet/IP/TCP packet. `from_client` picks the MAC addresses,
/// which stay fixed per side.
fn segment(
    (src, dst): (SocketAddr, SocketAddr),
    from_client: bool,
    seq: u32,
    ack: u32,
    flags: Flags,
    payload: &[u8],
    ts: Duration,
) -> Result<EnhancedPacketBlock<'static>, ExportError> {
    let link = if from_client {
        PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
    } else {
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
    };
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => link.ipv4(s.octets(), d.octets(), TTL),
        (IpAddr::V6(s), IpAddr::V6(d)) => link.ipv6(s.octets(), d.octets(), TTL),
        _ => return Err(ExportError::Packet("mixed address families".into())),
    };
    let tcp = ip.tcp(src.port(), dst.port(), seq, WINDOW);
    let tcp = match flags {
        Flags::Syn => tcp.syn(),
        Flags::SynAck => tcp.syn().ack(ack),
        Flags::Ack => tcp.ack(ack),
        Flags::PshAck => tcp.psh().ack(ack),
    };
    let mut data = Vec::with_capacity(tcp.size(payload.len()));
    tcp.write(&mut data, payload)
        .map_err(|e| ExportError::Packet(e.to_string()))?;
    let mut block = EnhancedPacketBlock::default();
    block.timestamp = ts;
    block.original_len = data.len() as u32;
    block.data = Cow::Owned(data);
    Ok(block)
}

#[cfg(test)]
mod tests;
