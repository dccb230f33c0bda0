//! Run tests inside a software-emulated guest VM (qemu TCG) that has real device-mapper.
//!
//! The host kernel has no device-mapper (and no ZFS), so tests that need them re-execute
//! their own test binary inside a guest: Debian's kernel, a busybox initramfs built from
//! `tests/guest/` at every boot (under a second), and the host's root shared read-only over
//! 9p under an overlay, so the test binary, `lvcreate`, `mariadbd` ... are at the same paths
//! and every write stays in guest RAM. Results come back through a second 9p share.
//!
//! Pattern (one boot per group of tests; a boot costs ~8 s):
//!
//! ```no_run
//! use dbsnap_test_support::guest::{self, Guest};
//!
//! #[test]
//! fn lvm_suite() {
//!     // On the host: boot once, run every `in_guest_` test of this binary inside.
//!     Guest::new("lvm")
//!         .disk("data", 1024)
//!         .module("dm_snapshot")
//!         .run_this_binary(&["--include-ignored", "in_guest_"])
//!         .assert_success();
//! }
//!
//! #[test]
//! #[ignore = "runs inside the TCG guest, started by lvm_suite"]
//! fn in_guest_something() {
//!     guest::require_guest();
//!     let dev = guest::disk("data"); // /dev/vdX
//!     # let _ = dev;
//! }
//! ```
//!
//! Knobs (environment, on the host): `DBSNAP_GUEST_KERNEL` (kernel version, default the
//! newest `/boot/vmlinuz-*` with modules), `DBSNAP_GUEST_TIMEOUT` (seconds, default 1500),
//! `DBSNAP_GUEST_DIR` (runs and disks, default `/var/tmp/dbsnap-guest`),
//! `DBSNAP_GUEST_KEEP=1` (keep the run directory, disks included),
//! `DBSNAP_GUEST_NATIVE=1` (no VM: run the job directly on this machine, with loop devices
//! as disks; only for a throw-away machine that has device-mapper, e.g. `vagrant/`).
//!
//! Only one guest runs at a time on a machine (a lock file in `DBSNAP_GUEST_DIR`): two TCG
//! guests on two cores only halve each other's speed.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

/// Set (to `1`) in the environment of everything the guest runs.
pub const IN_GUEST_ENV: &str = "DBSNAP_IN_GUEST";
/// In native mode, `name=/dev/loopN;...` for [`disk`].
const NATIVE_DISKS_ENV: &str = "DBSNAP_GUEST_DISKS";

/// The LVM suite alone takes ~10 min on a quiet 2-core machine (7 in-guest tests).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1500);
const DEFAULT_MEMORY_MIB: u64 = 2048;
/// virtio-blk serial numbers are at most 20 bytes; the disk name is the serial.
const MAX_DISK_NAME: usize = 20;

/// Whether this process runs inside the test guest.
pub fn in_guest() -> bool {
    std::env::var_os(IN_GUEST_ENV).is_some()
}

/// Fail a guest-only test that was started on the host, saying how to run it.
pub fn require_guest() {
    assert!(
        in_guest(),
        "this test needs real device-mapper and runs only inside the TCG guest; run the \
         test that boots the guest (it passes `--include-ignored` itself) instead of \
         `--include-ignored` on the host"
    );
}

/// Inside the guest: the block device of the disk added with [`Guest::disk`] under `name`.
pub fn disk(name: &str) -> PathBuf {
    require_guest();
    // Native mode (see `DBSNAP_GUEST_NATIVE`): loop devices, named in the environment.
    if let Ok(map) = std::env::var(NATIVE_DISKS_ENV) {
        return map
            .split(';')
            .filter_map(|entry| entry.split_once('='))
            .find(|(disk, _)| *disk == name)
            .map(|(_, dev)| PathBuf::from(dev))
            .unwrap_or_else(|| panic!("no disk named {name:?} in {NATIVE_DISKS_ENV}={map:?}"));
    }
    let mut seen = Vec::new();
    for entry in fs::read_dir("/sys/block")
        .expect("reading /sys/block")
        .flatten()
    {
        let dev = entry.file_name().to_string_lossy().into_owned();
        if !dev.starts_with("vd") {
            continue;
        }
        let serial = fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if serial.trim() == name {
            return PathBuf::from("/dev").join(dev);
        }
        seen.push(format!("{dev}={}", serial.trim()));
    }
    panic!("no guest disk named {name:?}; disks present: {seen:?}");
}

/// A guest to boot: disks, kernel modules, environment.
#[derive(Debug, Clone)]
pub struct Guest {
    name: String,
    disks: Vec<(String, u64)>,
    modules: Vec<String>,
    env: Vec<(String, String)>,
    memory_mib: u64,
    timeout: Duration,
}

/// What the job in the guest did.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The job's exit status.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    /// Seconds from power-on until the job started (guest uptime).
    pub boot_seconds: Option<f64>,
    /// Host wall time of the whole run, boot and power-off included.
    pub wall: Duration,
}

impl GuestRun {
    /// Panic unless the job exited 0. The guest's output was already printed by `run`.
    pub fn assert_success(&self) {
        assert_eq!(
            self.status, 0,
            "the job in the guest failed with status {} (its output is printed above)",
            self.status
        );
    }
}

impl Guest {
    /// `name` labels the run directory and the messages; letters, digits, `-`, `_`.
    pub fn new(name: &str) -> Guest {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "guest name {name:?}: use letters, digits, '-' and '_'"
        );
        let timeout = std::env::var("DBSNAP_GUEST_TIMEOUT")
            .ok()
            .map(|s| {
                Duration::from_secs(s.parse().unwrap_or_else(|_| {
                    panic!("DBSNAP_GUEST_TIMEOUT={s:?} is not a number of seconds")
                }))
            })
            .unwrap_or(DEFAULT_TIMEOUT);
        Guest {
            name: name.to_string(),
            disks: Vec::new(),
            modules: Vec::new(),
            env: Vec::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            timeout,
        }
    }

    /// Add an empty sparse virtio disk of `size_mib` MiB; in the guest, [`disk`]`(name)`
    /// finds it (the name is the disk's serial number, at most 20 characters).
    pub fn disk(mut self, name: &str, size_mib: u64) -> Guest {
        assert!(
            !name.is_empty()
                && name.len() <= MAX_DISK_NAME
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "disk name {name:?}: use 1 to {MAX_DISK_NAME} letters, digits, '-' and '_'"
        );
        assert!(
            !self.disks.iter().any(|(n, _)| n == name),
            "disk {name:?} added twice"
        );
        self.disks.push((name.to_string(), size_mib));
        self
    }

    /// Load a kernel module in the guest before the job starts (e.g. `dm_snapshot`).
    pub fn module(mut self, module: &str) -> Guest {
        self.modules.push(module.to_string());
        self
    }

    /// Set an environment variable for the job.
    pub fn env(mut self, key: &str, value: &str) -> Guest {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn memory_mib(mut self, mib: u64) -> Guest {
        self.memory_mib = mib;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Guest {
        self.timeout = timeout;
        self
    }

    /// Run the current test binary in the guest with libtest arguments (filters,
    /// `--include-ignored`, `--exact` ...); tests run one at a time, output uncaptured.
    pub fn run_this_binary(self, args: &[&str]) -> GuestRun {
        let exe = std::env::current_exe().expect("finding the current test binary");
        let mut argv: Vec<OsString> = vec![exe.into()];
        argv.extend(["--test-threads=1", "--nocapture"].map(OsString::from));
        argv.extend(args.iter().map(OsString::from));
        self.run(&argv)
    }

    /// Boot the guest, run `argv` (a program on the host's root) in it, power off.
    ///
    /// Prints the guest's stdout and stderr. Panics, with the tail of the console log, when
    /// the guest did not get to report a status: kernel panic, boot failure, timeout.
    pub fn run(self, argv: &[OsString]) -> GuestRun {
        let base = guest_dir();
        fs::create_dir_all(&base).unwrap_or_else(|e| panic!("creating {}: {e}", base.display()));
        let _lock = lock_machine(&base);
        let run_dir = base.join(format!(
            "{}-{}-{}",
            self.name,
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&run_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", run_dir.display()));
        let result = if std::env::var_os("DBSNAP_GUEST_NATIVE").is_some() {
            Ok(self.run_native(&run_dir, argv))
        } else {
            self.boot(&run_dir, argv)
        };
        let keep = std::env::var_os("DBSNAP_GUEST_KEEP").is_some();
        match &result {
            Ok(run) if run.status == 0 && !keep => {
                let _ = fs::remove_dir_all(&run_dir);
            }
            _ if keep => eprintln!("guest run directory kept: {}", run_dir.display()),
            _ => {
                // Keep the logs for a look after a failure, not the disk images and initrd.
                for (name, _) in &self.disks {
                    let _ = fs::remove_file(run_dir.join(format!("{name}.img")));
                }
                let _ = fs::remove_file(run_dir.join("initrd.gz"));
                eprintln!("guest logs kept in {}", run_dir.display());
            }
        }
        match result {
            Ok(run) => run,
            Err(message) => panic!("{message}"),
        }
    }

    fn boot(&self, run_dir: &Path, argv: &[OsString]) -> Result<GuestRun, String> {
        let kernel = GuestKernel::find();
        let initrd = run_dir.join("initrd.gz");
        build_initramfs(&kernel.version, &initrd);
        self.write_job(run_dir, argv);

        let guest_init = guest_files().join("guest-init.sh");
        check_plain_path(&guest_init, "the kernel command line");
        check_plain_path(run_dir, "qemu's -virtfs option");
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-machine", "accel=tcg", "-smp", "2", "-nographic", "-no-reboot"])
            .args(["-net", "none", "-m", &self.memory_mib.to_string()])
            .arg("-kernel")
            .arg(&kernel.image)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet dbsnap.init={}",
                guest_init.display()
            ))
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap,id=hostroot,readonly=on",
            ])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=results,security_model=passthrough,id=results",
                run_dir.display()
            ))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        for (index, (name, size_mib)) in self.disks.iter().enumerate() {
            let image = run_dir.join(format!("{name}.img"));
            fs::File::create(&image)
                .and_then(|f| f.set_len(size_mib << 20))
                .unwrap_or_else(|e| panic!("creating disk image {}: {e}", image.display()));
            qemu.arg("-drive")
                .arg(format!(
                    "file={},if=none,id=disk{index},format=raw,cache=unsafe",
                    image.display()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk{index},serial={name}"));
        }
        let console_path = run_dir.join("console.log");
        let console = fs::File::create(&console_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", console_path.display()));
        let console_err = console.try_clone().expect("duplicating a file handle");

        let started = Instant::now();
        let mut child = qemu
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting qemu-system-x86_64 failed ({e}): apt-get install qemu-system-x86")
            });
        let qemu_status = loop {
            if let Some(status) = child.try_wait().expect("waiting for qemu") {
                break Some(status);
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let wall = started.elapsed();
        let console_log = fs::read_to_string(&console_path).unwrap_or_default();
        let tail = tail_lines(&console_log, 40);
        let read = |file: &str| fs::read_to_string(run_dir.join(file)).unwrap_or_default();
        let stdout = read("stdout");
        let stderr = read("stderr");
        print_output(&self.name, &stdout, &stderr);

        let Some(qemu_status) = qemu_status else {
            return Err(format!(
                "guest {} did not finish within {} s and was killed (set DBSNAP_GUEST_TIMEOUT \
                 to allow longer). Console log tail:\n{tail}",
                self.name,
                self.timeout.as_secs()
            ));
        };
        if console_log.contains("Kernel panic") {
            return Err(format!(
                "the guest kernel panicked. Console log tail:\n{tail}"
            ));
        }
        let rc_text = read("rc");
        let Ok(status) = rc_text.trim().parse::<i32>() else {
            return Err(format!(
                "guest {} powered off without reporting a status (qemu {qemu_status}; no rc \
                 file in {}). Console log tail:\n{tail}",
                self.name,
                run_dir.display()
            ));
        };
        // isa-debug-exit makes qemu exit with (status << 1) | 1; anything else means the
        // guest did not power off the way guest-init.sh does it.
        if qemu_status.code() != Some(((status & 0x7f) << 1) | 1) {
            eprintln!(
                "warning: guest {} reported status {status} but qemu exited with {qemu_status}",
                self.name
            );
        }
        let boot_seconds = read("boot").trim().parse().ok();
        eprintln!(
            "guest {}: status {status}, job started at {:.1} s uptime, {:.1} s wall",
            self.name,
            boot_seconds.unwrap_or(f64::NAN),
            wall.as_secs_f64()
        );
        Ok(GuestRun {
            status,
            stdout,
            stderr,
            boot_seconds,
            wall,
        })
    }

    /// Native mode, for a real (throw-away!) machine such as the Vagrant VMs: run the job
    /// here, as root, with loop devices as the disks and the modules loaded by modprobe.
    /// udev is left in charge of device nodes, so `DM_DISABLE_UDEV` is not set.
    fn run_native(&self, run_dir: &Path, argv: &[OsString]) -> GuestRun {
        let started = Instant::now();
        for module in &self.modules {
            run_host(Command::new("modprobe").arg(module));
        }
        let mut loops: Vec<(String, String)> = Vec::new();
        for (name, size_mib) in &self.disks {
            let image = run_dir.join(format!("{name}.img"));
            fs::File::create(&image)
                .and_then(|f| f.set_len(size_mib << 20))
                .unwrap_or_else(|e| panic!("creating disk image {}: {e}", image.display()));
            let dev = run_host(
                Command::new("losetup")
                    .args(["--find", "--show"])
                    .arg(&image),
            );
            loops.push((name.clone(), dev.trim().to_string()));
        }
        let map: Vec<String> = loops.iter().map(|(n, d)| format!("{n}={d}")).collect();
        let mut job = Command::new(&argv[0]);
        job.args(&argv[1..])
            .env(IN_GUEST_ENV, "1")
            .env(NATIVE_DISKS_ENV, map.join(";"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let output = job.output();
        for (_, dev) in &loops {
            run_host(Command::new("losetup").args(["--detach", dev]));
        }
        let output = output.unwrap_or_else(|e| panic!("starting {:?} failed: {e}", argv[0]));
        let run = GuestRun {
            status: output.status.code().unwrap_or(128),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            boot_seconds: None,
            wall: started.elapsed(),
        };
        print_output(&self.name, &run.stdout, &run.stderr);
        run
    }

    /// The job, as data guest-init.sh reads (NUL-separated lists, nothing to quote).
    fn write_job(&self, run_dir: &Path, argv: &[OsString]) {
        let write = |file: &str, bytes: &[u8]| {
            let path = run_dir.join(file);
            fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        };
        let mut argv_bytes = Vec::new();
        for arg in argv {
            argv_bytes.extend_from_slice(arg.as_bytes());
            argv_bytes.push(0);
        }
        write("argv", &argv_bytes);

        let mut env: Vec<(String, String)> = vec![
            (IN_GUEST_ENV.into(), "1".into()),
            // No udev in the guest: without this, lvcreate waits for device nodes forever.
            ("DM_DISABLE_UDEV".into(), "1".into()),
            ("RUST_BACKTRACE".into(), "1".into()),
        ];
        for key in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(value) = std::env::var(key) {
                env.push((key.into(), value));
            }
        }
        env.extend(self.env.iter().cloned());
        let mut env_bytes = Vec::new();
        for (key, value) in &env {
            env_bytes.extend_from_slice(format!("{key}={value}").as_bytes());
            env_bytes.push(0);
        }
        write("env", &env_bytes);

        let cwd = std::env::current_dir().expect("reading the current directory");
        write("cwd", cwd.as_os_str().as_bytes());
        let mut modules = self.modules.clone();
        if !self.disks.is_empty() {
            modules.insert(0, "virtio_blk".into());
        }
        write("modules", modules.join("\n").as_bytes());
        write("disks", self.disks.len().to_string().as_bytes());
    }
}

fn print_output(name: &str, stdout: &str, stderr: &str) {
    println!("----- guest {name} stdout -----\n{}", stdout.trim_end());
    println!("----- guest {name} stderr -----\n{}", stderr.trim_end());
    println!("----- end of guest {name} output -----");
}

/// Run a host command for the harness; panic with its stderr if it fails.
fn run_host(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} could not start: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `tests/guest/` in the source tree: the initramfs builder and the guest's PID-1 script.
pub fn guest_files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest")
}

fn guest_dir() -> PathBuf {
    std::env::var_os("DBSNAP_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/dbsnap-guest"))
}

/// Hold the machine-wide guest lock until the returned guard is dropped.
fn lock_machine(base: &Path) -> Flock<fs::File> {
    let path = base.join("qemu.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return lock,
        Err((file, _)) => file,
    };
    eprintln!(
        "another test guest is running (lock {}); waiting for it",
        path.display()
    );
    let _ = std::io::stderr().flush();
    Flock::lock(file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()))
}

struct GuestKernel {
    version: String,
    image: PathBuf,
}

impl GuestKernel {
    /// `DBSNAP_GUEST_KERNEL`, or the newest `/boot/vmlinuz-*` that has its modules installed.
    fn find() -> GuestKernel {
        let version = match std::env::var("DBSNAP_GUEST_KERNEL") {
            Ok(version) => version,
            Err(_) => {
                let mut versions: Vec<String> = fs::read_dir("/boot")
                    .map(|entries| {
                        entries
                            .flatten()
                            .filter_map(|e| {
                                let file = e.file_name().to_string_lossy().into_owned();
                                file.strip_prefix("vmlinuz-").map(str::to_string)
                            })
                            .filter(|v| Path::new("/lib/modules").join(v).join("kernel").is_dir())
                            .collect()
                    })
                    .unwrap_or_default();
                versions.sort_by_key(|v| natural_key(v));
                versions.pop().unwrap_or_else(|| {
                    panic!(
                        "no guest kernel: no /boot/vmlinuz-* with modules in /lib/modules. \
                         Install one: apt-get install linux-image-amd64"
                    )
                })
            }
        };
        let image = PathBuf::from(format!("/boot/vmlinuz-{version}"));
        assert!(
            image.is_file(),
            "guest kernel {} not found (DBSNAP_GUEST_KERNEL={version})",
            image.display()
        );
        GuestKernel { version, image }
    }
}

/// Sort key that orders `6.1.0-10` after `6.1.0-9`.
fn natural_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(|part| (part.parse().unwrap_or(0), part.to_string()))
        .collect()
}

fn build_initramfs(kernel_version: &str, out: &Path) {
    run_host(
        Command::new(guest_files().join("build-initramfs.sh"))
            .arg(kernel_version)
            .arg(out),
    );
}

/// Paths end up in qemu options and the kernel command line, which split on `,` and spaces.
fn check_plain_path(path: &Path, where_: &str) {
    let text = path.to_string_lossy();
    assert!(
        !text.contains([',', ' ', '\t', '\n']),
        "{} contains a comma or whitespace, which {where_} cannot carry; move the checkout \
         or set DBSNAP_GUEST_DIR",
        path.display()
    );
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_naturally() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by_key(|v| natural_key(v));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }

    /// A full round trip through the guest, exit status included. Boots a VM (~8 s).
    #[test]
    fn guest_reports_output_and_status() {
        // `cat` prints the disk's serial, complains about the missing file and exits 1.
        let run = Guest::new("selftest")
            .disk("probe-disk", 8)
            .run(&["cat", "/sys/block/vda/serial", "/does-not-exist"].map(OsString::from));
        assert_eq!(run.status, 1);
        assert_eq!(run.stdout.trim(), "probe-disk");
        assert!(run.stderr.contains("/does-not-exist"), "{}", run.stderr);
        // A non-zero status keeps the run's logs for a look; this one was expected.
        let ours = format!("selftest-{}-", std::process::id());
        for entry in fs::read_dir(guest_dir()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&ours) {
                fs::remove_dir_all(entry.path()).unwrap();
            }
        }
    }
}
