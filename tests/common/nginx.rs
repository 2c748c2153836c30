//! nginx as a child process for the htpasswd and authz tests: its own prefix, config, logs and temp
//! paths in a temp dir, one location behind `auth_basic_user_file` plus whatever a [`Site`] adds, and a
//! minimal HTTP/1.1 client. Tests fail, never skip, when nginx is missing.

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

use super::{free_addr, stop_and_report, tool_bin};

const MISSING: &str =
    "nginx not found: run `hack/install-nginx.sh` (or set TOKENMINT_NGINX to the binary)";
/// A file served behind `auth_basic`.
pub const PROTECTED: &str = "/protected/ok.txt";
/// The same file without auth: the ceiling for measurements, and proof the server answers at all.
pub const OPEN: &str = "/ok.txt";

/// TOKENMINT_NGINX, else `nginx` on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH).
pub fn nginx_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| tool_bin("TOKENMINT_NGINX", "nginx", "/usr/sbin/nginx", MISSING))
}

/// `Authorization` header value for Basic credentials.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

/// What a test adds to the config: `http` is placed in the `http` block (upstreams, other servers),
/// `locations` in the server's block.
#[derive(Clone, Debug, Default)]
pub struct Site {
    pub http: String,
    pub locations: String,
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
        Self::start_with(&Site::default())
    }

    /// Starts nginx serving `site` as well.
    pub fn start_with(site: &Site) -> Nginx {
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
        fs::write(nginx.path("nginx.conf"), config(&root, addr, site)).unwrap();

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

    /// A function that replaces the htpasswd file the same way, for a task that outlives a borrow.
    pub fn htpasswd_writer(&self) -> impl Fn(&str) + Send + 'static {
        let (next, file) = (self.path("htpasswd.next"), self.path("htpasswd"));
        move |contents: &str| {
            fs::write(&next, contents).unwrap();
            fs::rename(&next, &file).unwrap();
        }
    }

    /// A keep-alive connection for many requests.
    pub fn connect(&self) -> Connection {
        Connection::open(self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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
        stop_and_report(self.child.take(), || self.logs());
    }
}

/// Everything under `root`: no path of the package's own (/etc/nginx, /var/lib/nginx, /run) is used.
fn config(root: &Path, addr: SocketAddr, site: &Site) -> String {
    let root = root.display();
    let Site { http, locations } = site;
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 1024; }}
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
{http}
    server {{
        listen {addr};
        root {root}/www;
        # Static content, not `return`: `return` runs in the rewrite phase, before auth_basic.
        location /protected/ {{
            auth_basic \"tokenmint test\";
            auth_basic_user_file {root}/htpasswd;
            alias {root}/www/;
        }}
{locations}
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

/// A whole response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// In the order received; names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// Every value of header `name` (lower case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
}

impl Connection {
    pub fn open(addr: SocketAddr) -> Connection {
        Connection { addr, stream: None }
    }

    /// GETs `path` with an optional `Authorization` header, reads the whole response, returns its status.
    pub fn get(&mut self, path: &str, authorization: Option<&str>) -> u16 {
        let auth =
            authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
        self.request(path, auth.as_bytes()).status
    }

    /// GETs `path` with `headers` (raw header lines, each ending in CRLF, sent as given) and reads
    /// the whole response.
    pub fn request(&mut self, path: &str, headers: &[u8]) -> Reply {
        let addr = self.addr;
        let stream = self.stream.get_or_insert_with(|| {
            let stream = TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("connecting to the gateway at {addr}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.set_nodelay(true).unwrap();
            BufReader::new(stream)
        });
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
        request.extend_from_slice(headers);
        request.extend_from_slice(b"\r\n");
        stream.get_mut().write_all(&request).unwrap();

        let mut status_line = String::new();
        stream.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let (mut length, mut close, mut headers) = (None, false, Vec::new());
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_owned());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
            headers.push((name, value));
        }
        let length =
            length.unwrap_or_else(|| panic!("response without Content-Length: {status_line:?}"));
        let mut body = vec![0; length];
        stream.read_exact(&mut body).unwrap();
        if close {
            self.stream = None;
        }
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}
