//! `ssh://[user@]host[:port]/absolute/path`: the one parser of a remote destination.

use std::path::{Component, Path, PathBuf};

pub const SCHEME: &str = "ssh://";

/// A directory on another host, reached over ssh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// Absolute, without `..`, on the remote host.
    pub path: PathBuf,
}

impl SshTarget {
    /// Parse `text` (which starts with `ssh://`). The errors name what is wrong and how
    /// the value must look; the caller adds the config key.
    pub fn parse(text: &str) -> Result<SshTarget, String> {
        let shape = "it must look like ssh://[user@]host[:port]/absolute/path";
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("{text:?} does not start with {SCHEME}; {shape}"))?;
        let slash = rest
            .find('/')
            .ok_or_else(|| format!("{text:?} has no path; {shape}"))?;
        let (authority, path) = rest.split_at(slash);
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, hp)) => (Some(user), hp),
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("{text:?}: the port {port:?} is not a number 1-65535")
                })?;
                (host, Some(port))
            }
            None => (host_port, None),
        };
        if host.is_empty() {
            return Err(format!("{text:?} has no host; {shape}"));
        }
        // ssh would read a host starting with `-` as an option.
        if host.starts_with('-') {
            return Err(format!(
                "{text:?}: the host {host:?} starts with '-', which ssh would take for an option"
            ));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!(
                "{text:?}: the host {host:?} may hold only letters, digits, '.', '-' and '_' \
                 (a name from ~/.ssh/config or an IPv4 address)"
            ));
        }
        if let Some(user) = user {
            if user.is_empty()
                || user.starts_with('-')
                || !user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                return Err(format!(
                    "{text:?}: the user {user:?} may hold only letters, digits, '.', '-' and '_' \
                     and must not start with '-'"
                ));
            }
        }
        let path = Path::new(path);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(format!("{text:?}: the path must not contain '..'"));
        }
        if path.to_string_lossy().chars().any(|c| c == '\0') {
            return Err(format!("{text:?}: the path holds a NUL character"));
        }
        Ok(SshTarget {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            path: path.to_path_buf(),
        })
    }

    /// `user@host` or `host`, as ssh and rsync take it.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// The host as it appears in known_hosts (`host` or `[host]:port`).
    pub fn known_hosts_name(&self) -> String {
        match self.port {
            Some(p) if p != 22 => format!("[{}]:{p}", self.host),
            _ => self.host.clone(),
        }
    }

    /// `user@host:port`, for messages.
    pub fn display_host(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.destination()),
            None => self.destination(),
        }
    }

    /// The URL again (for records and messages).
    pub fn url(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{SCHEME}{}{port}{}",
            self.destination(),
            self.path.display()
        )
    }
}

/// Whether a configured destination is remote.
pub fn is_ssh(dest: &Path) -> bool {
    dest.to_string_lossy().starts_with(SCHEME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_parses_into_user_host_port_and_path() {
        let t = SshTarget::parse("ssh://backup@db-store.example:2222/srv/backups/db1").unwrap();
        assert_eq!(t.user.as_deref(), Some("backup"));
        assert_eq!(t.host, "db-store.example");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.path, PathBuf::from("/srv/backups/db1"));
        assert_eq!(t.destination(), "backup@db-store.example");
        assert_eq!(t.known_hosts_name(), "[db-store.example]:2222");
        assert_eq!(
            t.url(),
            "ssh://backup@db-store.example:2222/srv/backups/db1"
        );
    }

    #[test]
    fn user_and_port_are_optional() {
        let t = SshTarget::parse("ssh://store/b").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.port, t.host.as_str()),
            (None, None, "store")
        );
        assert_eq!(t.known_hosts_name(), "store");
    }

    #[test]
    fn a_path_with_shell_metacharacters_is_kept_as_it_is() {
        let t = SshTarget::parse("ssh://h/srv/a b; $(touch x) 'q'\nz").unwrap();
        assert_eq!(t.path, PathBuf::from("/srv/a b; $(touch x) 'q'\nz"));
    }

    #[test]
    fn bad_urls_are_refused_with_what_is_wrong() {
        for (url, says) in [
            ("ssh://-oProxyCommand=x/srv", "starts with '-'"),
            ("ssh://u@-h/srv", "starts with '-'"),
            ("ssh://h", "no path"),
            ("ssh:///srv", "no host"),
            ("ssh://h:99999/srv", "port"),
            ("ssh://h:/srv", "port"),
            ("ssh://h/srv/../etc", "'..'"),
            ("ssh://h;x/srv", "may hold only"),
            ("ssh://-u@h/srv", "user"),
        ] {
            let err = SshTarget::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
