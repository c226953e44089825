//! The deployment recipes, checked on a machine without Docker, Kubernetes or systemd
//! running: the image's runtime steps replayed outside Docker (the same binary, user, config
//! path, HEALTHCHECK command and stop signal), the compose file, the Prometheus and Grafana
//! files, the sidecar's Redis routing against real Redis servers, the Kubernetes manifests,
//! the systemd unit, and the operator docs against the code they describe.
//!
//! YAML is read by python3's PyYAML (this crate has no YAML parser of its own); where
//! PyYAML is missing, a line check stands in and says so. Tests that need root (network
//! namespaces, a system user) or a tool skip with a message saying what is missing, and fail
//! under CI=true (tests/common/require.rs).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    binary, is_root, on_path, require_root, require_tool, require_tools, skip, wait_until, Ballast,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A fresh scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ballast-deploy-{}-{n}-{tag}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A network namespace with its loopback up, deleted (with what still runs in it) on drop.
/// It stands in for a container's own network: the fixed ports of the shipped configs
/// cannot clash with anything on the machine.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("bldp{}x{n}-{tag}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        run_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }

    fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).arg(program);
        cmd
    }

    /// `curl` from inside: the HTTP status of `url` (0 when nothing answered).
    fn http_code(&self, url: &str) -> u16 {
        let output = self
            .exec("curl")
            .args([
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).parse().unwrap_or(0)
    }

    fn get_json(&self, url: &str) -> Option<Value> {
        let output = self
            .exec("curl")
            .args(["-fsS", "-m", "2", url])
            .output()
            .ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed on drop.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PYYAML: &str = "\
import json, sys
try:
    import yaml
except ImportError:
    sys.exit(3)
with open(sys.argv[1]) as f:
    json.dump(list(yaml.safe_load_all(f)), sys.stdout, default=str)
";

/// Every document of a YAML file, as JSON values; `None` when python3 or PyYAML is missing.
/// Invalid YAML fails the test.
fn yaml_documents(path: &Path) -> Option<Vec<Value>> {
    let output = Command::new("python3")
        .args(["-c", PYYAML])
        .arg(path)
        .output()
        .ok()?;
    if output.status.code() == Some(3) {
        return None;
    }
    assert!(
        output.status.success(),
        "{} is not valid YAML:\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

fn yaml_text_documents(text: &str) -> Option<Vec<Value>> {
    let dir = TempDir::new("yaml");
    yaml_documents(&dir.write("doc.yaml", text))
}

const NO_PYYAML: &str = "python3 with PyYAML not found (apt-get install python3-yaml)";

/// `ballast check` on a config text; the admin token file it names, if any, is replaced by a
/// scratch one (the real one lives in a secret store).
fn ballast_check(yaml: &str, what: &str) {
    let dir = TempDir::new("check");
    let token = dir.write("admin-token", "test-token\n");
    // Password files are read at load time: each `password_file:` (the last key of its line)
    // points at one that exists.
    let password = dir.write("password", "test-password\n");
    let text: String = yaml
        .lines()
        .map(|line| {
            if let Some((head, _)) = line.split_once("token_file:") {
                format!("{head}token_file: {}", token.display())
            } else if let Some((head, _)) = line.split_once("password_file:") {
                format!("{head}password_file: {}", password.display())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.write("ballast.yaml", &text);
    eprintln!("ballast check: {what}");
    run_ok(Command::new(binary()).arg("check").arg("-c").arg(&path));
}

/// `5s`, `1m`, `30s` and the like, as the recipes write them.
fn seconds(text: &str) -> u64 {
    let text = text.trim().trim_matches('"');
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<u64>().unwrap() * 60;
    }
    text.trim_end_matches('s').parse().unwrap()
}

/// The value after `key:` on the first line that has it.
fn yaml_line_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(key)?.strip_prefix(':')?;
        // A comment starts at ` #`; a `#` inside a value (a URL's anchor) is the value's.
        Some(rest.split(" #").next().unwrap_or("").trim())
    })
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Stage {
    from: String,
    /// (instruction in upper case, its arguments on one line)
    steps: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, instruction: &str) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|(i, _)| i == instruction)
            .map(|(_, args)| args.as_str())
            .collect()
    }

    fn one(&self, instruction: &str) -> &str {
        let all = self.all(instruction);
        assert_eq!(all.len(), 1, "one {instruction} expected: {all:?}");
        all[0]
    }

    /// `ENV K=V` pairs.
    fn env(&self) -> Vec<(String, String)> {
        self.all("ENV")
            .iter()
            .flat_map(|args| args.split_whitespace())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap();
                (key.to_owned(), value.trim_matches('"').to_owned())
            })
            .collect()
    }

    /// `COPY` sources and destinations, without `--from` ones.
    fn local_copies(&self) -> Vec<(String, String)> {
        self.all("COPY")
            .iter()
            .filter(|args| !args.starts_with("--from"))
            .map(|args| {
                let words: Vec<&str> = args.split_whitespace().collect();
                assert_eq!(words.len(), 2, "COPY {args}");
                (words[0].to_owned(), words[1].to_owned())
            })
            .collect()
    }

    /// The value of `--option N` (or `--option=N`) of `command` in the first RUN using it,
    /// and the command's last word (the user or group name).
    fn command_option(&self, command: &str, option: &str) -> (Option<String>, String) {
        let run = self
            .all("RUN")
            .into_iter()
            .find(|r| r.contains(command))
            .unwrap_or_else(|| panic!("no RUN with {command}"));
        let start = run.find(command).unwrap() + command.len();
        let words: Vec<&str> = run[start..]
            .split("&&")
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let mut value = None;
        for (i, word) in words.iter().enumerate() {
            if *word == option {
                value = words.get(i + 1).map(|v| (*v).to_owned());
            } else if let Some(v) = word.strip_prefix(&format!("{option}=")) {
                value = Some(v.to_owned());
            }
        }
        (value, (*words.last().unwrap()).to_owned())
    }
}

/// The stages of the Dockerfile: comments dropped, continuation lines joined.
fn dockerfile_stages() -> Vec<Stage> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap();
        let instruction = instruction.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if instruction == "FROM" {
            stages.push(Stage {
                from: args,
                steps: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.steps.push((instruction, args));
        }
    }
    stages
}

/// The shell command after `CMD` in a HEALTHCHECK, and its `--option=value`s.
fn healthcheck(args: &str) -> (BTreeMap<String, String>, String) {
    let (options, command) = args.split_once("CMD ").unwrap();
    let options = options
        .split_whitespace()
        .map(|o| {
            let (k, v) = o.trim_start_matches("--").split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (options, command.trim().to_owned())
}

#[test]
fn dockerfile_builds_in_rust_and_runs_slim_as_a_non_root_user() {
    let stages = dockerfile_stages();
    assert_eq!(stages.len(), 2, "{stages:?}");
    let (build, runtime) = (&stages[0], &stages[1]);
    assert_eq!(build.from, "rust:1-bookworm AS build");
    assert!(build
        .all("RUN")
        .iter()
        .any(|r| r.contains("cargo build --release --locked")));
    assert_eq!(runtime.from, "debian:bookworm-slim");
    assert!(runtime
        .all("COPY")
        .iter()
        .any(|c| c.starts_with("--from=build ") && c.ends_with(" /usr/local/bin/ballast")));

    // The user: created with a fixed non-zero uid, and the image runs as it.
    let (uid, user) = runtime.command_option("useradd", "--uid");
    assert_eq!(user, "ballast");
    let uid: u32 = uid.unwrap().parse().unwrap();
    let (gid, group) = runtime.command_option("groupadd", "--gid");
    assert_eq!(group, "ballast");
    assert!(uid > 0);
    assert_eq!(
        runtime.one("USER"),
        format!("{uid}:{}", gid.unwrap()),
        "numeric, so runAsNonRoot can verify it"
    );

    // The config path and the shipped default.
    let env: BTreeMap<String, String> = runtime.env().into_iter().collect();
    assert_eq!(env["BALLAST_CONFIG"], "/etc/ballast/ballast.yaml");
    let copies = runtime.local_copies();
    assert!(
        copies
            .iter()
            .any(|(_, dest)| dest == "/etc/ballast/ballast.yaml"),
        "{copies:?}"
    );
    for (source, _) in &copies {
        ballast_check(&read(source), source);
    }

    // Health, ports, signals, the command line.
    let (options, command) = healthcheck(runtime.one("HEALTHCHECK"));
    assert!(command.starts_with("curl "), "{command}");
    assert!(env["BALLAST_HEALTHCHECK_URL"].ends_with("/healthz"));
    for key in ["interval", "timeout", "start-period", "retries"] {
        assert!(options.contains_key(key), "HEALTHCHECK --{key}");
    }
    assert!(runtime.all("RUN").iter().any(|r| r.contains("install")
        && r.contains(" curl")
        && r.contains("--no-install-recommends")));
    assert_eq!(runtime.one("STOPSIGNAL"), "SIGTERM");
    let exposed: Vec<&str> = runtime.one("EXPOSE").split_whitespace().collect();
    assert_eq!(exposed, ["8080/tcp", "9190/tcp"]);
    let entrypoint: Vec<String> = serde_json::from_str(runtime.one("ENTRYPOINT")).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/ballast"]);
    let cmd: Vec<String> = serde_json::from_str(runtime.one("CMD")).unwrap();
    assert_eq!(cmd, ["run"]);
}

/// The host account standing in for the image's user: the same name, created as a system
/// user when missing. Returns (uid, gid).
fn ensure_user(name: &str, preferred_uid: u32) -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let uid_taken = Command::new("getent")
            .args(["passwd", &preferred_uid.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if !uid_taken {
            cmd.args(["--uid", &preferred_uid.to_string()]);
        }
        // Another test process may have created it meanwhile: `id` below decides.
        let _ = cmd.arg(name).output();
    }
    (
        id("-u").unwrap_or_else(|| panic!("cannot create user {name}")),
        id("-g").unwrap(),
    )
}

/// The image's runtime stage, replayed outside Docker: its files in a scratch root, its
/// user, its network namespace, its environment, command line, HEALTHCHECK and STOPSIGNAL.
#[test]
fn image_runtime_steps_outside_docker() {
    if !(require_root("for a network namespace and a system user")
        && require_tools(&[
            ("ip", "iproute2"),
            ("curl", "curl"),
            ("setpriv", "util-linux"),
            ("useradd", "passwd"),
            ("getent", "libc-bin"),
            ("sh", "dash"),
            ("kill", "procps"),
        ]))
    {
        return;
    }
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();

    // The root filesystem: the binary and the default config where the image has them.
    let root = TempDir::new("image");
    let place = |image_path: &str| root.path().join(image_path.trim_start_matches('/'));
    let mut mapping: Vec<(String, PathBuf)> = Vec::new();
    for (source, dest) in runtime.local_copies() {
        let target = place(&dest);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(repo().join(&source), &target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        mapping.push((dest, target));
    }
    let binary_path = place("/usr/local/bin/ballast");
    fs::create_dir_all(binary_path.parent().unwrap()).unwrap();
    fs::copy(binary(), &binary_path).unwrap();
    fs::set_permissions(&binary_path, fs::Permissions::from_mode(0o755)).unwrap();
    mapping.push(("/usr/local/bin/ballast".into(), binary_path.clone()));
    for dir in ["etc", "etc/ballast", "usr", "usr/local", "usr/local/bin"] {
        fs::set_permissions(root.path().join(dir), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let map = |value: &str| -> String {
        for (image_path, host_path) in &mapping {
            if value == image_path {
                return host_path.display().to_string();
            }
        }
        value.to_owned()
    };

    // The user.
    let (uid_wanted, user) = runtime.command_option("useradd", "--uid");
    let (uid, gid) = ensure_user(&user, uid_wanted.unwrap().parse().unwrap());
    assert_ne!(uid, 0);

    let netns = Netns::new("image");
    let env: Vec<(String, String)> = runtime
        .env()
        .into_iter()
        .map(|(k, v)| (k, map(&v)))
        .collect();
    // `docker exec`-like: a command in the container's namespace, as its user, with its ENV.
    let as_user = |program: &str| {
        let mut cmd = netns.exec("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--no-new-privs", "--"])
            .arg(program)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        for (key, value) in &env {
            cmd.env(key, value);
        }
        cmd
    };
    let (options, health_command) = healthcheck(runtime.one("HEALTHCHECK"));
    let health = || {
        as_user("sh")
            .args(["-c", &health_command])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(health(), Some(1), "unhealthy before start, and exit code 1");

    // `docker run IMAGE check`: the config path comes from BALLAST_CONFIG.
    let entrypoint: Vec<String> = serde_json::from_str(runtime.one("ENTRYPOINT")).unwrap();
    run_ok(as_user(&map(&entrypoint[0])).arg("check"));

    // `docker run IMAGE`: ENTRYPOINT + CMD.
    let cmd: Vec<String> = serde_json::from_str(runtime.one("CMD")).unwrap();
    let mut run = as_user(&map(&entrypoint[0]));
    run.args(cmd.iter().map(|a| map(a)));
    let started = Instant::now();
    let mut ballast = Ballast::spawn_command(run);
    let pid = ballast.pid();

    // It is the copied binary, running as the user, not root.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(uids, vec![uid.to_string().as_str(); 4]);
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        binary_path
    );

    // EXPOSE names every port it listens on.
    let exposed: BTreeSet<u16> = runtime
        .one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let mut bound: BTreeSet<u16> = ballast.listening.iter().map(|(_, a)| a.port()).collect();
    bound.insert(ballast.admin().port());
    assert_eq!(bound, exposed);

    // The HEALTHCHECK passes within its own budget; /readyz agrees.
    let budget = Duration::from_secs(
        seconds(&options["start-period"])
            + seconds(&options["interval"]) * options["retries"].parse::<u64>().unwrap(),
    );
    assert!(
        wait_until(budget, || health() == Some(0)),
        "HEALTHCHECK never passed:\n{}",
        ballast.log_text()
    );
    let admin = ballast.admin();
    let admin_url = format!("http://127.0.0.1:{}", admin.port());
    assert_eq!(netns.http_code(&format!("{admin_url}/readyz")), 200);
    let healthy_after = started.elapsed();

    // STOPSIGNAL: drains and exits 0 within drain_timeout.
    let signal = runtime
        .one("STOPSIGNAL")
        .trim_start_matches("SIG")
        .to_owned();
    ballast.signal(&signal);
    let config = read("deploy/docker/ballast.yaml");
    let drain = seconds(yaml_line_value(&config, "drain_timeout").unwrap());
    let exit = ballast.wait_exit(Duration::from_secs(drain + 5));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        ballast.log_text()
    );
    assert_eq!(health(), Some(1), "unhealthy once stopped");
    eprintln!("image steps: healthy {healthy_after:.2?} after start, exit 0 on {signal}");
}

#[test]
fn dockerignore_keeps_the_build_inputs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    // Docker's rule: the last matching pattern wins; `!` re-includes. The patterns here are
    // paths and `**/name`, which this matches as prefixes.
    let ignored = |path: &str| {
        let mut verdict = false;
        for pattern in &patterns {
            let (include, pattern) = match pattern.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, pattern.as_str()),
            };
            let matches = match pattern.strip_prefix("**/") {
                Some(name) => path.split('/').any(|part| {
                    part == name || name.starts_with("*.") && part.ends_with(&name[1..])
                }),
                None => path == pattern || path.starts_with(&format!("{pattern}/")),
            };
            if matches {
                verdict = !include;
            }
        }
        verdict
    };
    let stages = dockerfile_stages();
    // The workspace's sources and manifests (`ballast demo` embeds configs/demo.yaml), as
    // git knows them.
    let tracked = run_ok(
        Command::new("git")
            // The checkout may belong to another user than the one running the tests.
            .args(["-c", "safe.directory=*", "ls-files", "--"])
            .args(["Cargo.toml", "Cargo.lock", "crates", "configs"])
            .current_dir(repo()),
    );
    let mut needed: Vec<String> = String::from_utf8_lossy(&tracked.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        needed.iter().any(|p| p == "configs/demo.yaml"),
        "{needed:?}"
    );
    needed.extend(
        stages
            .last()
            .unwrap()
            .local_copies()
            .into_iter()
            .map(|(s, _)| s),
    );
    for path in &needed {
        assert!(repo().join(path).exists(), "{path} missing");
        assert!(!ignored(path), "{path} is needed by the build but ignored");
    }
    for path in [
        "target/release/ballast",
        ".git/HEAD",
        "fuzz/Cargo.toml",
        "rust-toolchain.toml",
    ] {
        assert!(ignored(path), "{path} should stay out of the build context");
    }
}

// ---------------------------------------------------------------------------------------
// docker-compose, Prometheus, Grafana
// ---------------------------------------------------------------------------------------

/// A JSON array of strings (a compose command, a list of mounts).
fn strings(value: &Value) -> Vec<&str> {
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"));
    items.iter().map(|v| v.as_str().unwrap()).collect()
}

/// The pinned address of a compose service on the `backend` network.
fn compose_address(compose: &Value, service: &str) -> String {
    compose["services"][service]["networks"]["backend"]["ipv4_address"]
        .as_str()
        .unwrap_or_else(|| panic!("{service} has no pinned address"))
        .to_owned()
}

fn compose() -> Option<Value> {
    yaml_documents(&repo().join("deploy/docker-compose.yml")).map(|mut docs| docs.remove(0))
}

const COMPOSE_SERVICES: [&str; 7] = [
    "ballast",
    "app",
    "redis-primary",
    "redis-replica",
    "prometheus",
    "grafana-dashboards",
    "grafana",
];

#[test]
fn compose_file_wires_app_sidecar_redis_prometheus_grafana() {
    let deploy = repo().join("deploy");
    let Some(compose) = compose() else {
        skip(&format!("{NO_PYYAML}: only the service names are checked"));
        let text = read("deploy/docker-compose.yml");
        for service in COMPOSE_SERVICES {
            assert!(text.contains(&format!("\n  {service}:\n")), "{service}");
        }
        return;
    };
    let services = compose["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for service in COMPOSE_SERVICES {
        assert!(names.contains(service), "no service {service}: {names:?}");
    }

    // Every host file that is mounted exists.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(deploy.join(source).exists(), "{name}: {source} missing");
            }
        }
    }
    for (name, secret) in compose["secrets"].as_object().unwrap() {
        let file = secret["file"].as_str().unwrap();
        assert!(deploy.join(file).exists(), "secret {name}: {file} missing");
    }

    // Ballast: built from this repository's Dockerfile, its config where the image reads it,
    // drained within the grace period.
    let ballast = &services["ballast"];
    let context = deploy.join(ballast["build"]["context"].as_str().unwrap());
    assert!(context
        .join(ballast["build"]["dockerfile"].as_str().unwrap())
        .is_file());
    let mounts: Vec<&str> = strings(&ballast["volumes"]);
    let config_mount = mounts
        .iter()
        .find(|m| m.contains(":/etc/ballast/ballast.yaml"))
        .unwrap();
    let config_file = config_mount.split(':').next().unwrap();
    let config_text = fs::read_to_string(deploy.join(config_file)).unwrap();
    ballast_check(&config_text, config_file);
    let drain = seconds(yaml_line_value(&config_text, "drain_timeout").unwrap());
    let grace = seconds(ballast["stop_grace_period"].as_str().unwrap());
    assert!(
        drain < grace,
        "drain_timeout {drain}s within stop_grace_period {grace}s"
    );
    let token_file = yaml_line_value(&config_text, "token_file").unwrap();
    let secret = ballast["secrets"][0].as_str().unwrap();
    assert_eq!(token_file, format!("/run/secrets/{secret}"));

    // The app shares Ballast's network and waits for its HEALTHCHECK.
    let app = &services["app"];
    assert_eq!(app["network_mode"], "service:ballast");
    assert_eq!(app["depends_on"]["ballast"]["condition"], "service_healthy");
    let app_command = app["command"].to_string();
    let config = yaml_text_documents(&config_text).unwrap().remove(0);
    for listener in config["listeners"].as_array().unwrap() {
        let listen = listener["listen"].as_str().unwrap();
        assert!(
            listen.starts_with("127.0.0.1:"),
            "the sidecar listens on loopback"
        );
        let port = listen.rsplit(':').next().unwrap();
        assert!(
            app_command.contains(&format!("-p {port} ")),
            "the app uses {listen}"
        );
    }

    // Redis: the pool backends are the nodes' pinned addresses; the replica follows the primary.
    let address = |service: &str| compose_address(&compose, service);
    let (primary, replica) = (address("redis-primary"), address("redis-replica"));
    let replica_command: Vec<&str> = strings(&services["redis-replica"]["command"]);
    let at = replica_command
        .iter()
        .position(|w| *w == "--replicaof")
        .unwrap();
    assert_eq!(replica_command[at + 1], primary);
    for pool in config["pools"].as_array().unwrap() {
        let backends: BTreeSet<String> = pool["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["address"].as_str().unwrap().to_owned())
            .collect();
        let expected: BTreeSet<String> = [&primary, &replica]
            .iter()
            .map(|ip| format!("{ip}:6379"))
            .collect();
        assert_eq!(backends, expected, "pool {}", pool["name"]);
    }
    let subnet = compose["networks"]["backend"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap();
    let prefix = subnet.rsplit_once('.').unwrap().0;
    for ip in [&primary, &replica, &address("ballast")] {
        assert!(ip.starts_with(&format!("{prefix}.")), "{ip} in {subnet}");
    }

    // Prometheus scrapes the admin port, Grafana gets its files.
    let prometheus = yaml_documents(&deploy.join("prometheus/prometheus.yml"))
        .unwrap()
        .remove(0);
    let admin_port = config["admin"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"].clone();
    assert_eq!(
        targets,
        serde_json::json!([format!("ballast:{admin_port}")])
    );
    assert_eq!(prometheus["scrape_configs"][0]["job_name"], "ballast");
    let grafana_mounts = services["grafana"]["volumes"].to_string();
    assert!(grafana_mounts.contains("./grafana/provisioning:/etc/grafana/provisioning"));
    let provider = yaml_documents(&deploy.join("grafana/provisioning/dashboards/ballast.yml"))
        .unwrap()
        .remove(0);
    let dashboards_path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(grafana_mounts.contains(&format!("grafana-dashboards:{dashboards_path}")));

    // What a Docker engine would say, when docker-compose is here.
    if require_tool("docker-compose", "docker-compose") {
        run_ok(
            Command::new("docker-compose")
                .args(["-f", "docker-compose.yml", "config", "--quiet"])
                .current_dir(&deploy),
        );
    }
}

/// The compose file's one-shot step makes the exported dashboard loadable by provisioning:
/// run its script as it does, on the real dashboard.
#[test]
fn grafana_dashboard_is_prepared_for_the_provisioned_datasource() {
    let deploy = repo().join("deploy");
    let Some(compose) = compose() else {
        return skip(NO_PYYAML);
    };
    let step = &compose["services"]["grafana-dashboards"];
    let command: Vec<&str> = strings(&step["command"]);
    // ["sh", "/prepare-dashboard.sh", IN, OUT, UID]: container paths to host paths.
    let volumes: Vec<(String, String)> = step["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let mut parts = v.as_str().unwrap().split(':');
            (parts.next().unwrap().into(), parts.next().unwrap().into())
        })
        .collect();
    let host = |container: &str| {
        volumes
            .iter()
            .find(|(_, inside)| inside == container)
            .map(|(outside, _)| deploy.join(outside))
            .unwrap()
    };
    let datasources =
        yaml_documents(&deploy.join("grafana/provisioning/datasources/prometheus.yml"))
            .unwrap()
            .remove(0);
    let uid = datasources["datasources"][0]["uid"].as_str().unwrap();
    assert_eq!(command[4], uid, "the step writes the provisioned uid");
    let out = TempDir::new("grafana");
    let prepared = out.path().join("ballast.json");
    run_ok(
        Command::new(command[0])
            .arg(host(command[1]))
            .arg(host(command[2]))
            .arg(&prepared)
            .arg(command[4]),
    );
    let text = fs::read_to_string(&prepared).unwrap();
    assert!(!text.contains("${DS_PROMETHEUS}"));
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut references = Vec::new();
    collect_datasources(&dashboard, &mut references);
    assert!(references.len() > 10, "{references:?}");
    for reference in references {
        assert_eq!(reference["uid"], uid, "{reference}");
    }
    // A bad uid is refused rather than written into JSON.
    let refused = Command::new("sh")
        .arg(host(command[1]))
        .arg(host(command[2]))
        .arg(out.path().join("x.json"))
        .arg("a\"b")
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

fn collect_datasources(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "datasource" {
                    out.push(child.clone());
                } else {
                    collect_datasources(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_datasources(i, out)),
        _ => {}
    }
}

#[test]
fn prometheus_config_and_alerts_pass_promtool() {
    if !require_tool("promtool", "prometheus") {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        // Unit tests of the alerts: they fire, and only when they should.
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        run_ok(Command::new("promtool").args(&args).current_dir(&dir));
    }
    // Every alert names a runbook section that exists.
    let runbooks = read("docs/runbooks.md");
    let anchors = markdown_anchors(&runbooks);
    let alerts = read("deploy/prometheus/alerts.yml");
    let mut linked = 0;
    for line in alerts.lines() {
        if let Some(url) = yaml_line_value(line, "runbook_url") {
            let anchor = url.trim_matches('"').split_once('#').unwrap().1;
            assert!(
                anchors.contains(anchor),
                "no section #{anchor} in docs/runbooks.md"
            );
            linked += 1;
        }
    }
    assert!(linked >= 4);
}

/// GitHub's anchors for the headings of a markdown text.
fn markdown_anchors(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The sidecar's Redis routing, against real Redis servers
// ---------------------------------------------------------------------------------------

/// The compose file's Ballast config, unchanged but for the secret's path, in front of a
/// real Redis primary and replica at the compose network's addresses (inside a namespace):
/// writes go to the primary, reads anywhere, and a failover moves the write listener.
#[test]
fn sidecar_config_follows_the_redis_primary() {
    if !(require_root("for a network namespace")
        && require_tools(&[
            ("ip", "iproute2"),
            ("curl", "curl"),
            ("redis-server", "redis-server"),
            ("redis-cli", "redis-tools"),
        ]))
    {
        return;
    }
    let Some(compose) = compose() else {
        return skip(NO_PYYAML);
    };
    let address = |service: &str| compose_address(&compose, service);
    let (primary, replica) = (address("redis-primary"), address("redis-replica"));
    let netns = Netns::new("redis");
    // The compose network's addresses, local to the namespace.
    for ip in [&address("ballast"), &primary, &replica] {
        run_ok(
            netns
                .exec("ip")
                .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]),
        );
    }

    let dir = TempDir::new("redis");
    let redis = |ip: &str, extra: &[&str]| {
        let child = netns
            .exec("redis-server")
            .args([
                "--bind",
                ip,
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--dbfilename")
            .arg(format!("{ip}.rdb"))
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Process(child)
    };
    let cli = |args: &[&str]| -> String {
        let output = netns.exec("redis-cli").args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let _primary_server = redis(&primary, &[]);
    let _replica_server = redis(&replica, &["--replicaof", &primary, "6379"]);
    for ip in [&primary, &replica] {
        assert!(wait_until(Duration::from_secs(10), || cli(&[
            "-h", ip, "PING"
        ]) == "PONG"));
    }

    let config = read("deploy/docker/sidecar.yaml").replace(
        "/run/secrets/ballast-admin-token",
        &repo()
            .join("deploy/docker/admin-token")
            .display()
            .to_string(),
    );
    let config_path = dir.write("ballast.yaml", &config);
    let mut cmd = netns.exec(binary());
    cmd.arg("run").arg("-c").arg(&config_path);
    let ballast = Ballast::spawn_command(cmd);
    let admin = format!("http://127.0.0.1:{}", ballast.admin().port());
    let primary_state = |backend: &str| -> Option<String> {
        let status = netns.get_json(&format!("{admin}/api/v1/status"))?;
        let pool = status["pools"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "redis-primary")?
            .clone();
        let found = pool["backends"]
            .as_array()?
            .iter()
            .find(|b| b["address"] == format!("{backend}:6379"))?
            .clone();
        found["state"].as_str().map(str::to_owned)
    };

    // The ROLE check keeps the replica out of the write pool; writes through Ballast land.
    let timeout = Duration::from_secs(15);
    assert!(
        wait_until(timeout, || primary_state(&replica).as_deref()
            == Some("down")),
        "{:?}\n{}",
        primary_state(&replica),
        ballast.log_text()
    );
    assert_eq!(primary_state(&primary).as_deref(), Some("up"));
    for i in 0..10 {
        assert_eq!(cli(&["-p", "6379", "SET", "k", &format!("v{i}")]), "OK");
    }
    assert!(wait_until(timeout, || cli(&["-p", "6380", "GET", "k"]) == "v9"));

    // A failover: the replica becomes the primary, the primary its replica.
    let switched = Instant::now();
    assert_eq!(cli(&["-h", &replica, "REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(cli(&["-h", &primary, "REPLICAOF", &replica, "6379"]), "OK");
    // Writes through the same listener succeed again, now on the new primary.
    assert!(
        wait_until(timeout, || cli(&["-p", "6379", "SET", "k", "after"])
            == "OK"
            && primary_state(&primary).as_deref() == Some("down")),
        "{}",
        ballast.log_text()
    );
    assert_eq!(primary_state(&replica).as_deref(), Some("up"));
    assert_eq!(cli(&["-h", &replica, "GET", "k"]), "after");
    eprintln!(
        "writes follow the new primary {:.2?} after the switch",
        switched.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------

/// (apiVersion, kind, name) of every document, read without a YAML parser: the top-level
/// `apiVersion:` and `kind:` lines and the first `  name:` under `metadata:`.
fn manifest_heads(text: &str) -> Vec<(String, String, String)> {
    text.split("\n---")
        .filter(|doc| doc.lines().any(|l| l.starts_with("kind:")))
        .map(|doc| {
            let top = |key: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            let name = doc
                .split("\nmetadata:")
                .nth(1)
                .and_then(|m| yaml_line_value(m, "name"))
                .unwrap_or_default()
                .to_owned();
            (top("apiVersion:"), top("kind:"), name)
        })
        .collect()
}

fn api_version_of(kind: &str) -> &'static str {
    match kind {
        "Deployment" | "DaemonSet" => "apps/v1",
        "ConfigMap" | "Service" => "v1",
        "ServiceMonitor" | "PrometheusRule" => "monitoring.coreos.com/v1",
        "PodDisruptionBudget" => "policy/v1",
        "Kustomization" => "kustomize.config.k8s.io/v1beta1",
        other => panic!("unexpected kind {other}"),
    }
}

#[test]
fn kubernetes_manifests_have_the_right_kinds_probes_and_wiring() {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();

    // Kinds and apiVersions, with or without a YAML parser.
    let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for (api_version, kind, name) in manifest_heads(&text) {
            assert_eq!(api_version, api_version_of(&kind), "{}", file.display());
            if kind != "Kustomization" {
                assert!(!name.is_empty(), "{kind} without a name");
            }
            kinds.entry(kind).or_default().push(name);
        }
    }
    for kind in [
        "ConfigMap",
        "Deployment",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "Kustomization",
    ] {
        assert!(kinds.contains_key(kind), "no {kind}: {kinds:?}");
    }

    let mut documents: Vec<Value> = Vec::new();
    for file in &files {
        match yaml_documents(file) {
            Some(docs) => documents.extend(docs.into_iter().filter(|d| !d.is_null())),
            None => {
                skip(&format!("{NO_PYYAML}: only the probes' paths are checked"));
                for file in &files {
                    let text = fs::read_to_string(file).unwrap();
                    if text.contains("livenessProbe") {
                        assert!(text.contains("path: /healthz") && text.contains("path: /readyz"));
                    }
                }
                return;
            }
        }
    }
    let find = |kind: &str, name: &str| -> &Value {
        documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let all =
        |kind: &str| -> Vec<&Value> { documents.iter().filter(|d| d["kind"] == kind).collect() };

    // Every document parses with its kind's apiVersion.
    for doc in &documents {
        let kind = doc["kind"].as_str().unwrap();
        assert_eq!(doc["apiVersion"], api_version_of(kind));
    }

    // The ConfigMap's config passes `ballast check`; its listeners are the pods' ports.
    let config_map = find("ConfigMap", "ballast-config");
    let config_text = config_map["data"]["ballast.yaml"].as_str().unwrap();
    ballast_check(config_text, "the ConfigMap's ballast.yaml");
    let config = yaml_text_documents(config_text).unwrap().remove(0);
    let port_of = |listen: &str| -> u64 { listen.rsplit(':').next().unwrap().parse().unwrap() };
    let admin_port = port_of(config["admin"]["listen"].as_str().unwrap());
    let token_file = config["admin"]["token_file"].as_str().unwrap();
    let drain = seconds(config["drain_timeout"].as_str().unwrap());

    let stages = dockerfile_stages();
    let image_uid: u64 = stages
        .last()
        .unwrap()
        .one("USER")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let workloads: Vec<&Value> = all("Deployment")
        .into_iter()
        .chain(all("DaemonSet"))
        .collect();
    assert_eq!(workloads.len(), 2);
    for workload in &workloads {
        let what = format!("{} {}", workload["kind"], workload["metadata"]["name"]);
        let spec = &workload["spec"]["template"]["spec"];
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        for (key, value) in workload["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(&labels[key], value, "{what}: selector matches the pods");
        }
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_eq!(spec["securityContext"]["runAsUser"], image_uid, "{what}");
        let container = &spec["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );

        // Probes: /healthz for liveness, /readyz for readiness, on the admin port.
        let ports = container["ports"].as_array().unwrap();
        let named = |name: &str| ports.iter().find(|p| p["name"] == name);
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{what} {probe}");
            let port = named(get["port"].as_str().unwrap()).unwrap();
            assert_eq!(port["containerPort"], admin_port, "{what} {probe}");
        }
        // Every listener of the config has its container port, with its protocol.
        for listener in config["listeners"].as_array().unwrap() {
            let port = port_of(listener["listen"].as_str().unwrap());
            let protocol = listener["protocol"].as_str().unwrap().to_uppercase();
            assert!(
                ports
                    .iter()
                    .any(|p| p["containerPort"] == port && p["protocol"] == protocol),
                "{what}: no {protocol} port {port}"
            );
        }

        // The config and the token where the config says they are.
        let volume_of = |mount_path: &str| -> Value {
            let mount = container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == mount_path)
                .unwrap_or_else(|| panic!("{what}: nothing mounted at {mount_path}"));
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap()
                .clone()
        };
        assert_eq!(
            volume_of("/etc/ballast")["configMap"]["name"],
            "ballast-config"
        );
        let (token_dir, _) = token_file.rsplit_once('/').unwrap();
        assert!(
            volume_of(token_dir)["secret"]["secretName"].is_string(),
            "{what}"
        );

        // Termination: the preStop pause and the drain fit in the grace period.
        let pause: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            pause + drain < grace,
            "{what}: {pause}s + {drain}s within {grace}s"
        );
    }
    assert_eq!(
        find("DaemonSet", "ballast-node")["spec"]["template"]["spec"]["hostNetwork"],
        true
    );

    // Services select pods and name container ports that exist.
    let deployment = find("Deployment", "ballast");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container_ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap();
    for service in all("Service") {
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod_labels[key], value, "{}", service["metadata"]["name"]);
        }
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = &port["targetPort"];
            let container_port = container_ports
                .iter()
                .find(|p| &p["name"] == target)
                .unwrap_or_else(|| panic!("no container port {target}"));
            assert_eq!(port["protocol"], container_port["protocol"]);
        }
    }

    // The ServiceMonitor scrapes /metrics through the metrics Service's admin port.
    let monitor = find("ServiceMonitor", "ballast");
    let metrics_service = all("Service")
        .into_iter()
        .find(|s| {
            monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &s["metadata"]["labels"][k] == v)
        })
        .expect("a Service the ServiceMonitor selects");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert!(metrics_service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == endpoint["port"]));
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(metrics_service["metadata"]["labels"][job_label], "ballast");

    // The same alerts as deploy/prometheus/alerts.yml.
    let alerts = yaml_documents(&repo().join("deploy/prometheus/alerts.yml"))
        .unwrap()
        .remove(0);
    assert_eq!(
        find("PrometheusRule", "ballast")["spec"]["groups"],
        alerts["groups"]
    );

    // The kustomization lists files that exist.
    let kustomization = all("Kustomization")[0];
    for resource in kustomization["resources"].as_array().unwrap() {
        assert!(dir.join(resource.as_str().unwrap()).is_file(), "{resource}");
    }
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

#[test]
fn systemd_unit_reloads_with_sighup_and_is_hardened() {
    let unit = read("deploy/systemd/ballast.service");
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap();
        keys.entry(format!("{section}{key}"))
            .or_default()
            .push(value.to_owned());
    }
    let get = |key: &str| -> Vec<String> {
        keys.get(&format!("[Service]{key}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        get("ExecReload").last().map(String::as_str),
        Some("/bin/kill -HUP $MAINPID")
    );
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("KillSignal", "SIGTERM"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(get(key), [value], "{key}");
    }
    let nofile: u64 = get("LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    // The stop timeout covers the default drain.
    assert!(seconds(&get("TimeoutStopSec")[0]) > 30);
    // The command lines work as written: `check` and `run` take the file from the
    // environment the unit sets.
    let environment = get("Environment");
    let (_, config) = environment[0].split_once('=').unwrap();
    assert_eq!(config, "/etc/ballast/ballast.yaml");
    // A supervisor as the main PID, so binary upgrades keep it; it alone gets SIGTERM and
    // forwards it, everything gets SIGKILL at the timeout.
    assert!(get("ExecStart")[0].ends_with("ballast run --supervise"));
    assert_eq!(get("KillMode"), ["mixed"]);
    run_ok(
        Command::new(binary())
            .arg("check")
            .env("BALLAST_CONFIG", repo().join("configs/tcp-basic.yaml")),
    );

    if !require_tool("systemd-analyze", "systemd") {
        return;
    }
    // `verify` wants the executables to exist: point them at the built binary.
    let dir = TempDir::new("systemd");
    let unit_path = dir.write(
        "ballast.service",
        &unit.replace("/usr/local/bin/ballast", binary()),
    );
    let output = run_ok(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_path),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let about_us: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ballast.service"))
        .collect();
    assert!(about_us.is_empty(), "{about_us:?}");
}

// ---------------------------------------------------------------------------------------
// Operator docs, against the code they describe
// ---------------------------------------------------------------------------------------

/// A `pub struct Raw*` of the loader's first stage: its generic defaults (`L = RawListener`)
/// and its fields with their types.
struct RawStruct {
    generics: BTreeMap<String, String>,
    fields: Vec<(String, String)>,
}

/// Every key path of the config file (`listeners[].udp.max_flows`), from the serde structs
/// in `crates/control/src/config/raw.rs`: serde reads each field under its own name, so the
/// field names are the YAML keys.
fn config_key_paths() -> BTreeSet<String> {
    let source = read("crates/control/src/config/raw.rs");
    let mut structs: BTreeMap<String, RawStruct> = BTreeMap::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        // Tuple structs (`RawDuration(pub String);`) are values, not mappings.
        let Some(head) = line
            .trim()
            .strip_prefix("pub struct ")
            .and_then(|rest| rest.strip_suffix('{'))
        else {
            continue;
        };
        let head = head.trim();
        let (name, generics) = match head.split_once('<') {
            Some((name, generics)) => (name, generics.trim_end_matches('>')),
            None => (head, ""),
        };
        let generics = generics
            .split(',')
            .filter_map(|g| g.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut fields = Vec::new();
        for line in lines.by_ref() {
            let line = line.trim();
            if line == "}" {
                break;
            }
            if let Some((field, ty)) = line.strip_prefix("pub ").and_then(|f| f.split_once(':')) {
                fields.push((
                    field.trim().to_owned(),
                    ty.trim().trim_end_matches(',').to_owned(),
                ));
            }
        }
        structs.insert(name.to_owned(), RawStruct { generics, fields });
    }
    let mut paths = BTreeSet::new();
    walk_struct("RawConfig", "", &structs, &mut paths);
    paths
}

fn walk_struct(
    name: &str,
    prefix: &str,
    structs: &BTreeMap<String, RawStruct>,
    out: &mut BTreeSet<String>,
) {
    let raw = &structs[name];
    for (field, ty) in &raw.fields {
        let path = if prefix.is_empty() {
            field.clone()
        } else {
            format!("{prefix}.{field}")
        };
        out.insert(path.clone());
        let ty = ty
            .strip_prefix("Option<")
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(ty);
        let (ty, child) = match ty.strip_prefix("Vec<").and_then(|t| t.strip_suffix('>')) {
            Some(item) => (item, format!("{path}[]")),
            None => (ty, path),
        };
        let ty = raw.generics.get(ty).map_or(ty, String::as_str);
        if structs.contains_key(ty) {
            walk_struct(ty, &child, structs, out);
        }
    }
}

/// The key paths a YAML value uses, in the same notation.
fn value_key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                value_key_paths(child, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                if item.is_object() {
                    value_key_paths(item, &format!("{prefix}[]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The fenced code blocks of `lang` in a markdown text.
fn code_blocks(markdown: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    markdown
        .split(&fence)
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_config_key_is_documented() {
    let paths = config_key_paths();
    assert!(paths.len() > 50, "{paths:?}");
    for expected in [
        "admin.token_file",
        "listeners[].udp.max_flows",
        "listeners[].tls_passthrough.routes[].alpn",
        "pools[].health_check.expect_hex",
        "pools[].backends[].max_connections",
    ] {
        assert!(paths.contains(expected), "{expected} not found in raw.rs");
    }

    let doc = read("docs/configuration.md");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !doc.contains(&format!("| `{p}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys missing from the tables of docs/configuration.md: {missing:?}"
    );
    // And nothing documented that the loader does not know.
    let reference = doc
        .split("## Every key")
        .nth(1)
        .unwrap()
        .split("### Algorithms")
        .next()
        .unwrap();
    for row in reference.lines().filter(|l| l.starts_with("| `")) {
        let key = row.split('`').nth(1).unwrap();
        assert!(
            paths.contains(key),
            "docs/configuration.md documents unknown key {key}"
        );
    }

    // The example file passes `ballast check` and uses every key.
    let example = &code_blocks(&doc, "yaml")[0];
    ballast_check(example, "the example of docs/configuration.md");
    let Some(parsed) = yaml_text_documents(example) else {
        return skip(&format!(
            "{NO_PYYAML}: not checked that the example uses every key"
        ));
    };
    let mut used = BTreeSet::new();
    value_key_paths(&parsed[0], "", &mut used);
    let unused: Vec<&String> = paths.difference(&used).collect();
    assert!(unused.is_empty(), "the example does not use {unused:?}");
}

/// `# TYPE` and label names of a live `/metrics` page: family -> (type, label names).
fn live_metric_families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned(), (kind.to_owned(), BTreeSet::new()));
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, _) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| families.get(*base).is_some_and(|(k, _)| k == "histogram"))
            })
            .unwrap_or(name);
        let entry = families.get_mut(family).unwrap_or_else(|| panic!("{line}"));
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').unwrap().0.trim_start_matches(',');
            if key != "le" {
                entry.1.insert(key.to_owned());
            }
        }
    }
    families
}

#[test]
fn every_metric_is_documented_with_its_type_and_labels() {
    // The table of docs/metrics.md: name -> (type, labels).
    let doc = read("docs/metrics.md");
    let mut documented: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    let family_row = |l: &&str| l.starts_with("| `ballast_") || l.starts_with("| `process_");
    for row in doc.lines().filter(family_row) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let labels = cells[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        documented.insert(name, (cells[2].to_owned(), labels));
    }

    // Every name of METRIC_NAMES.
    let source = read("crates/control/src/metrics.rs");
    let list = source
        .split("pub const METRIC_NAMES")
        .nth(1)
        .unwrap()
        .split("];")
        .next()
        .unwrap();
    let names: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
    assert!(names.len() >= 17, "{names:?}");
    for name in &names {
        assert!(
            documented.contains_key(*name),
            "{name} is not in docs/metrics.md"
        );
    }

    // What a running Ballast exports: every family documented, with its type and labels.
    let backend = common::named_backend("b", Duration::ZERO);
    let ballast = Ballast::run(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: web, listen: 127.0.0.1:0, pool: p }}\n  - {{ name: dns, protocol: udp, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    backends: [{{ address: \"{}\" }}]\n",
        backend.addr
    ));
    assert_eq!(common::ask(ballast.addr("web"), "hello"), "b");
    let (code, text) = common::http(ballast.admin(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    let live = live_metric_families(&text);
    assert_eq!(
        live.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        names.iter().copied().collect::<BTreeSet<_>>(),
        "METRIC_NAMES and /metrics differ"
    );
    for (name, (kind, labels)) in &live {
        let (doc_kind, doc_labels) = documented
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exported but not documented"));
        assert_eq!(doc_kind, kind, "type of {name}");
        assert_eq!(doc_labels, labels, "labels of {name}");
    }
}

/// The Ballast, HAProxy and nginx configurations shown in the docs are valid for their own
/// checker.
#[test]
fn configs_in_the_docs_pass_their_checkers() {
    let mut docs: Vec<PathBuf> = fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    let dir = TempDir::new("docs");
    let (mut ballast, mut haproxy, mut nginx) = (0, 0, 0);
    let has_haproxy = on_path("haproxy");
    let stream_module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    // `nginx -t` binds the `listen` addresses (53, 443, ...): in a namespace of its own.
    let has_nginx = on_path("nginx") && stream_module.is_file() && is_root() && on_path("ip");
    let nginx_ns = has_nginx.then(|| Netns::new("nginx"));
    for path in &docs {
        let text = fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for (i, block) in code_blocks(&text, "yaml").iter().enumerate() {
            if block.lines().any(|l| l.starts_with("listeners:")) {
                ballast_check(block, &format!("{name}: yaml block {i}"));
                ballast += 1;
            }
        }
        for (i, block) in code_blocks(&text, "haproxy").iter().enumerate() {
            haproxy += 1;
            if has_haproxy {
                let file = dir.write(&format!("{name}-{i}.cfg"), block);
                run_ok(Command::new("haproxy").arg("-c").arg("-f").arg(&file));
            }
        }
        for (i, block) in code_blocks(&text, "nginx").iter().enumerate() {
            nginx += 1;
            if has_nginx {
                let conf = format!(
                    "load_module {};\npid {}/nginx.pid;\nevents {{}}\n{block}",
                    stream_module.display(),
                    dir.path().display()
                );
                let file = dir.write(&format!("{name}-{i}.conf"), &conf);
                run_ok(
                    nginx_ns
                        .as_ref()
                        .unwrap()
                        .exec("nginx")
                        .args(["-t", "-q", "-e", "stderr", "-p"])
                        .arg(dir.path())
                        .arg("-c")
                        .arg(&file),
                );
            }
        }
    }
    assert!(
        ballast >= 7 && haproxy >= 3 && nginx >= 3,
        "{ballast} {haproxy} {nginx}"
    );
    if !has_haproxy {
        skip("`haproxy` not found (apt-get install haproxy): no `haproxy -c` on the docs' blocks");
    }
    if !has_nginx {
        skip(
            "`nginx -t` on the docs' blocks needs root, `ip`, and `nginx` with the stream module \
             (apt-get install nginx libnginx-mod-stream)",
        );
    }
}

/// Relative links between the docs and to the recipes lead somewhere, anchors included.
#[test]
fn doc_links_resolve() {
    let docs_dir = repo().join("docs");
    let mut checked = 0;
    for entry in fs::read_dir(&docs_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap();
            if target.starts_with("http") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target, None),
            };
            let file = if file.is_empty() {
                path.clone()
            } else {
                docs_dir.join(file)
            };
            assert!(file.exists(), "{}: broken link {target}", path.display());
            if let Some(anchor) = anchor {
                let anchors = markdown_anchors(&fs::read_to_string(&file).unwrap());
                assert!(
                    anchors.contains(anchor),
                    "{}: no #{anchor} in {}",
                    path.display(),
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 10);
}
