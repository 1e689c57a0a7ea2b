//! Host side of the QEMU guest tests: where the prepared artifacts live, how a
//! guest is booted for one scenario, and how its result channel is judged.
//!
//! `cargo xtask vm-prepare` writes `target/vm-cache/vm-test.env` (the default kernel) and
//! `vm-test-KV.env` per prepared kernel; everything here starts from one of those files
//! (`VMTEST_KERNEL` selects another kernel, see [`env_file`]). The guest agent (`vm-agent`, PID 1 in the initramfs)
//! reports on the second serial port, one line per event:
//!
//! ```text
//! VMTEST BEGIN <scenario>
//! VMTEST LOG <text>
//! VMTEST CHECK PASS|FAIL <name> :: <detail>
//! VMTEST END PASS|FAIL
//! ```
#![forbid(unsafe_code)]

pub mod guest_data;
pub mod registry;

pub use guest_data::{C5_MOUNTS, DEBIAN_STAP_RUNS, StapRun, stap_command};

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Console texts that mean the guest kernel is broken.
pub const KERNEL_FAILURE_MARKERS: &[&str] = &[
    "Kernel panic",
    "soft lockup",
    "BUG:",
    "Oops",
    "WARNING: CPU:",
    "general protection fault",
    // Printed before every WARN and BUG report; 7.x's WARN line no longer reads "WARNING: CPU:".
    "[ cut here ]",
];

/// The file `vm-prepare` writes last for the default guest kernel (Debian bookworm's 6.1),
/// naming the kernel and initramfs.
pub const ENV_FILE: &str = "vm-test.env";

/// Selects a guest kernel other than the default: an ABI (`6.12.95+deb12-cloud-amd64`) or a
/// prefix of one (`6.12`, `7`); the newest prepared match is used (see [`env_file`]).
pub const KERNEL_VAR: &str = "VMTEST_KERNEL";

/// The per-kernel copy of [`ENV_FILE`] that `vm-prepare` writes for every kernel it prepares.
pub fn kernel_env_name(kver: &str) -> String {
    format!("vm-test-{kver}.env")
}

/// The env file the tests use: [`ENV_FILE`], or with `VMTEST_KERNEL` set, the newest
/// `vm-test-KV.env` whose KV is that value or starts with it followed by `.`, `-` or `+`
/// (so `6.1` never selects a 6.12 kernel).
pub fn env_file() -> Result<PathBuf, String> {
    let cache = cache_dir();
    let wanted = std::env::var(KERNEL_VAR).unwrap_or_default();
    let wanted = wanted.trim().trim_start_matches("linux-image-");
    if wanted.is_empty() {
        return Ok(cache.join(ENV_FILE));
    }
    let exact = cache.join(kernel_env_name(wanted));
    if exact.is_file() {
        return Ok(exact);
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let mut prepared = Vec::new();
    for e in fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(kver) = name
            .strip_prefix("vm-test-")
            .and_then(|n| n.strip_suffix(".env"))
        else {
            continue;
        };
        prepared.push(kver.to_owned());
        let matches = kver
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with(['.', '-', '+']));
        if matches {
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((mtime, e.path()));
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        prepared.sort();
        format!(
            "{KERNEL_VAR}={wanted}: no prepared guest kernel matches (prepared in {}: {prepared:?}): run `cargo xtask vm-prepare --kernel {wanted}`",
            cache.display()
        )
    })
}

/// Hint printed whenever an artifact is missing.
pub const PREPARE_HINT: &str =
    "run `cargo xtask vm-prepare` (as root, it installs what is missing)";

/// The workspace's target directory (`CARGO_TARGET_DIR` if set when this crate was built or run).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = manifest
        .canonicalize()
        .unwrap_or_else(|_| manifest.to_path_buf());
    manifest.parent().unwrap_or(&manifest).join("target")
}

/// `target/vm-cache`, or `$VMTEST_CACHE`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("VMTEST_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join("vm-cache"),
    }
}

/// `target/vm-logs`: console and result logs of every boot.
pub fn log_dir() -> PathBuf {
    target_dir().join("vm-logs")
}

/// What `vm-prepare` produced.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub kver: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `tcg` or `kvm`
    pub accel: String,
    /// The QEMU CPU model under TCG (`cpu=` in the env file; default `max`).
    pub cpu: String,
    /// False when prepared with `--infra-only` (no staprun/stapio in the image).
    pub product: bool,
}

impl Artifacts {
    /// Reads `vm-test.env` (or, with `VMTEST_KERNEL` set, that kernel's `vm-test-KV.env`) from
    /// the cache and checks that every file exists.
    pub fn load() -> Result<Self, String> {
        let env = env_file()?;
        let text = fs::read_to_string(&env).map_err(|e| {
            format!(
                "VM artifacts not prepared ({}: {e}): {PREPARE_HINT}",
                env.display()
            )
        })?;
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::to_owned)
                .ok_or_else(|| format!("{} has no `{key}=` line: {PREPARE_HINT}", env.display()))
        };
        let art = Artifacts {
            kver: get("kver")?,
            kernel: PathBuf::from(get("kernel")?),
            initrd: PathBuf::from(get("initrd")?),
            accel: get("accel").unwrap_or_else(|_| "tcg".into()),
            cpu: get("cpu").unwrap_or_else(|_| "max".into()),
            product: get("product").map(|p| p != "no").unwrap_or(true),
        };
        for p in [&art.kernel, &art.initrd] {
            if !p.is_file() {
                return Err(format!(
                    "prepared artifact {} is missing: {PREPARE_HINT}",
                    p.display()
                ));
            }
        }
        if which("qemu-system-x86_64").is_none() {
            return Err(format!(
                "qemu-system-x86_64 not found in PATH: {PREPARE_HINT}"
            ));
        }
        Ok(art)
    }
}

/// Finds an executable in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// How one guest boot is run.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub scenario: String,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    pub timeout: Duration,
    pub smp: u32,
    pub mem_mib: u32,
    /// A root file system on a virtio disk (a Debian guest with systemd as PID 1) instead of
    /// the initramfs agent as PID 1: `root=/dev/vda`, no `rdinit=`.
    pub disk: Option<PathBuf>,
    /// A second disk (raw image), attached read-only as `/dev/vdb`: files for the guest.
    pub share: Option<PathBuf>,
    /// How long the guest may take before its agent reports `BEGIN`.
    pub agent_start_limit: Duration,
}

impl BootSpec {
    pub fn new(scenario: &str) -> Self {
        let timeout = std::env::var("VMTEST_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(180));
        BootSpec {
            scenario: scenario.into(),
            append: Vec::new(),
            timeout,
            smp: 2,
            mem_mib: 512,
            disk: None,
            share: None,
            agent_start_limit: AGENT_START_LIMIT,
        }
    }
}

/// A finished guest run.
#[derive(Debug)]
pub struct GuestRun {
    pub scenario: String,
    pub console: String,
    pub results: Vec<String>,
    pub elapsed: Duration,
    pub console_log: PathBuf,
    pub results_log: PathBuf,
}

/// The judged outcome of a run.
#[derive(Debug)]
pub struct Verdict {
    pub passed: usize,
    pub failed: Vec<String>,
    pub ended: Option<bool>,
}

impl GuestRun {
    /// Lines of the result channel without the `VMTEST ` prefix.
    pub fn events(&self) -> impl Iterator<Item = &str> {
        self.results
            .iter()
            .filter_map(|l| l.strip_prefix("VMTEST "))
    }

    pub fn verdict(&self) -> Verdict {
        let mut v = Verdict {
            passed: 0,
            failed: Vec::new(),
            ended: None,
        };
        for e in self.events() {
            if e.starts_with("CHECK PASS ") {
                v.passed += 1;
            } else if let Some(rest) = e.strip_prefix("CHECK FAIL ") {
                v.failed.push(rest.to_owned());
            } else if let Some(rest) = e.strip_prefix("END ") {
                v.ended = Some(rest.trim() == "PASS");
            }
        }
        v
    }

    /// The whole result channel, for failure reports.
    pub fn transcript(&self) -> String {
        let mut s = String::new();
        for l in &self.results {
            let _ = writeln!(s, "  {l}");
        }
        s
    }

    /// Ok if the guest reported END PASS with no failed checks.
    pub fn assert_passed(&self) -> Result<(), String> {
        let v = self.verdict();
        let problem = match (v.ended, v.failed.is_empty(), v.passed) {
            (None, _, _) => {
                Some("guest never reported VMTEST END (agent crashed or timed out)".to_owned())
            }
            (Some(_), false, _) => Some(format!(
                "{} check(s) failed: {}",
                v.failed.len(),
                v.failed.join(" | ")
            )),
            (Some(false), true, _) => Some("guest reported END FAIL".to_owned()),
            (Some(true), true, 0) => Some("guest ran no check".to_owned()),
            _ => None,
        };
        match problem {
            None => Ok(()),
            Some(p) => Err(format!(
                "scenario {}: {p}\n--- guest transcript ({}) ---\n{}--- console: {} ---\n{}",
                self.scenario,
                self.results_log.display(),
                self.transcript(),
                self.console_log.display(),
                tail(&self.console, 60)
            )),
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    let start = v.len().saturating_sub(lines);
    v[start..].join("\n")
}

fn find_marker(console: &str) -> Option<&'static str> {
    KERNEL_FAILURE_MARKERS
        .iter()
        .copied()
        .find(|m| console.contains(m))
}

/// Boots one guest running `spec.scenario` and waits for it to power off.
///
/// Fails (with the console attached) on a kernel failure marker, on the hard
/// timeout (QEMU is killed), or when QEMU cannot start.
/// How long a guest may take to start its agent (it takes 2-5 s under TCG).
const AGENT_START_LIMIT: Duration = Duration::from_secs(60);

/// Boots a guest, and boots it once more if the first one died before its
/// agent started (QEMU's TCG occasionally hangs or oopses in early boot;
/// nothing of ours has run then). The retry is said on stderr.
pub fn boot(art: &Artifacts, spec: &BootSpec) -> Result<GuestRun, String> {
    match boot_once(art, spec) {
        Err(BootError::BeforeAgent(first)) => {
            eprintln!(
                "vm: scenario {}: the guest died before its agent started ({}): booting it once more",
                spec.scenario,
                first.lines().next().unwrap_or("")
            );
            boot_once(art, spec).map_err(|e| {
                format!(
                    "{} (an earlier boot had died before its agent started too)",
                    e.text()
                )
            })
        }
        r => r.map_err(BootError::into_text),
    }
}

/// Why a boot failed.
#[derive(Debug)]
pub enum BootError {
    /// Before the guest agent started (no `VMTEST BEGIN` line).
    BeforeAgent(String),
    /// Anything else.
    Other(String),
}

impl BootError {
    pub fn text(&self) -> &str {
        match self {
            BootError::BeforeAgent(s) | BootError::Other(s) => s,
        }
    }

    pub fn into_text(self) -> String {
        match self {
            BootError::BeforeAgent(s) | BootError::Other(s) => s,
        }
    }
}

/// The QEMU process of one boot (duct): stdin /dev/null, stdout and stderr captured. Dropped
/// while it still runs (an early return, a panic), it is killed and reaped, so no guest outlives
/// its boot.
struct Qemu(duct::Handle);

impl Qemu {
    fn start(args: Vec<OsString>) -> std::io::Result<Qemu> {
        duct::cmd("qemu-system-x86_64", args)
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .start()
            .map(Qemu)
    }

    /// Waits for QEMU to exit; what it wrote on stderr.
    fn stderr(&self) -> String {
        self.0
            .wait()
            .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One boot, no retry.
pub fn boot_once(art: &Artifacts, spec: &BootSpec) -> Result<GuestRun, BootError> {
    let logs = log_dir();
    fs::create_dir_all(&logs)
        .map_err(|e| BootError::Other(format!("cannot create {}: {e}", logs.display())))?;
    let stem = format!("{}-{}", spec.scenario, std::process::id());
    let console_log = logs.join(format!("{stem}.console.log"));
    let results_log = logs.join(format!("{stem}.results.log"));
    for p in [&console_log, &results_log] {
        let _ = fs::remove_file(p);
    }
    let mut append = vec![
        "console=ttyS0".to_owned(),
        "panic=-1".to_owned(),
        "oops=panic".to_owned(),
        "tsc=reliable".to_owned(),
        format!("vmtest.scenario={}", spec.scenario),
    ];
    if spec.disk.is_some() {
        append.extend(["root=/dev/vda".to_owned(), "rw".to_owned()]);
    } else {
        append.push("rdinit=/init".to_owned());
    }
    append.extend(spec.append.iter().cloned());

    let (accel, cpu) = if art.accel == "kvm" {
        ("kvm", "host")
    } else {
        ("tcg", art.cpu.as_str())
    };
    let mut args: Vec<OsString> = [
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        &spec.smp.to_string(),
        "-m",
        &spec.mem_mib.to_string(),
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        &format!("file:{}", console_log.display()),
        "-serial",
        &format!("file:{}", results_log.display()),
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    .map(OsString::from)
    .into();
    args.extend([
        "-kernel".into(),
        art.kernel.clone().into(),
        "-initrd".into(),
        art.initrd.clone().into(),
        "-append".into(),
        append.join(" ").into(),
    ]);
    if let Some(d) = &spec.disk {
        args.extend([
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2", d.display()).into(),
        ]);
    }
    if let Some(d) = &spec.share {
        args.extend([
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", d.display()).into(),
        ]);
    }

    let start = Instant::now();
    let qemu = Qemu::start(args)
        .map_err(|e| BootError::Other(format!("cannot start qemu-system-x86_64: {e}")))?;
    let agent_started = || {
        fs::read(&results_log)
            .map(|b| b.windows(13).any(|w| w == b"VMTEST BEGIN "))
            .unwrap_or(false)
    };
    let mut began = false;
    let read_console = || {
        fs::read(&console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let failure = loop {
        match qemu.0.try_wait() {
            Ok(Some(_)) => break None,
            Ok(None) => {}
            Err(e) => break Some(format!("waiting for QEMU failed: {e}")),
        }
        if start.elapsed() > spec.timeout {
            break Some(format!(
                "QEMU hard timeout after {:?}: killed",
                spec.timeout
            ));
        }
        if !began && start.elapsed() > spec.agent_start_limit.min(spec.timeout) {
            began = agent_started();
            if !began {
                break Some(format!(
                    "the guest agent did not start within {:?} (early boot hang): killed",
                    spec.agent_start_limit
                ));
            }
        }
        if let Some(m) = find_marker(&read_console()) {
            // Let the kernel finish printing the report, then stop the guest.
            std::thread::sleep(Duration::from_millis(1500));
            break Some(format!("guest kernel failure: console shows {m:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if failure.is_some() {
        let _ = qemu.0.kill();
    }
    let qemu_err = qemu.stderr();
    let elapsed = start.elapsed();
    let console = read_console();
    let results = fs::read(&results_log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    let run = GuestRun {
        scenario: spec.scenario.clone(),
        console,
        results,
        elapsed,
        console_log,
        results_log,
    };
    let failure = failure.or_else(|| {
        find_marker(&run.console).map(|m| format!("guest kernel failure: console shows {m:?}"))
    });
    if let Some(f) = failure {
        let text = format!(
            "scenario {}: {f}\nqemu stderr: {}\n--- guest transcript ---\n{}--- console ({}) ---\n{}",
            run.scenario,
            qemu_err.trim(),
            run.transcript(),
            run.console_log.display(),
            tail(&run.console, 80)
        );
        let before_agent = !run.events().any(|e| e.starts_with("BEGIN "));
        return Err(if before_agent {
            BootError::BeforeAgent(text)
        } else {
            BootError::Other(text)
        });
    }
    if run.results.is_empty() && !qemu_err.trim().is_empty() {
        return Err(BootError::Other(format!(
            "scenario {}: QEMU failed: {}",
            run.scenario,
            qemu_err.trim()
        )));
    }
    Ok(run)
}

/// Boots a scenario and requires it to pass. Returns the run for timings.
/// Scenarios other than `infra_boot`/`boot` need the product in the image.
pub fn run_scenario(spec: &BootSpec) -> Result<GuestRun, String> {
    let art = Artifacts::load()?;
    if !art.product && !matches!(spec.scenario.as_str(), "infra_boot" | "boot") {
        return Err(format!(
            "scenario {}: the initramfs was prepared with --infra-only (no staprun/stapio): run `cargo xtask vm-prepare`",
            spec.scenario
        ));
    }
    let run = boot(&art, spec)?;
    run.assert_passed()?;
    Ok(run)
}
