//! Child processes (the operator, authz, nginx) and their loopback endpoints.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Sends `command`'s stdout and stderr to the end of `log_path` (created if missing) and closes its
/// stdin. For a `tokio::process::Command`, configure a std `Command` and convert it with `From`.
pub fn log_to<'c>(command: &'c mut Command, log_path: &Path) -> std::io::Result<&'c mut Command> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log))
}

/// A loopback address nobody listens on right now (the kernel's pick).
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Waits up to 15 s until `addr` accepts connections; an error if `child` exits first or it never does.
pub async fn wait_listening(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    for _ in 0..150 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("exited during startup ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot tell whether it runs: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not listening on {addr} after 15s"))
}

/// A size field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, ...); `None` if the process or the
/// field is not there.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Minimal blocking HTTP/1.0 GET (the operator serves metrics and health without TLS); returns the
/// status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write: `write!` on a socket may split the request into several segments.
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Reads one HTTP request head (through the blank line) from `conn`, for a test server that answers
/// a request: closing a socket with unread bytes would reset the connection before the client reads
/// the answer.
pub fn read_request_head(conn: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte)? == 1 {
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_kib_reads_one_field() {
        let status = "Name:\tx\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert!(status_kib(std::process::id(), "VmRSS").is_some_and(|kib| kib > 0));
    }

    #[test]
    fn log_to_appends_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        std::fs::write(&log, "before\n").unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2"]);
        let status = log_to(&mut command, &log).unwrap().status().unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nout\nerr\n");
    }

    #[test]
    fn http_get_reads_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let request = read_request_head(&mut conn).unwrap();
            conn.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot yet")
                .unwrap();
            request
        });
        let (status, body) = http_get(addr, "/readyz").unwrap();
        assert_eq!((status, body.as_str()), (503, "not yet"));
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /readyz HTTP/1.0\r\n")
        );
    }
}
