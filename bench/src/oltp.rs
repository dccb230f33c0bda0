//! The heavier write workload (`--workload oltp`): four InnoDB tables with two secondary
//! indexes each, and transactions that update an indexed column, update a row's text,
//! insert a row and delete one — the index-rich writes that make a copy's I/O show in
//! the application's commit latency, unlike the bank's two-row updates.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dbsnap_test_support::mariadb::MariaDb;
use mysql_async::prelude::Queryable;

pub const TABLES: u32 = 4;

/// Create `oltp.t1` … `oltp.t4` with `rows` rows each (from MariaDB's sequence engine).
pub fn create(server: &MariaDb, rows: u64) {
    server.sql("CREATE DATABASE oltp");
    for t in 1..=TABLES {
        server.sql(&format!(
            "CREATE TABLE oltp.t{t} (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, \
             k INT UNSIGNED NOT NULL, c CHAR(120) NOT NULL, pad CHAR(60) NOT NULL, \
             KEY k (k), KEY c (c(16))) ENGINE=InnoDB"
        ));
        server.sql(&format!(
            "INSERT INTO oltp.t{t} (k, c, pad) SELECT FLOOR(RAND() * {rows}), \
             CONCAT(MD5(seq), MD5(seq + 1), MD5(seq + 2)), CONCAT(MD5(seq), 'pad') \
             FROM oltp.seq_1_to_{rows}"
        ));
    }
}

/// Writers committing OLTP transactions until [`OltpWriters::stop`].
pub struct OltpWriters {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(SystemTime, Duration)>>>,
}

impl OltpWriters {
    pub fn start(socket: &Path, clients: u32, rows: u64) -> OltpWriters {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = socket.to_path_buf();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the writers");
            rt.block_on(async move {
                let tasks: Vec<_> = (0..clients)
                    .map(|c| tokio::spawn(writer(socket.clone(), c, rows, flag.clone())))
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.expect("writer task"));
                }
                all
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        OltpWriters {
            stop,
            thread: Some(thread),
        }
    }

    /// Every acknowledged transaction: when it began, and how long until its COMMIT
    /// was acknowledged.
    pub fn stop(mut self) -> Vec<(SystemTime, Duration)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("not stopped yet")
            .join()
            .expect("writers")
    }
}

impl Drop for OltpWriters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn writer(
    socket: PathBuf,
    client: u32,
    rows: u64,
    stop: Arc<AtomicBool>,
) -> Vec<(SystemTime, Duration)> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket.display().to_string()))
        .user(Some("root"));
    let mut conn = mysql_async::Conn::new(opts).await.expect("writer connects");
    let mut commits = Vec::new();
    let mut state = client as u64 * 104_729 + 17;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    while !stop.load(Ordering::SeqCst) {
        let (a, b, c) = (next() % 4 + 1, next() % 4 + 1, next() % 4 + 1);
        let (id, other, gone) = (next() % rows + 1, next() % rows + 1, next() % rows + 1);
        let began = SystemTime::now();
        let result: mysql_async::Result<()> = async {
            let mut tx = conn.start_transaction(Default::default()).await?;
            tx.exec_drop(
                format!("UPDATE oltp.t{a} SET k = k + 1 WHERE id = ?"),
                (id,),
            )
            .await?;
            tx.exec_drop(
                format!("UPDATE oltp.t{b} SET c = CONCAT(MD5(RAND()), MD5(RAND())) WHERE id = ?"),
                (other,),
            )
            .await?;
            tx.exec_drop(
                format!("INSERT INTO oltp.t{c} (k, c, pad) VALUES (?, MD5(RAND()), 'new')"),
                (id,),
            )
            .await?;
            tx.exec_drop(format!("DELETE FROM oltp.t{c} WHERE id = ?"), (gone,))
                .await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => commits.push((began, began.elapsed().unwrap_or_default())),
            Err(mysql_async::Error::Server(e)) if e.code == 1213 || e.code == 1205 => {}
            Err(e) => panic!("oltp writer {client} failed: {e}"),
        }
    }
    let _ = conn.disconnect().await;
    commits
}
