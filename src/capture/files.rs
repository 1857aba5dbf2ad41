//! Reading capture files back: which files a base path names, in the
//! order they were written, and their records.

use mongotap_proto::capture::{self as format, Record};
use std::path::{Path, PathBuf};

/// The capture files `inputs` name (a base path stands for all its
/// files), in the order they were written: by the start time in each
/// file's header, then by name. Files given out of order are read in order.
pub fn capture_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut keyed = Vec::new();
    for path in expand(inputs) {
        let mut header = [0u8; format::HEADER_LEN];
        std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let start =
            format::decode_header(&header).map_err(|e| format!("{}: {e}", path.display()))?;
        keyed.push((start, path));
    }
    keyed.sort();
    keyed.dedup_by(|a, b| a.1 == b.1);
    Ok(keyed.into_iter().map(|(_, p)| p).collect())
}

/// Reads every record of the capture files, in order, into `f`.
pub fn read_files(paths: &[PathBuf], mut f: impl FnMut(&Record<'_>)) -> Result<u64, String> {
    let mut n = 0;
    for path in paths {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        format::decode_header(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut at = format::HEADER_LEN;
        while at < bytes.len() {
            match format::decode_record(&bytes[at..]) {
                Ok(Some((r, used))) => {
                    f(&r);
                    at += used;
                    n += 1;
                }
                // A file cut short (capture stopped by a crash) ends here.
                Ok(None) => break,
                Err(e) => return Err(format!("{}: at byte {at}: {e}", path.display())),
            }
        }
    }
    Ok(n)
}

/// Capture files for a base path or file list, sorted.
pub fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_file() {
            out.push(p.clone());
            continue;
        }
        let (dir, stem) = match (p.parent(), p.file_name()) {
            (Some(d), Some(s)) => (
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                },
                s.to_string_lossy().to_string(),
            ),
            _ => continue,
        };
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|e| {
                    e.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with(&format!("{stem}-")) && n.ends_with(".mtcap")
                    })
                })
                .collect();
            found.sort();
            out.extend(found);
        }
    }
    out
}
