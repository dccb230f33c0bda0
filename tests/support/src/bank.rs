//! The bank-transfer workload: writers move money between accounts in small
//! transactions and remember when each one began and when its COMMIT was acknowledged.
//! A consistent copy keeps the total balance, holds every transfer acknowledged
//! before the lock, and none that began after the unlock.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;

use crate::mariadb::MariaDb;

pub const ACCOUNTS: i64 = 100;
pub const INITIAL_BALANCE: i64 = 1000;

/// Create the `bank` schema with its accounts (InnoDB) and an audit table (MyISAM).
pub fn create(db: &MariaDb) {
    db.sql(&format!(
        "CREATE DATABASE bank;
         CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE bank.transfers (client INT NOT NULL, seq INT NOT NULL, src INT NOT NULL,
             dst INT NOT NULL, amount INT NOT NULL, PRIMARY KEY (client, seq)) ENGINE=InnoDB;
         CREATE TABLE bank.audit (client INT NOT NULL, seq INT NOT NULL, PRIMARY KEY (client, seq)) ENGINE=MyISAM;
         INSERT INTO bank.accounts SELECT seq, {INITIAL_BALANCE} FROM bank.seq_1_to_{ACCOUNTS};"
    ));
}

/// Add `mib` MiB of filler rows so that copies take measurable time.
pub fn add_filler(db: &MariaDb, mib: u64) {
    db.sql("CREATE TABLE IF NOT EXISTS bank.filler (id INT AUTO_INCREMENT PRIMARY KEY, pad BLOB) ENGINE=InnoDB");
    // 1 KiB of incompressible bytes per row.
    db.sql(&format!(
        "INSERT INTO bank.filler (pad) SELECT RANDOM_BYTES(1024) FROM bank.seq_1_to_{}",
        mib * 1024
    ));
}

/// One acknowledged transfer.
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    pub client: u32,
    pub seq: u32,
    pub began: SystemTime,
    pub acked: SystemTime,
    /// When the MyISAM audit row for this transfer was acknowledged (audit writers only).
    pub audit_acked: Option<SystemTime>,
}

impl Commit {
    pub fn latency(&self) -> Duration {
        self.acked.duration_since(self.began).unwrap_or_default()
    }
}

/// Writers running in the background until [`Writers::stop`].
pub struct Writers {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Commit>>>,
}

impl Writers {
    pub fn start(socket: &Path, clients: u32) -> Writers {
        Writers::spawn(socket, clients, false)
    }

    /// Writers that also record every transfer in the MyISAM `bank.audit` table after
    /// the commit: a copy must hold the audit rows too, and the table must check clean.
    pub fn start_with_audit(socket: &Path, clients: u32) -> Writers {
        Writers::spawn(socket, clients, true)
    }

    fn spawn(socket: &Path, clients: u32, audit: bool) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = socket.to_path_buf();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tasks: Vec<_> = (0..clients)
                    .map(|client| tokio::spawn(writer(socket.clone(), client, audit, flag.clone())))
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                all
            })
        });
        // Let every writer connect and commit before the test goes on.
        std::thread::sleep(Duration::from_millis(500));
        Writers {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Vec<Commit> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn writer(socket: PathBuf, client: u32, audit: bool, stop: Arc<AtomicBool>) -> Vec<Commit> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket.display().to_string()))
        .user(Some("root"));
    let mut conn = mysql_async::Conn::new(opts).await.expect("writer connects");
    let mut commits = Vec::new();
    // Continue after the transfers of earlier runs against the same server.
    let mut seq: u32 = conn
        .exec_first(
            "SELECT COALESCE(MAX(seq), 0) FROM bank.transfers WHERE client = ?",
            (client,),
        )
        .await
        .expect("reading the last transfer")
        .unwrap_or(0);
    let mut state = client as u64 * 7919 + 1;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        // A small LCG: deterministic, no extra dependency.
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let src = (state >> 33) as i64 % ACCOUNTS + 1;
        let dst = (src % ACCOUNTS) + 1;
        let amount = ((state >> 20) % 50 + 1) as i64;
        let began = SystemTime::now();
        let result: mysql_async::Result<()> = async {
            let mut tx = conn.start_transaction(Default::default()).await?;
            tx.exec_drop(
                "UPDATE bank.accounts SET balance = balance - ? WHERE id = ?",
                (amount, src),
            )
            .await?;
            tx.exec_drop(
                "UPDATE bank.accounts SET balance = balance + ? WHERE id = ?",
                (amount, dst),
            )
            .await?;
            tx.exec_drop(
                "INSERT INTO bank.transfers (client, seq, src, dst, amount) VALUES (?, ?, ?, ?, ?)",
                (client, seq, src, dst, amount),
            )
            .await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                let acked = SystemTime::now();
                let audit_acked = if audit {
                    conn.exec_drop(
                        "INSERT INTO bank.audit (client, seq) VALUES (?, ?)",
                        (client, seq),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("audit writer {client} failed: {e}"));
                    Some(SystemTime::now())
                } else {
                    None
                };
                commits.push(Commit {
                    client,
                    seq,
                    began,
                    acked,
                    audit_acked,
                });
            }
            // Deadlocks between transfers are expected; the transfer simply did not happen.
            Err(mysql_async::Error::Server(e)) if e.code == 1213 || e.code == 1205 => {}
            Err(e) => panic!("writer {client} failed: {e}"),
        }
    }
    let _ = conn.disconnect().await;
    commits
}

/// What a restored copy was checked for.
#[derive(Debug)]
pub struct Verdict {
    pub transfers_in_copy: usize,
    pub acknowledged_before_lock: usize,
    pub began_after_unlock: usize,
}

/// Assert that `copy` is consistent with a lock held from `acquired` to `released`.
pub fn assert_consistent(
    copy: &MariaDb,
    commits: &[Commit],
    acquired: SystemTime,
    released: SystemTime,
) -> Verdict {
    for table in ["bank.accounts", "bank.transfers", "bank.audit"] {
        let check = copy.sql(&format!("CHECK TABLE {table}"));
        assert!(
            check.lines().all(|l| l.ends_with("OK")),
            "CHECK TABLE {table}: {check}"
        );
    }
    let total: i64 = copy
        .sql("SELECT SUM(balance) FROM bank.accounts")
        .parse()
        .unwrap();
    assert_eq!(
        total,
        ACCOUNTS * INITIAL_BALANCE,
        "the total balance changed: a torn transaction"
    );
    let present: HashSet<(u32, u32)> = copy
        .sql("SELECT client, seq FROM bank.transfers")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (c, s) = l.split_once('\t').unwrap();
            (c.parse().unwrap(), s.parse().unwrap())
        })
        .collect();
    let before: Vec<&Commit> = commits.iter().filter(|c| c.acked < acquired).collect();
    let after: Vec<&Commit> = commits.iter().filter(|c| c.began > released).collect();
    for c in &before {
        assert!(
            present.contains(&(c.client, c.seq)),
            "transfer {c:?} was acknowledged before the lock but is missing"
        );
    }
    for c in &after {
        assert!(
            !present.contains(&(c.client, c.seq)),
            "transfer {c:?} began after the unlock but is in the copy"
        );
    }
    let audited: HashSet<(u32, u32)> = copy
        .sql("SELECT client, seq FROM bank.audit")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (c, s) = l.split_once('\t').unwrap();
            (c.parse().unwrap(), s.parse().unwrap())
        })
        .collect();
    for c in commits
        .iter()
        .filter(|c| c.audit_acked.is_some_and(|t| t < acquired))
    {
        assert!(
            audited.contains(&(c.client, c.seq)),
            "audit row {c:?} (MyISAM) was acknowledged before the lock but is missing"
        );
    }
    for c in &after {
        assert!(
            !audited.contains(&(c.client, c.seq)),
            "audit row {c:?} began after the unlock but is in the copy"
        );
    }
    assert!(
        !before.is_empty(),
        "no transfer was acknowledged before the lock: the test proved nothing"
    );
    assert!(
        !after.is_empty(),
        "no transfer began after the unlock: the test proved nothing"
    );
    Verdict {
        transfers_in_copy: present.len(),
        acknowledged_before_lock: before.len(),
        began_after_unlock: after.len(),
    }
}
