//! MySQL option files (`my.cnf`), read as the MySQL and MariaDB clients read them: the
//! groups dbsnap uses, `!include` and `!includedir`, quoting, escapes and end comments.
//! The database side's own format; the configuration only names the file.

use std::path::{Path, PathBuf};

use crate::db::credentials::Credentials;

/// The option-file groups dbsnap reads, as the MySQL and MariaDB clients read theirs:
/// `[client]`, `[client-server]` and its own `[dbsnap]`. Options are taken in the
/// order they appear in the files (whatever their group), the last one winning.
pub const OPTION_GROUPS: &[&str] = &["client", "client-server", "dbsnap"];

/// How deep `!include` may nest, as in the client library (deeper ones are skipped).
const MAX_INCLUDE_DEPTH: usize = 10;

/// One option from an option file, as `my_print_defaults` prints it (`--name=value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionLine {
    pub name: String,
    /// `None` for an option without `=` (`skip-ssl`).
    pub value: Option<String>,
    /// The file it was read from (after `!include`).
    pub file: PathBuf,
}

/// One line of an option file, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionFileLine {
    Group(String),
    Option { name: String, value: Option<String> },
    Include(PathBuf),
    IncludeDir(PathBuf),
}

/// Parse option-file text the way the client library (mysys `my_default.c`) does:
/// `#` and `;` start comment lines, `#` outside quotes ends a value, one pair of
/// matching quotes around a value is removed, `\n \t \r \b \s \" \' \\` are
/// escapes, `!include FILE` and `!includedir DIR` are directives. An option before any
/// group, or a group header without `]`, is an error naming the line (the clients
/// refuse such a file too).
pub fn parse_option_text(text: &str) -> Result<Vec<OptionFileLine>, String> {
    let mut lines = Vec::new();
    let mut in_group = false;
    for (number, raw) in text.lines().enumerate() {
        let number = number + 1;
        let line = raw.trim_start_matches(is_option_space);
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(directive) = line.strip_prefix('!') {
            let directive = directive.trim_start_matches(is_option_space);
            for (keyword, dir) in [("includedir", true), ("include", false)] {
                let Some(rest) = directive.strip_prefix(keyword) else {
                    continue;
                };
                if !rest.is_empty() && !rest.starts_with(is_option_space) {
                    continue;
                }
                let target = rest.trim_matches(is_option_space);
                if target.is_empty() {
                    return Err(format!("line {number}: !{keyword} names no file"));
                }
                let target = PathBuf::from(target);
                lines.push(match dir {
                    true => OptionFileLine::IncludeDir(target),
                    false => OptionFileLine::Include(target),
                });
                break;
            }
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let Some((name, _)) = header.split_once(']') else {
                return Err(format!(
                    "line {number}: the group header {:?} has no closing ]",
                    line.trim_end()
                ));
            };
            in_group = true;
            lines.push(OptionFileLine::Group(
                name.trim_end_matches(is_option_space).to_string(),
            ));
            continue;
        }
        if !in_group {
            return Err(format!(
                "line {number}: an option before any [group]; put it under [client]"
            ));
        }
        let line = without_end_comment(line);
        let (name, value) = match line.split_once('=') {
            Some((name, value)) => (name, Some(unescape_option_value(value))),
            None => (line, None),
        };
        let name = name.trim_end_matches(is_option_space);
        lines.push(OptionFileLine::Option {
            name: name.to_string(),
            value,
        });
    }
    Ok(lines)
}

/// The client library's idea of white space (latin1 `isspace`).
fn is_option_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Cut a line at the first `#` outside quotes (an escaped quote inside quotes does
/// not end them).
fn without_end_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escape = false;
    for (i, c) in line.char_indices() {
        if (c == '\'' || c == '"') && !escape {
            match quote {
                None => quote = Some(c),
                Some(q) if q == c => quote = None,
                Some(_) => {}
            }
        }
        if quote.is_none() && c == '#' {
            return &line[..i];
        }
        escape = quote.is_some() && c == '\\' && !escape;
    }
    line
}

/// A value after `=`: trimmed, one pair of matching quotes removed, escapes applied.
fn unescape_option_value(value: &str) -> String {
    let mut value = value.trim_matches(is_option_space);
    let quoted = value.len() > 1
        && (value.starts_with('"') || value.starts_with('\''))
        && value.chars().last() == value.chars().next();
    if quoted {
        value = &value[1..value.len() - 1];
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            out.push(c);
            break;
        };
        match next {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'b' => out.push('\x08'),
            's' => out.push(' '),
            '"' | '\'' | '\\' => out.push(next),
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    out
}

/// The options of `groups` in an option file and the files it includes, in the order
/// the client library reads them (what `my_print_defaults --defaults-file=PATH GROUPS`
/// prints). A missing `!include` file is skipped as the clients skip it; a missing
/// `!includedir` directory is an error, as it is for them.
pub fn read_option_file(path: &Path, groups: &[&str]) -> anyhow::Result<Vec<OptionLine>> {
    let mut options = Vec::new();
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}. Check the path and that dbsnap runs as a user who may read it",
            path.display()
        )
    })?;
    read_option_text(path, &text, groups, 0, &mut options)?;
    Ok(options)
}

fn read_option_text(
    path: &Path,
    text: &str,
    groups: &[&str],
    depth: usize,
    options: &mut Vec<OptionLine>,
) -> anyhow::Result<()> {
    let lines = parse_option_text(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut wanted = false;
    for line in lines {
        match line {
            OptionFileLine::Group(name) => {
                wanted = groups.iter().any(|g| g.eq_ignore_ascii_case(&name));
            }
            OptionFileLine::Option { name, value } if wanted => options.push(OptionLine {
                name,
                value,
                file: path.to_path_buf(),
            }),
            OptionFileLine::Option { .. } => {}
            OptionFileLine::Include(file) if depth < MAX_INCLUDE_DEPTH => {
                // The client library skips a file it cannot open.
                if let Ok(text) = std::fs::read_to_string(&file) {
                    read_option_text(&file, &text, groups, depth + 1, options)?;
                }
            }
            OptionFileLine::IncludeDir(dir) if depth < MAX_INCLUDE_DEPTH => {
                let entries = std::fs::read_dir(&dir).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: cannot read the !includedir directory {}: {e}",
                        path.display(),
                        dir.display()
                    )
                })?;
                let mut files: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "cnf"))
                    .collect();
                files.sort();
                for file in files {
                    if let Ok(text) = std::fs::read_to_string(&file) {
                        read_option_text(&file, &text, groups, depth + 1, options)?;
                    }
                }
            }
            OptionFileLine::Include(file) | OptionFileLine::IncludeDir(file) => {
                tracing::warn!(
                    "{}: skipping !include of {}: includes nest deeper than {MAX_INCLUDE_DEPTH}",
                    path.display(),
                    file.display()
                );
            }
        }
    }
    Ok(())
}

/// The connection settings among `options` (the last of each wins). Names are matched
/// as the clients match them: `_` and `-` alike, a `loose-` prefix ignored.
pub fn credentials_from_options(options: &[OptionLine]) -> Result<Credentials, String> {
    let mut creds = Credentials::default();
    for option in options {
        let name = option.name.replace('_', "-");
        let name = name.strip_prefix("loose-").unwrap_or(&name);
        let Some(value) = option.value.clone() else {
            continue;
        };
        match name {
            "user" => creds.user = Some(value),
            "password" => creds.password = Some(value),
            "socket" => creds.socket = Some(PathBuf::from(value)),
            "host" => creds.host = Some(value),
            "port" => {
                let port = value.trim().parse::<u16>().ok().filter(|p| *p > 0);
                creds.port = Some(port.ok_or_else(|| {
                    format!(
                        "{}: port = {value:?} is not a port number (1 to 65535)",
                        option.file.display()
                    )
                })?);
            }
            _ => {}
        }
    }
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[client]`, `[client-server]` and `[dbsnap]` settings of option-file text
    /// (without following `!include`).
    pub(super) fn parse_option_file_client(text: &str) -> Result<Credentials, String> {
        let mut options = Vec::new();
        read_option_text(
            Path::new("(option file)"),
            text,
            OPTION_GROUPS,
            MAX_INCLUDE_DEPTH,
            &mut options,
        )
        .map_err(|e| e.to_string())?;
        credentials_from_options(&options)
    }

    #[test]
    fn option_file_client_section() {
        let text = "[mysqld]\nuser = mysql\n[client]\nuser = backup\npassword = \"s3 cr#t\"\nsocket=/run/my.sock\nport = 3307\n[mysql]\nuser = other\n";
        let c = parse_option_file_client(text).unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.password.as_deref(), Some("s3 cr#t"));
        assert_eq!(c.socket, Some(PathBuf::from("/run/my.sock")));
        assert_eq!(c.port, Some(3307));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = parse_option_file_client("[client]\npassword=hunter2\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn option_file_values_are_read_as_the_clients_read_them() {
        let text = "# comment\n; comment\n[client]\npassword = \"x\" # comment\nuser = 'u\\'q'\n\
                    host = h1 ; not a comment\nport = 3307#c\n[mysqld]\nuser = mysql\n\
                    [client-server]\nsocket = \"/a b/s\\\"ock\"\n[dbsnap]\nuser = backup\n";
        let c = parse_option_file_client(text).unwrap();
        assert_eq!(c.password.as_deref(), Some("x"));
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.host.as_deref(), Some("h1 ; not a comment"));
        assert_eq!(c.port, Some(3307));
        assert_eq!(c.socket, Some(PathBuf::from("/a b/s\"ock")));
        let c = parse_option_file_client("[client]\nloose_password = \"t\\tb\\\\n\"\n").unwrap();
        assert_eq!(c.password.as_deref(), Some("t\tb\\n"));
    }

    #[test]
    fn option_file_errors_name_the_line() {
        for (text, expected) in [
            ("user = x\n[client]\n", "line 1"),
            ("[client]\n[mysql\nuser = x\n", "line 2"),
            ("[client]\nport = http\n", "port"),
            ("[client]\nport = 70000\n", "port"),
            ("[client]\n!include\n", "line 2"),
        ] {
            let err = parse_option_file_client(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    /// `my_print_defaults` (the client library's own reader, from mariadb-client)
    /// prints the options it reads; dbsnap must read the same ones, in the same order.
    fn my_print_defaults(file: &Path) -> Vec<String> {
        let out = std::process::Command::new("my_print_defaults")
            .arg(format!("--defaults-file={}", file.display()))
            .args(OPTION_GROUPS)
            .output()
            .expect("my_print_defaults (mariadb-client) is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn as_printed(options: &[OptionLine]) -> Vec<String> {
        options
            .iter()
            .map(|o| match &o.value {
                Some(v) => format!("--{}={v}", o.name),
                None => format!("--{}", o.name),
            })
            .collect()
    }

    #[test]
    fn option_files_parse_exactly_as_my_print_defaults_prints_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(d.join("conf.d/b.cnf"), "[client]\nport = 3308\n").unwrap();
        std::fs::write(d.join("conf.d/a.cnf"), "[dbsnap]\nport = 3309\n").unwrap();
        std::fs::write(d.join("conf.d/z.txt"), "[client]\nport = 1\n").unwrap();
        std::fs::write(d.join("extra.cnf"), "[client-server]\nhost = extra\n").unwrap();
        let files = [
            "[client]\npassword = \"x\" # comment\nuser = 'u\\'q'\nhost=h1 ; semi\nport = 3307#c\n",
            "[client]\nsocket = \"/a b/s\\\"ock\" trailing\npassword = 'a#b' # c\nuser = a\"b\n\
             password = ''\nhost = \"\nskip-ssl\npassword\n",
            "[Client]\nuser=A\n[ client ]\nuser=B\n[client ]\nuser=C\n[client]x\nuser=D\n\
             [mysqld]\nuser=mysql\n[client]\n  loose-user = E\npass_word = \"tab\\there\\\\n\"\n",
            "[dbsnap]\nuser = first\n[client]\nuser = second\n[dbsnap]\nuser = third\n",
            "[client]\nuser=u \\s\\b\\r\\q\\\\\nvalue=\"only open\nempty=\nx = \"a\" \"b\"\n= novalue\n",
            "!include /nonexistent.cnf\n[client]\n!includedir CONF_D\n!include EXTRA\n!includex /x\n\
             user = after\n",
        ];
        for (i, text) in files.iter().enumerate() {
            let text = text
                .replace("CONF_D", d.join("conf.d").to_str().unwrap())
                .replace("EXTRA", d.join("extra.cnf").to_str().unwrap());
            let file = d.join(format!("case{i}.cnf"));
            std::fs::write(&file, &text).unwrap();
            let ours = as_printed(&read_option_file(&file, OPTION_GROUPS).unwrap());
            assert_eq!(ours, my_print_defaults(&file), "case {i}:\n{text}");
        }
    }

    #[test]
    fn the_dbsnap_group_and_includes_supply_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("my.cnf");
        let extra = dir.path().join("secret.cnf");
        std::fs::write(
            &extra,
            "[client]\npassword = \"s3 cr#t\" # the backup user's\n",
        )
        .unwrap();
        std::fs::write(
            &main,
            format!(
                "[client]\nuser = root\n!include {}\n[dbsnap]\nuser = backup\n",
                extra.display()
            ),
        )
        .unwrap();
        let c = credentials_from_options(&read_option_file(&main, OPTION_GROUPS).unwrap()).unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.password.as_deref(), Some("s3 cr#t"));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// An option value written so that the client library reads it back unchanged:
    /// quoted, with `\` and the quote escaped and line breaks as `\n` / `\r`.
    fn quote_option_value(value: &str) -> String {
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_option_file_text_parses_without_panicking(text in "(?s).{0,400}") {
            if let Ok(lines) = parse_option_text(&text) {
                let options: Vec<OptionLine> = lines
                    .into_iter()
                    .filter_map(|l| match l {
                        OptionFileLine::Option { name, value } => Some(OptionLine {
                            name,
                            value,
                            file: PathBuf::from("x.cnf"),
                        }),
                        _ => None,
                    })
                    .collect();
                let _ = credentials_from_options(&options);
            }
        }

        #[test]
        fn quoted_option_values_round_trip(
            user in "[^\u{0}]{0,30}",
            password in "[^\u{0}]{0,30}",
            comment in "[^\n\r]{0,20}",
        ) {
            let text = format!(
                "[client]\nuser = {} # {comment}\npassword={}\n",
                quote_option_value(&user),
                quote_option_value(&password)
            );
            let creds = super::tests::parse_option_file_client(&text).unwrap();
            prop_assert_eq!(creds.user.as_deref(), Some(user.as_str()));
            prop_assert_eq!(creds.password.as_deref(), Some(password.as_str()));
        }
    }
}
