//! Reading capture files back in tests, record by record.

use mongotap_proto::capture::{self as format, Direction};
use std::path::{Path, PathBuf};

/// One capture record, owned.
#[derive(Debug, Clone)]
pub struct Rec {
    pub mono_ns: u64,
    pub conn: u64,
    pub direction: Direction,
    pub redacted: bool,
    pub frame: Vec<u8>,
}

/// Every `*.mtcap` in `dir`, in name order.
pub fn capture_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read capture dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "mtcap"))
        .collect();
    files.sort();
    files
}

/// Every record of `files`, in order. Panics on a malformed file or a
/// partial last record (tests read files mongotap has closed).
pub fn read_records(files: &[PathBuf]) -> Vec<Rec> {
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).expect("read capture file");
        format::decode_header(&bytes).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut at = format::HEADER_LEN;
        while at < bytes.len() {
            let (r, used) = format::decode_record(&bytes[at..])
                .unwrap_or_else(|e| panic!("{} at {at}: {e}", f.display()))
                .unwrap_or_else(|| panic!("{} ends in a partial record", f.display()));
            out.push(Rec {
                mono_ns: r.mono_ns,
                conn: r.conn,
                direction: r.direction,
                redacted: r.redacted,
                frame: r.frame.to_vec(),
            });
            at += used;
        }
    }
    out
}
