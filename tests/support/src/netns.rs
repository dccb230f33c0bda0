//! A network namespace joined to this one by a veth pair on a private /30 in
//! 10.213.0.0/16 (a range no common set-up uses), for a server that should be another
//! host: reachable only over that link, which a test can take down and bring back.
//! Deleted on drop (the veth pair goes with it).
//!
//! Needs root with `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` (`ip netns add` mounts the
//! namespace under /run/netns); a container without them fails here, saying which
//! command was refused.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    /// The veth end in this (the test's) namespace.
    pub host_link: String,
    /// This namespace's address on the link.
    pub host_addr: String,
    /// The address inside the namespace: where its server listens.
    pub addr: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip (apt-get install iproute2): {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The /30s of 10.213.0.0/16 already on a link here (another test's namespace).
fn taken_blocks() -> Vec<u32> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix("10.213."))
        .filter_map(|rest| {
            let (x, y) = rest.split_once('.')?;
            let y = y.split('/').next()?;
            Some((x.parse::<u32>().ok()? * 256 + y.parse::<u32>().ok()?) / 4)
        })
        .collect()
}

impl Netns {
    /// A new namespace with its link up and addressed, loopback up inside.
    pub fn create() -> Netns {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let taken = taken_blocks();
        let block = (0..16384)
            .map(|i| (pid.wrapping_mul(31).wrapping_add(n).wrapping_add(i)) % 16384)
            .find(|b| !taken.contains(b))
            .expect("a free /30 in 10.213.0.0/16");
        let address = |host: u32| {
            let at = block * 4 + host;
            format!("10.213.{}.{}", at / 256, at % 256)
        };
        let netns = Netns {
            name: format!("dbsnap-{pid}-{n}"),
            host_link: format!("vd{pid}h{n}"),
            host_addr: address(1),
            addr: address(2),
        };
        // Dropped (and so cleaned up) if a step fails.
        if let Err(e) = netns.set_up() {
            panic!("cannot make a network namespace for the backup host: {e}");
        }
        netns
    }

    fn set_up(&self) -> Result<(), String> {
        let peer = self.host_link.replacen('h', "n", 1);
        let (host_cidr, cidr) = (
            format!("{}/30", self.host_addr),
            format!("{}/30", self.addr),
        );
        ip(&["netns", "add", &self.name])?;
        ip(&[
            "link",
            "add",
            &self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &self.name])?;
        ip(&["addr", "add", &host_cidr, "dev", &self.host_link])?;
        ip(&["link", "set", &self.host_link, "up"])?;
        ip(&["-n", &self.name, "addr", "add", &cidr, "dev", &peer])?;
        ip(&["-n", &self.name, "link", "set", &peer, "up"])?;
        ip(&["-n", &self.name, "link", "set", "lo", "up"])
    }

    /// The words that run a command inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }

    /// Take the link down (as a pulled cable: packets are dropped, nothing is reset)
    /// or bring it back up.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.host_link, state]).unwrap();
    }

    /// The bytes sent and received on the link so far, counted on this side.
    pub fn link_bytes(&self) -> u64 {
        ["rx_bytes", "tx_bytes"]
            .iter()
            .map(|counter| {
                let path = format!("/sys/class/net/{}/statistics/{counter}", self.host_link);
                std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{path}: {e}"))
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        // Gone with the namespace unless a step after its creation failed.
        let _ = ip(&["link", "del", &self.host_link]);
    }
}
