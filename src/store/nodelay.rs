//! A workaround for sqlx 0.9.0, which stopped setting TCP_NODELAY on its connections: the
//! diff engine's bulk statements would each wait for a delayed ACK.

use std::os::fd::{BorrowedFd, RawFd};

use sqlx::PgConnection;

/// sqlx 0.9.0 stopped setting TCP_NODELAY (transact-rs/sqlx#4335, fixed upstream but not
/// released), so a statement whose parameters end in a part-filled TCP segment waits for
/// the server's delayed ACK, about 40 ms: measured, that was 90% of a 1k-agent batch and
/// half of a 10k one. Until sqlx sets it again the engine sets it on the connection it
/// applies through: the server names the client's port, and /proc maps that port to this
/// process's socket. Best effort: over a Unix socket, or without /proc, nothing changes.
/// Public so the benchmark's comparator runs on equally configured connections.
pub async fn disable_nagle(conn: &mut PgConnection) {
    let port: Option<i32> =
        sqlx::query_scalar("SELECT inet_client_port()").fetch_one(&mut *conn).await.ok().flatten();
    if let Some(fd) = port.and_then(|port| u16::try_from(port).ok()).and_then(socket_with_local_port) {
        // SAFETY: the descriptor is the socket of `conn`, which stays open while borrowed here.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        // Best effort, as above: a failure only leaves the delay in place.
        let _ = socket2::SockRef::from(&socket).set_tcp_nodelay(true);
    }
}

/// The descriptor of this process's TCP socket bound to local `port`, found through the
/// kernel's socket tables (`/proc/net/tcp*`: local address, then the inode in field 10).
fn socket_with_local_port(port: u16) -> Option<RawFd> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                    (local_port == port).then(|| fields.get(9).map(|inode| (*inode).to_owned()))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::read_dir("/proc/self/fd").ok()?.filter_map(Result::ok).find_map(|entry| {
        let target = std::fs::read_link(entry.path()).ok()?;
        let inode = target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
        inodes.iter().any(|known| known == inode).then(|| entry.file_name().to_str()?.parse().ok())?
    })
}
