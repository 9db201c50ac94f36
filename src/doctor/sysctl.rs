//! The settings of `tuning/sysctl.conf` (embedded at build time) and how a current value is
//! judged against them, the same way `tuning/check.sh` does.

/// The file `tuning/apply.sh` installs.
pub const TUNING_SYSCTL: &str = include_str!("../../tuning/sysctl.conf");

/// The comment line that makes the next key a floor.
const MINIMUM_MARK: &str = "# check: minimum";

/// One `key = value` of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    /// The value, blanks collapsed to single spaces.
    pub want: String,
    /// A floor: a larger current value (each number on its own) is fine.
    pub minimum: bool,
}

impl Setting {
    /// Whether `have` (blanks collapsed) meets this setting.
    pub fn satisfied_by(&self, have: &str) -> bool {
        if !self.minimum {
            return have == self.want;
        }
        let have: Vec<&str> = have.split_whitespace().collect();
        let want: Vec<&str> = self.want.split_whitespace().collect();
        have.len() == want.len()
            && have
                .iter()
                .zip(&want)
                .all(|(h, w)| match (h.parse::<u128>(), w.parse::<u128>()) {
                    (Ok(h), Ok(w)) => h >= w,
                    _ => false,
                })
    }

    /// How the wanted value reads in a drift line: `16777216 or more` for a floor.
    pub fn wanted(&self) -> String {
        if self.minimum {
            format!("{} or more", self.want)
        } else {
            self.want.clone()
        }
    }
}

/// Reads sysctl.d text: `key = value` lines, `#`/`;` comments, `# check: minimum` marking
/// the key that follows. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Setting>, String> {
    let mut out = Vec::new();
    let mut minimum = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line == MINIMUM_MARK {
            minimum = true;
            continue;
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not a `key = value` line: {line}", i + 1))?;
        // A leading `-` tells sysctl to ignore a missing key; the key is what follows.
        let key = key.trim().trim_start_matches('-');
        if key.is_empty() {
            return Err(format!("line {}: no key: {line}", i + 1));
        }
        out.push(Setting {
            key: key.to_string(),
            want: value.split_whitespace().collect::<Vec<_>>().join(" "),
            minimum,
        });
        minimum = false;
    }
    Ok(out)
}

/// The settings of the embedded `tuning/sysctl.conf`.
pub fn tuning() -> Result<Vec<Setting>, String> {
    parse(TUNING_SYSCTL).map_err(|e| format!("tuning/sysctl.conf: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_marks_and_values() {
        let s = parse(
            "# comment\n\n# check: minimum\nnet.core.rmem_max = 16777216\n\
             ; other comment\nnet.ipv4.ip_local_port_range =\t1024   65535\n\
             # check: minimum\n# why\n-net.ipv4.udp_mem=1 2 3\n",
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                Setting {
                    key: "net.core.rmem_max".into(),
                    want: "16777216".into(),
                    minimum: true
                },
                Setting {
                    key: "net.ipv4.ip_local_port_range".into(),
                    want: "1024 65535".into(),
                    minimum: false
                },
                Setting {
                    key: "net.ipv4.udp_mem".into(),
                    want: "1 2 3".into(),
                    minimum: true
                },
            ]
        );
        assert!(parse("net.core.rmem_max 5\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse(" = 5\n").is_err());
    }

    #[test]
    fn floors_compare_each_number() {
        let floor = Setting {
            key: "net.ipv4.tcp_rmem".into(),
            want: "4096 131072 16777216".into(),
            minimum: true,
        };
        assert!(floor.satisfied_by("4096 131072 16777216"));
        assert!(floor.satisfied_by("4096 131072 33554432"));
        assert!(!floor.satisfied_by("4096 16384 33554432"));
        assert!(!floor.satisfied_by("4096 131072"));
        assert!(!floor.satisfied_by("4096 x 16777216"));
        assert_eq!(floor.wanted(), "4096 131072 16777216 or more");
        let big = Setting {
            key: "fs.file-max".into(),
            want: "2097152".into(),
            minimum: true,
        };
        assert!(big.satisfied_by("9223372036854775807"));
        let exact = Setting {
            key: "kernel.io_uring_disabled".into(),
            want: "0".into(),
            minimum: false,
        };
        assert!(exact.satisfied_by("0"));
        assert!(!exact.satisfied_by("1"));
    }

    #[test]
    fn tuning_file_parses() {
        let s = tuning().unwrap();
        let rmem = s.iter().find(|s| s.key == "net.core.rmem_max").unwrap();
        assert!(rmem.minimum);
        // The engine's wish must fit under the ceiling the tuning file sets.
        let want: usize = rmem.want.parse().unwrap();
        assert!(want >= crate::engine::DriverConfig::default().socket_buffer);
        let uring = s
            .iter()
            .find(|s| s.key == "kernel.io_uring_disabled")
            .unwrap();
        assert!(!uring.minimum);
    }
}
