//! htpasswd lines through a real nginx (`auth_basic_user_file`): each hash lets its credential in and
//! refuses the rest, a rewritten file counts from the next request on, and what checking a credential
//! costs nginx per request for each hash. Needs nginx (`hack/install-nginx.sh`), no cluster.

mod common;

use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::nginx::{Nginx, OPEN, PROTECTED, basic};
use sha_crypt::CustomizedPasswordHasher as _;
use tokenmint::core::htpasswd::{self, Hash};

const ALL: [Hash; 3] = [Hash::Bcrypt, Hash::Sha256Crypt, Hash::Ssha];
// Throwaway credentials of the minted shape (alphanumeric; a 32-character secret key, the default).
const ACCESS_KEY: &str = "AKtestNginx00001";
const SECRET_KEY: &str = "Zq4VnR8mXw2LkT6pHs0JcY3bFd7GeA1u";
const OTHER_ACCESS_KEY: &str = "AKtestNginx00002";
const OTHER_SECRET_KEY: &str = "Pm7TgW1cXk9QhN3sLd5VbR8yJf2ZaE6o";

/// One test at a time, so the measurement does not share the two cores with the other tests' nginx.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn each_hash_lets_its_credential_in_and_refuses_a_wrong_password_a_wrong_user_and_no_header() {
    let _serial = serial();
    let nginx = Nginx::start();
    assert_eq!(nginx.status(OPEN, None), 200, "the open location answers");
    for hash in ALL {
        let line = htpasswd::line(ACCESS_KEY, SECRET_KEY, hash, b"test seed");
        nginx.write_htpasswd(&format!("{line}\n"));
        let status =
            |user: &str, password: &str| nginx.status(PROTECTED, Some(&basic(user, password)));
        assert_eq!(
            status(ACCESS_KEY, SECRET_KEY),
            200,
            "{hash:?}: the right credential"
        );
        assert_eq!(
            status(ACCESS_KEY, OTHER_SECRET_KEY),
            401,
            "{hash:?}: a wrong password"
        );
        assert_eq!(status(ACCESS_KEY, ""), 401, "{hash:?}: an empty password");
        assert_eq!(
            status(OTHER_ACCESS_KEY, SECRET_KEY),
            401,
            "{hash:?}: a wrong user"
        );
        assert_eq!(
            nginx.status(PROTECTED, None),
            401,
            "{hash:?}: no Authorization header"
        );
    }
}

#[test]
fn a_file_with_a_current_and_a_previous_credential_lets_in_both_and_no_mix_of_them() {
    let _serial = serial();
    let nginx = Nginx::start();
    for hash in ALL {
        let mut lines = [
            htpasswd::line(ACCESS_KEY, SECRET_KEY, hash, b"current"),
            htpasswd::line(OTHER_ACCESS_KEY, OTHER_SECRET_KEY, hash, b"previous"),
        ];
        lines.sort();
        nginx.write_htpasswd(&format!("{}\n{}\n", lines[0], lines[1]));
        let status =
            |user: &str, password: &str| nginx.status(PROTECTED, Some(&basic(user, password)));
        assert_eq!(status(ACCESS_KEY, SECRET_KEY), 200, "{hash:?}");
        assert_eq!(status(OTHER_ACCESS_KEY, OTHER_SECRET_KEY), 200, "{hash:?}");
        assert_eq!(status(ACCESS_KEY, OTHER_SECRET_KEY), 401, "{hash:?}");
        assert_eq!(status(OTHER_ACCESS_KEY, SECRET_KEY), 401, "{hash:?}");
    }
}

#[test]
fn a_rewritten_file_counts_from_the_next_request_without_a_reload() {
    let _serial = serial();
    let nginx = Nginx::start();
    let current = basic(ACCESS_KEY, SECRET_KEY);
    let other = basic(OTHER_ACCESS_KEY, OTHER_SECRET_KEY);
    // One keep-alive connection throughout: not even a new connection is needed.
    let mut connection = nginx.connect();
    assert_eq!(
        connection.get(PROTECTED, Some(&current)),
        401,
        "the file starts empty"
    );

    let line = htpasswd::line(ACCESS_KEY, SECRET_KEY, Hash::Ssha, b"seed");
    nginx.write_htpasswd(&format!("{line}\n"));
    assert_eq!(connection.get(PROTECTED, Some(&current)), 200);

    let line = htpasswd::line(OTHER_ACCESS_KEY, OTHER_SECRET_KEY, Hash::Ssha, b"seed");
    nginx.write_htpasswd(&format!("{line}\n"));
    assert_eq!(
        connection.get(PROTECTED, Some(&current)),
        401,
        "a removed line stops at once"
    );
    assert_eq!(
        connection.get(PROTECTED, Some(&other)),
        200,
        "an added line counts at once"
    );
}

// ------------------------------------------------------------------ measurement

/// Requests per case, unless the time budget runs out first (slow hashes).
const REQUESTS: usize = 2000;
const BUDGET: Duration = Duration::from_secs(5);
const WARMUP: usize = 20;

struct Sample {
    requests: usize,
    per_second: f64,
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

/// Sequential GETs on one keep-alive connection; every response must be 200.
fn measure(nginx: &Nginx, path: &str, authorization: Option<&str>) -> Sample {
    let mut connection = nginx.connect();
    for _ in 0..WARMUP {
        assert_eq!(
            connection.get(path, authorization),
            200,
            "warm-up of {path}"
        );
    }
    let mut latencies = Vec::with_capacity(REQUESTS);
    let started = Instant::now();
    while latencies.len() < REQUESTS && started.elapsed() < BUDGET {
        let sent = Instant::now();
        let status = connection.get(path, authorization);
        latencies.push(sent.elapsed());
        assert_eq!(status, 200, "request {} of {path}", latencies.len());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let n = latencies.len();
    let at = |quantile: f64| latencies[((n as f64 * quantile).ceil() as usize).clamp(1, n) - 1];
    Sample {
        requests: n,
        per_second: n as f64 / elapsed.as_secs_f64(),
        mean: latencies.iter().sum::<Duration>() / n as u32,
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn bcrypt_line(cost: u32) -> String {
    let hash = bcrypt::hash_with_salt(SECRET_KEY, cost, [7; 16]).unwrap();
    format!(
        "{ACCESS_KEY}:{}",
        hash.format_for_version(bcrypt::Version::TwoY)
    )
}

fn sha256_crypt_line(rounds: u32) -> String {
    let params = sha_crypt::Params::new(rounds).unwrap();
    let hash = sha_crypt::ShaCrypt::SHA256
        .hash_password_customized(SECRET_KEY.as_bytes(), &[7; 12], None, None, params)
        .unwrap();
    format!("{ACCESS_KEY}:{hash}")
}

/// Prints, per hash, what nginx pays to check a credential on every request (it caches nothing), next
/// to the same request without auth. A measurement, not a speed assertion: it fails only if a request
/// does. The defaults (`htpasswd::line`) are measured with the neighbouring work factors beside them.
#[test]
fn verification_cost_per_request_as_nginx_pays_it() {
    let _serial = serial();
    let nginx = Nginx::start();
    let default = |hash| htpasswd::line(ACCESS_KEY, SECRET_KEY, hash, b"measurement seed");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no auth (ceiling)", None),
        ("ssha (default)", Some(default(Hash::Ssha))),
        (
            "sha256-crypt rounds=1000 (default)",
            Some(default(Hash::Sha256Crypt)),
        ),
        (
            "sha256-crypt rounds=5000 (glibc default)",
            Some(sha256_crypt_line(5000)),
        ),
        ("bcrypt cost 4 (minimum)", Some(bcrypt_line(4))),
        ("bcrypt cost 8 (default)", Some(default(Hash::Bcrypt))),
        ("bcrypt cost 10", Some(bcrypt_line(10))),
    ];
    // The labels say what the defaults are; hold them to it.
    assert!(default(Hash::Bcrypt).contains(":$2y$08$"));
    assert!(default(Hash::Sha256Crypt).contains(":$5$rounds=1000$"));

    let authorization = basic(ACCESS_KEY, SECRET_KEY);
    let mut table = format!(
        "nginx {} verification cost per request ({REQUESTS} sequential keep-alive requests, at most {BUDGET:?} per case)\n\
         {:<42} {:>8} {:>10} {:>10} {:>10} {:>10}\n",
        nginx_version(),
        "hash",
        "requests",
        "req/s",
        "mean",
        "p50",
        "p99"
    );
    for (label, line) in &cases {
        let sample = match line {
            None => measure(&nginx, OPEN, None),
            Some(line) => {
                assert!(htpasswd::verify(line, ACCESS_KEY, SECRET_KEY), "{label}");
                nginx.write_htpasswd(&format!("{line}\n"));
                measure(&nginx, PROTECTED, Some(&authorization))
            }
        };
        table += &format!(
            "{label:<42} {:>8} {:>10.0} {:>10.3?} {:>10.3?} {:>10.3?}\n",
            sample.requests, sample.per_second, sample.mean, sample.p50, sample.p99
        );
    }
    // Straight to stderr: the test harness captures eprintln! of a passing test, and this table is
    // the point of the test.
    std::io::stderr().write_all(table.as_bytes()).unwrap();
}

fn nginx_version() -> String {
    let out = std::process::Command::new(common::nginx::nginx_bin())
        .arg("-v")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("nginx version: nginx/")
        .to_owned()
}
