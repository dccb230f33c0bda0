//! A private zfs-fuse daemon for one test, in the test's own mount namespace.
//!
//! zfs-fuse is a userspace ZFS: its `zfs`/`zpool` commands talk to a daemon through
//! `/run/zfs/zfs_socket`, and the daemon imports every pool listed in
//! `/var/lib/zfs/zpool.cache`. A test must therefore never share those paths with another
//! daemon (two daemons importing one pool corrupt it). Each test gets:
//!
//! * a mount namespace of its own: the test re-runs its own binary (`--exact <test>`)
//!   under `unshare --mount --propagation private`, because a multi-threaded test
//!   process cannot `unshare(CLONE_NEWNS)` itself;
//! * empty tmpfs mounts over `/run/zfs`, `/var/lib/zfs` and `/run/lock/zfs` (mandatory),
//!   so the daemon sees no other daemon's socket, cache or lock;
//! * pools on sparse files in a temporary directory, mounted inside it.
//!
//! Dropping [`ZfsFuse`] destroys the pools and stops the daemon; the namespace and its
//! mounts disappear with the process. If the test process is killed, the daemon gets
//! SIGKILL too (`PR_SET_PDEATHSIG`).
//!
//! ```no_run
//! # use dbsnap_test_support::zfs_fuse::ZfsFuse;
//! #[test]
//! fn my_test() {
//!     let Some(mut zfs) = ZfsFuse::enter("my_test") else { return };
//!     let pool = zfs.create_pool("data");
//!     zfs.zfs(&["create", &format!("{pool}/db")]);
//! }
//! ```

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set in the re-executed test process: the name of the test it runs.
const ENV_INNER: &str = "DBSNAP_ZFS_FUSE_TEST";
/// Set in the re-executed test process: the mount namespace it must NOT be in.
const ENV_OUTER_NS: &str = "DBSNAP_ZFS_FUSE_OUTER_NS";
/// The directories zfs-fuse keeps its socket, pool cache and lock in.
const PRIVATE_DIRS: [&str; 3] = ["/run/zfs", "/var/lib/zfs", "/run/lock/zfs"];
const SOCKET: &str = "/run/zfs/zfs_socket";
/// How long the whole re-executed test may run before it is killed.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// A running private zfs-fuse daemon. See the module documentation.
pub struct ZfsFuse {
    daemon: Child,
    pools: Vec<String>,
    dir: tempfile::TempDir,
}

impl ZfsFuse {
    /// Call at the start of a test, with the test's name as `--exact` needs it.
    ///
    /// In the normal test process this re-runs the test in a private mount namespace,
    /// waits, prints its output, panics if it failed, and returns `None`: the caller
    /// returns. In the re-run it starts the daemon and returns `Some`.
    pub fn enter(test_name: &str) -> Option<ZfsFuse> {
        if std::env::var(ENV_INNER).as_deref() == Ok(test_name) {
            Some(Self::start())
        } else {
            run_in_private_namespace(test_name);
            None
        }
    }

    fn start() -> ZfsFuse {
        // Never mount over the real /run/zfs: only proceed in a namespace of our own.
        let outer = std::env::var(ENV_OUTER_NS).expect("re-run without the outer namespace id");
        assert_ne!(
            mount_namespace(),
            outer,
            "zfs_fuse: the re-run test is still in the caller's mount namespace; refusing to \
             mount over {PRIVATE_DIRS:?}"
        );
        for dir in PRIVATE_DIRS {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {dir}: {e}"));
            mount(
                Some("dbsnap-zfs-fuse-private"),
                dir,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=16m,mode=0755"),
            )
            .unwrap_or_else(|e| panic!("mounting a private tmpfs over {dir}: {e}"));
        }
        let dir = tempfile::Builder::new()
            .prefix("dbsnap-zfs-fuse-")
            .tempdir()
            .expect("creating a temporary directory");
        let log = File::create(dir.path().join("daemon.log")).expect("creating daemon.log");
        let mut command = Command::new("zfs-fuse");
        command
            .args([
                "--no-daemon",
                "--no-kstat-mount",
                "-p",
                "/run/zfs/zfs-fuse.pid",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating a file handle"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let daemon = command
            .spawn()
            .expect("starting zfs-fuse; install it with scripts/install-deps.sh");
        let mut zfs = ZfsFuse {
            daemon,
            pools: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Path::new(SOCKET).exists() {
            if let Ok(Some(status)) = zfs.daemon.try_wait() {
                panic!("zfs-fuse exited with {status}: {}", zfs.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "zfs-fuse did not create {SOCKET} within 20 s: {}",
                zfs.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The socket exists a moment before the daemon accepts on it (seen under load:
        // "connect: Connection refused"): ask until it answers, within the same deadline.
        let pools = loop {
            let out = Command::new("zpool")
                .args(["list", "-H", "-o", "name"])
                .output()
                .expect("running zpool; is zfs-fuse installed?");
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "zfs-fuse did not answer within 20 s: {}{}",
                String::from_utf8_lossy(&out.stderr),
                zfs.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            pools.trim().is_empty(),
            "the private zfs-fuse daemon imported pools it must not see: {pools}"
        );
        zfs
    }

    /// A temporary directory for the test's files (pool images are kept in it too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Create a pool on a 256 MiB sparse file, its root dataset mounted at
    /// `<dir>/mnt/<pool>`. Returns the pool's name: `hint` plus this process's id, so it
    /// cannot collide with a pool another daemon has mounted.
    pub fn create_pool(&mut self, hint: &str) -> String {
        self.create_pool_sized(hint, 256)
    }

    /// [`ZfsFuse::create_pool`] on a sparse file of `mib` MiB (a backup disk that holds
    /// several copies of a database).
    pub fn create_pool_sized(&mut self, hint: &str, mib: u64) -> String {
        let pool = format!("{hint}{}", std::process::id());
        let image = self.dir().join(format!("{pool}.img"));
        File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .unwrap_or_else(|e| panic!("creating {}: {e}", image.display()));
        let root = self.mount_root(&pool);
        self.zpool(&[
            "create",
            "-m",
            &root.to_string_lossy(),
            &pool,
            &image.to_string_lossy(),
        ]);
        self.pools.push(pool.clone());
        pool
    }

    /// Where a pool made by [`ZfsFuse::create_pool`] mounts its root dataset.
    pub fn mount_root(&self, pool: &str) -> PathBuf {
        self.dir().join("mnt").join(pool)
    }

    /// Run `zfs` with these arguments; panic with its stderr if it fails. Returns stdout.
    pub fn zfs(&self, args: &[&str]) -> String {
        run("zfs", args)
    }

    /// Run `zpool` with these arguments; panic with its stderr if it fails. Returns stdout.
    pub fn zpool(&self, args: &[&str]) -> String {
        run("zpool", args)
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for ZfsFuse {
    fn drop(&mut self) {
        // Destroying the pools unmounts their datasets, so nothing is left on the files.
        for pool in &self.pools {
            // zfs-fuse reports "pool is busy" while it still finishes recent unmounts.
            let mut attempt = 1;
            loop {
                let out = Command::new("zpool").args(["destroy", "-f", pool]).output();
                if out.as_ref().is_ok_and(|o| o.status.success()) {
                    break;
                }
                if attempt == 10 {
                    let mounts =
                        std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                    eprintln!("zfs_fuse: `zpool destroy -f {pool}` failed: {out:?}\n{mounts}");
                    break;
                }
                attempt += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let pid = Pid::from_raw(self.daemon.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.daemon.try_wait(), Ok(None)) {
            eprintln!("zfs_fuse: daemon {pid} ignored SIGTERM for 10 s; killing it");
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        // A FUSE mount left by a dead daemon would make removing the directory fail.
        // Detaching only affects this private namespace.
        if let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut below: Vec<&str> = table
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(self.dir.path()))
                .collect();
            below.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in below {
                let _ = umount2(m, MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Re-run `test_name` from this test binary in a new private mount namespace and fail
/// this test if it fails there.
fn run_in_private_namespace(test_name: &str) {
    let exe = std::env::current_exe().expect("finding the test binary");
    let logs = tempfile::tempdir().expect("creating a temporary directory");
    let out_path = logs.path().join("stdout");
    let err_path = logs.path().join("stderr");
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(ENV_INNER, test_name)
        .env(ENV_OUTER_NS, mount_namespace())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("creating a log file"))
        .stderr(File::create(&err_path).expect("creating a log file"));
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    // If this test is killed, the re-run (and through it the daemon) dies too.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .expect("running unshare (util-linux); install it with scripts/install-deps.sh");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the re-run test") {
            break Some(status);
        }
        if started.elapsed() > TEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    println!("--- {test_name} in a private mount namespace with zfs-fuse ---\n{stdout}{stderr}");
    match status {
        Some(s) if s.success() && stdout.contains("1 passed") => {}
        Some(s) if s.success() => panic!(
            "{test_name} did not run in the private namespace (is the name exact, \
             including its module path?)"
        ),
        Some(s) => panic!("{test_name} failed in the private mount namespace ({s})"),
        None => panic!(
            "{test_name} did not finish within {} s and was killed",
            TEST_TIMEOUT.as_secs()
        ),
    }
}

/// This process's mount namespace, e.g. `mnt:[4026531841]`.
fn mount_namespace() -> String {
    std::fs::read_link("/proc/self/ns/mnt")
        .expect("reading /proc/self/ns/mnt")
        .to_string_lossy()
        .into_owned()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}; is zfs-fuse installed?"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
