//! `[mysql] max_lock_hold`: past it the lock is released at once and the snapshot is
//! discarded — really discarded: a snapshot command cut short must not finish after
//! the release and leave a snapshot nobody knows about.

mod common;

use common::{stderr, Sandbox};
use dbsnap_test_support::bank;

#[test]
fn timed_out_snapshots_are_all_released_and_the_journal_is_empty() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let mut timed_out = 0;
    // 1 ms kills the snapshot command as it starts; 6 ms while it is in its ioctl.
    for (run, hold) in ["1ms", "6ms", "3ms", "10ms"]
        .iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        sb.write_config(&format!("max_lock_hold = \"{hold}\""));
        let out = sb.dbsnap(&["backup"]);
        match out.status.code() {
            Some(7) => {
                timed_out += 1;
                assert!(stderr(&out).contains("max_lock_hold"), "{}", stderr(&out));
            }
            Some(0) => {}
            other => panic!("run {run} ({hold}) exited {other:?}: {}", stderr(&out)),
        }
        let left = sb.leftovers();
        assert!(
            left.is_empty(),
            "run {run} (max_lock_hold {hold}) left {left:?}"
        );
    }
    println!("{timed_out} of 12 runs timed out; none left a snapshot");
    assert!(timed_out > 0, "no run timed out: the test proves nothing");
    let out = sb.dbsnap(&["cleanup"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to clean up"
    );
}
