//! nginx as a child process for the htpasswd tests: its own prefix, config, logs and temp paths in a
//! temp dir, one location behind `auth_basic_user_file`, and a minimal HTTP/1.1 client. Tests fail,
//! never skip, when nginx is missing.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::free_addr;

const MISSING: &str =
    "nginx not found: run `hack/install-nginx.sh` (or set TOKENMINT_NGINX to the binary)";
/// A file served behind `auth_basic`.
pub const PROTECTED: &str = "/protected/ok.txt";
/// The same file without auth: the ceiling for measurements, and proof the server answers at all.
pub const OPEN: &str = "/ok.txt";

/// TOKENMINT_NGINX, else `nginx` on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH).
pub fn nginx_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("TOKENMINT_NGINX") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "TOKENMINT_NGINX={} does not exist; {MISSING}",
                bin.display()
            );
            return bin;
        }
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("nginx"));
        on_path
            .chain([PathBuf::from("/usr/sbin/nginx")])
            .find(|bin| bin.is_file())
            .unwrap_or_else(|| panic!("{MISSING}"))
    })
}

/// `Authorization` header value for Basic credentials.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

/// One nginx process (`master_process off`, one worker) on a free loopback port. Drop stops it and,
/// if the test is failing, prints its error log.
pub struct Nginx {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with an empty htpasswd file and waits until it accepts connections.
    pub fn start() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        fs::create_dir_all(root.join("www")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("www/ok.txt"), "ok\n").unwrap();
        let addr = free_addr();
        let mut nginx = Nginx {
            child: None,
            addr,
            dir,
        };
        nginx.write_htpasswd("");
        fs::write(nginx.path("nginx.conf"), config(&root, addr)).unwrap();

        let log = fs::File::create(nginx.path("stderr.log")).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(nginx.path("nginx.conf"))
            // Before the config is read nginx logs to its compiled-in path; keep even that here.
            .arg("-e")
            .arg(nginx.path("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}; {MISSING}", nginx_bin().display()));
        nginx.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = nginx.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited during startup ({status}):\n{}", nginx.logs());
            }
            assert!(
                Instant::now() < deadline,
                "nginx not listening on {addr} after 10s:\n{}",
                nginx.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the htpasswd file. nginx opens it again on every request, so the next request sees
    /// it without a reload; the rename means no request ever reads a half-written file.
    pub fn write_htpasswd(&self, contents: &str) {
        let next = self.path("htpasswd.next");
        fs::write(&next, contents).unwrap();
        fs::rename(&next, self.path("htpasswd")).unwrap();
    }

    /// A keep-alive connection for many requests.
    pub fn connect(&self) -> Connection {
        Connection::open(self.addr)
    }

    /// Status of one GET of `path` on a fresh connection.
    pub fn status(&self, path: &str, authorization: Option<&str>) -> u16 {
        self.connect().get(path, authorization)
    }

    /// nginx's error log and whatever it printed to stderr.
    pub fn logs(&self) -> String {
        let read = |name| fs::read_to_string(self.path(name)).unwrap_or_default();
        format!(
            "----- nginx error.log -----\n{}----- nginx stderr -----\n{}",
            read("error.log"),
            read("stderr.log")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Everything under `root`: no path of the package's own (/etc/nginx, /var/lib/nginx, /run) is used.
fn config(root: &Path, addr: SocketAddr) -> String {
    let root = root.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    # One connection carries a whole measurement (the default closes it after 1000 requests).
    keepalive_requests 1000000;
    server {{
        listen {addr};
        root {root}/www;
        # Static content, not `return`: `return` runs in the rewrite phase, before auth_basic.
        location /protected/ {{
            auth_basic \"tokenmint test\";
            auth_basic_user_file {root}/htpasswd;
            alias {root}/www/;
        }}
    }}
}}
"
    )
}

/// A plain HTTP/1.1 client over one TCP connection; reconnects if the server closed it.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    fn open(addr: SocketAddr) -> Connection {
        Connection { addr, stream: None }
    }

    /// GETs `path` with an optional `Authorization` header, reads the whole response, returns its status.
    pub fn get(&mut self, path: &str, authorization: Option<&str>) -> u16 {
        let addr = self.addr;
        let stream = self.stream.get_or_insert_with(|| {
            let stream = TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("connecting to nginx at {addr}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.set_nodelay(true).unwrap();
            BufReader::new(stream)
        });
        let auth =
            authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n");
        stream.get_mut().write_all(request.as_bytes()).unwrap();

        let mut status_line = String::new();
        stream.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let (mut length, mut close) = (None, false);
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let length =
            length.unwrap_or_else(|| panic!("response without Content-Length: {status_line:?}"));
        let mut body = vec![0; length];
        stream.read_exact(&mut body).unwrap();
        if close {
            self.stream = None;
        }
        status
    }
}
