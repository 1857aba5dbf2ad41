//! Who connected to a member: the process owning the peer's socket, found
//! through /proc (Linux), so a test can tell mongotap's connections from a
//! driver's own.

use std::net::SocketAddr;

/// `/proc/net/tcp`'s form of an IPv4 address: the address as a
/// little-endian u32 and the port, both in upper-case hex.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The process owning the TCP socket bound to `local` and connected to
/// `remote` (Linux: its inode in /proc/net/tcp, then every process's fds).
pub fn socket_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (l, r) = (proc_addr(local)?, proc_addr(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // f[1] local address, f[2] remote address, f[9] inode
        (f.len() > 9 && f[1] == l && f[2] == r && f[9] != "0").then(|| f[9].to_owned())
    })?;
    let target = format!("socket:[{inode}]");
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        let owns = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == target));
        if owns {
            return Some(pid);
        }
    }
    None
}
