//! Readers of the /proc and /sys files the doctor looks at. The parsers take the file's text
//! and return `None` on anything unexpected, so a kernel with another layout gives "unknown",
//! never a panic.

use std::fs;
use std::path::Path;

/// One side of a resource limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Value(u64),
    Unlimited,
}

impl Limit {
    /// Whether the limit allows at least `n`.
    pub fn at_least(self, n: u64) -> bool {
        match self {
            Limit::Value(v) => v >= n,
            Limit::Unlimited => true,
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Value(v) => write!(f, "{v}"),
            Limit::Unlimited => f.write_str("unlimited"),
        }
    }
}

fn parse_limit(s: &str) -> Option<Limit> {
    match s {
        "unlimited" => Some(Limit::Unlimited),
        _ => s.parse().ok().map(Limit::Value),
    }
}

/// Soft and hard value of the limit `name` ("Max open files") in the text of
/// /proc/PID/limits.
pub fn limit(limits: &str, name: &str) -> Option<(Limit, Limit)> {
    limits.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        // "Max open files" must not match a longer name that starts the same way.
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        let mut words = rest.split_whitespace();
        Some((parse_limit(words.next()?)?, parse_limit(words.next()?)?))
    })
}

/// The value of `field` in the text of /proc/PID/status (`Seccomp:\t2` gives "2").
pub fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

/// Number of CPUs in a kernel CPU list such as "0-3,8,10-11".
pub fn cpu_list_len(list: &str) -> Option<usize> {
    let list = list.trim();
    if list.is_empty() {
        return Some(0);
    }
    list.split(',').try_fold(0usize, |n, part| {
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        n.checked_add(count)
    })
}

/// A file's text without its trailing newline; `None` when it cannot be read.
pub fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The value of a sysctl (`net.core.rmem_max`) from /proc/sys, blanks collapsed to single
/// spaces; `None` when this kernel does not have it.
pub fn sysctl(key: &str) -> Option<String> {
    read(Path::new("/proc/sys").join(key.replace('.', "/")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max locked memory         8388608              8388608              bytes     
Max open files            20000                1048576              files     
Max open files extra      1                    2                    files     
";

    #[test]
    fn limits() {
        assert_eq!(
            limit(LIMITS, "Max open files"),
            Some((Limit::Value(20000), Limit::Value(1_048_576)))
        );
        assert_eq!(
            limit(LIMITS, "Max cpu time"),
            Some((Limit::Unlimited, Limit::Unlimited))
        );
        assert_eq!(limit(LIMITS, "Max processes"), None);
        assert_eq!(limit("Max open files   lots  more", "Max open files"), None);
        assert!(Limit::Unlimited.at_least(u64::MAX));
        assert!(!Limit::Value(1023).at_least(1024));
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tquelay\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(status_field(status, "Seccomp"), Some("2"));
        assert_eq!(status_field(status, "Seccomp_filters"), Some("1"));
        assert_eq!(status_field(status, "NoNewPrivs"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list_len("0-1\n"), Some(2));
        assert_eq!(cpu_list_len("0-3,8,10-11"), Some(7));
        assert_eq!(cpu_list_len("5"), Some(1));
        assert_eq!(cpu_list_len(""), Some(0));
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len("0-x"), None);
        assert_eq!(cpu_list_len("0,,1"), None);
    }
}
