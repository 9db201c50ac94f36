//! Name matching: exact names and `.`-suffixes in one hash map probed once per label, and
//! everything else (wildcards, substrings, regexes) in one regex set run once over the name.

use std::collections::HashMap;

use regex::{RegexSet, RegexSetBuilder};

/// Rule numbers (positions in the rule list) whose patterns hit one key, ascending.
#[derive(Debug, Default)]
struct Hits {
    /// The name equals the key.
    exact: Vec<u32>,
    /// The name equals the key or ends with `.key`.
    suffix: Vec<u32>,
    /// The name ends with `.key` (the `*.key` wildcard).
    below: Vec<u32>,
}

/// Patterns of one family (the ACL's own, or geosite's) compiled for lookups whose cost does
/// not grow with the number of patterns: at most one hash probe per label of the name, plus
/// one pass of the regex set.
#[derive(Debug, Default)]
pub struct DomainIndex {
    keys: HashMap<Box<str>, Hits>,
    /// Regex sources and the rule each belongs to, in insertion (= rule) order.
    patterns: Vec<(String, u32)>,
    set: Option<RegexSet>,
}

/// A regex set this large is refused rather than built (the regex crate's default is 10 MiB,
/// which a few thousand wildcards exceed).
const SET_SIZE_LIMIT: usize = 128 << 20;

fn push(list: &mut Vec<u32>, rule: u32) {
    if list.last() != Some(&rule) {
        list.push(rule);
    }
}

impl DomainIndex {
    /// The name equals `name`.
    pub fn add_exact(&mut self, name: &str, rule: u32) {
        push(&mut self.keys.entry(name.into()).or_default().exact, rule);
    }

    /// The name equals `d` or ends with `.d`.
    pub fn add_suffix(&mut self, d: &str, rule: u32) {
        push(&mut self.keys.entry(d.into()).or_default().suffix, rule);
    }

    /// A `*` pattern over the whole name; `*.d` with no other `*` becomes a suffix key.
    pub fn add_wildcard(&mut self, pattern: &str, rule: u32) {
        if let Some(d) = pattern.strip_prefix("*.") {
            if !d.contains('*') {
                push(&mut self.keys.entry(d.into()).or_default().below, rule);
                return;
            }
        }
        let mut re = String::from("^(?s:");
        for (i, part) in pattern.split('*').enumerate() {
            if i > 0 {
                re.push_str(".*");
            }
            re.push_str(&regex::escape(part));
        }
        re.push_str(")$");
        self.patterns.push((re, rule));
    }

    /// The name contains `s`.
    pub fn add_substring(&mut self, s: &str, rule: u32) {
        self.patterns.push((regex::escape(s), rule));
    }

    /// An unanchored regex search over the name; the error is the regex's own.
    pub fn add_regex(&mut self, re: &str, rule: u32) -> Result<(), String> {
        regex::Regex::new(re).map_err(|e| e.to_string())?;
        self.patterns.push((re.to_string(), rule));
        Ok(())
    }

    /// Builds the regex set; call once after the last `add_*`.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.patterns.is_empty() {
            return Ok(());
        }
        let set = RegexSetBuilder::new(self.patterns.iter().map(|(re, _)| re))
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(SET_SIZE_LIMIT)
            .build()
            .map_err(|e| e.to_string())?;
        self.set = Some(set);
        Ok(())
    }

    /// Calls `visit` with each ascending list of rules whose pattern matches `name`; a
    /// visit returns the bound below which later lists are still of interest.
    pub fn lookup(
        &self,
        name: &str,
        mut bound: u32,
        mut visit: impl FnMut(&[u32], u32) -> u32,
    ) -> u32 {
        if !self.keys.is_empty() {
            if let Some(h) = self.keys.get(name) {
                bound = visit(&h.exact, bound);
                bound = visit(&h.suffix, bound);
            }
            for (i, _) in name.match_indices('.') {
                if let Some(h) = self.keys.get(&name[i + 1..]) {
                    bound = visit(&h.suffix, bound);
                    bound = visit(&h.below, bound);
                }
            }
        }
        if let Some(set) = &self.set {
            // Patterns were added in rule order, so the first hit that passes is the best.
            if self.patterns.first().is_some_and(|p| p.1 < bound) {
                let hits = set.matches(name);
                for i in hits.iter() {
                    let rule = self.patterns[i].1;
                    if rule >= bound {
                        break;
                    }
                    bound = visit(&[rule], bound);
                }
            }
        }
        bound
    }
}

/// IDNA ToUnicode as the reference applies it to request names: every label that starts
/// with `xn--` is Punycode-decoded; if any label fails, `None` (the name is used as is).
/// Also `None` when there is nothing to decode.
pub fn to_unicode(name: &str) -> Option<String> {
    if !name.contains("xn--") {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    for (i, label) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match label.strip_prefix("xn--") {
            Some(code) => out.push_str(&punycode_decode(code)?),
            None => out.push_str(label),
        }
    }
    Some(out)
}

/// RFC 3492 decoding of one label (without its `xn--`).
fn punycode_decode(input: &str) -> Option<String> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    // The reference's limit on a decoded label.
    const MAX_OUTPUT: usize = 1024;

    fn adapt(mut delta: u32, points: u32, first: bool) -> u32 {
        delta /= if first { DAMP } else { 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - TMIN) * TMAX) / 2 {
            delta /= BASE - TMIN;
            k += BASE;
        }
        k + (BASE - TMIN + 1) * delta / (delta + SKEW)
    }

    if input.is_empty() {
        return Some(String::new());
    }
    let bytes = input.as_bytes();
    let (mut out, mut pos): (Vec<char>, usize) = match input.rfind('-') {
        Some(0) => return None,
        Some(d) if d + 1 == bytes.len() => return Some(input[..d].to_string()),
        Some(d) => (input[..d].chars().collect(), d + 1),
        None => (Vec::new(), 0),
    };
    let (mut n, mut i, mut bias) = (128u32, 0u32, 72u32);
    while pos < bytes.len() {
        let old_i = i;
        let mut w = 1u32;
        let mut k = BASE;
        loop {
            let b = *bytes.get(pos)?;
            pos += 1;
            let digit = match b {
                b'a'..=b'z' => u32::from(b - b'a'),
                b'A'..=b'Z' => u32::from(b - b'A'),
                b'0'..=b'9' => u32::from(b - b'0') + 26,
                _ => return None,
            };
            i = i.checked_add(digit.checked_mul(w)?)?;
            let t = if k <= bias {
                TMIN
            } else if k >= bias + TMAX {
                TMAX
            } else {
                k - bias
            };
            if digit < t {
                break;
            }
            w = w.checked_mul(BASE - t)?;
            k += BASE;
        }
        if out.len() >= MAX_OUTPUT {
            return None;
        }
        let len = u32::try_from(out.len()).ok()? + 1;
        bias = adapt(i - old_i, len, old_i == 0);
        n = n.checked_add(i / len)?;
        i %= len;
        out.insert(usize::try_from(i).ok()?, char::from_u32(n)?);
        i += 1;
    }
    Some(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first rule (of a one-rule index) matching `name`, the reference's way: the
    /// Unicode form when decoding succeeds.
    fn hits(ix: &DomainIndex, name: &str) -> bool {
        let u = to_unicode(name);
        let n = u.as_deref().unwrap_or(name);
        ix.lookup(n, u32::MAX, |list, b| list.first().map_or(b, |&r| r.min(b))) == 0
    }

    fn one(add: impl FnOnce(&mut DomainIndex)) -> DomainIndex {
        let mut ix = DomainIndex::default();
        add(&mut ix);
        ix.finish().unwrap();
        ix
    }

    #[test]
    fn punycode_decodes_the_reference_names() {
        assert_eq!(to_unicode("xn--mxtq1m.xn--fiqs8s").unwrap(), "政府.中国");
        assert_eq!(to_unicode("xn--2-x14by21c.com").unwrap(), "战狼2.com");
        assert_eq!(to_unicode("example.com"), None);
        // RFC 3492 sample (Arabic, Egyptian).
        assert_eq!(
            punycode_decode("egbpdaj6bu4bxfgehfvwxn").unwrap(),
            "\u{644}\u{64A}\u{647}\u{645}\u{627}\u{628}\u{62A}\u{643}\u{644}\u{645}\u{648}\u{634}\u{639}\u{631}\u{628}\u{64A}\u{61F}"
        );
        // Broken labels leave the name as it is.
        for bad in [
            "xn---abc",
            "xn--zzzzzzzzzzzzzzzzzz.com",
            "xn--a!b",
            "xn--99999999999",
        ] {
            assert_eq!(to_unicode(bad), None, "{bad}");
        }
        assert_eq!(to_unicode("xn--abc-").unwrap(), "abc");
    }

    #[test]
    fn x10_x11_exact() {
        let ix = one(|ix| ix.add_exact("example.com", 0));
        assert!(hits(&ix, "example.com"));
        assert!(!hits(&ix, "example.org"));
        assert!(!hits(&ix, "www.example.com"));
        let ix = one(|ix| ix.add_exact("政府.中国", 0));
        assert!(hits(&ix, "xn--mxtq1m.xn--fiqs8s"));
        assert!(!hits(&ix, "xn--mxtq1m.xn--yfro4i67o"));
    }

    #[test]
    fn x12_x16_wildcard() {
        let ix = one(|ix| ix.add_wildcard("*.example.com", 0));
        assert!(hits(&ix, "www.example.com"));
        assert!(hits(&ix, "a.b.example.com"));
        assert!(!hits(&ix, "example.com"));
        assert!(!hits(&ix, ""));
        let ix = one(|ix| ix.add_wildcard("example*.com", 0));
        assert!(hits(&ix, "example2.com"));
        assert!(hits(&ix, "example.com"));
        assert!(!hits(&ix, "example2.com.cn"));
        let ix = one(|ix| ix.add_wildcard("战狼*.com", 0));
        assert!(hits(&ix, "xn--2-x14by21c.com"));
        let ix = one(|ix| ix.add_wildcard("*大学*", 0));
        assert!(hits(&ix, "xn--xkry9kk1bz66a.xn--ses554g"));
        let ix = one(|ix| ix.add_wildcard("*呵呵*", 0));
        assert!(!hits(&ix, "xn--6qqt7juua.cn"));
        let ix = one(|ix| ix.add_wildcard("1.2.3.*", 0));
        assert!(hits(&ix, "1.2.3.4"));
        let ix = one(|ix| ix.add_wildcard("*.google.*", 0));
        assert!(hits(&ix, "www.google.co.jp"));
        assert!(!hits(&ix, "google.com"));
        // Regex metacharacters are literal.
        let ix = one(|ix| ix.add_wildcard("a+b.*", 0));
        assert!(hits(&ix, "a+b.c"));
        assert!(!hits(&ix, "aab.c"));
    }

    #[test]
    fn x17_x20_suffix_and_exact() {
        let ix = one(|ix| ix.add_suffix("apple.com", 0));
        assert!(hits(&ix, "apple.com"));
        assert!(hits(&ix, "store.apple.com"));
        assert!(!hits(&ix, "fakeapple.com"));
        let ix = one(|ix| ix.add_suffix("中国", 0));
        assert!(hits(&ix, "中国"));
        assert!(hits(&ix, "天安门.中国"));
        let ix = one(|ix| ix.add_exact("news.com", 0));
        assert!(!hits(&ix, "fakenews.com"));
        let ix = one(|ix| ix.add_exact("冲浪", 0));
        assert!(!hits(&ix, "666.网上冲浪"));
    }

    #[test]
    fn substring_and_regex() {
        let ix = one(|ix| ix.add_substring("ads", 0));
        assert!(hits(&ix, "myadsite.com"));
        assert!(!hits(&ix, "example.com"));
        let ix = one(|ix| {
            ix.add_regex(r"^cdn(-cn)?[1-4]?\.apple-mapkit\.com$", 0)
                .unwrap()
        });
        assert!(hits(&ix, "cdn4.apple-mapkit.com"));
        assert!(!hits(&ix, "cdn5.apple-mapkit.com"));
        let mut ix = DomainIndex::default();
        assert!(ix.add_regex("a(", 0).is_err());
    }

    #[test]
    fn first_rule_wins_across_kinds() {
        let mut ix = DomainIndex::default();
        ix.add_wildcard("*.example.*", 0);
        ix.add_suffix("example.com", 1);
        ix.add_exact("www.example.com", 2);
        ix.finish().unwrap();
        let first = |n: &str| ix.lookup(n, u32::MAX, |l, b| l.first().map_or(b, |&r| r.min(b)));
        assert_eq!(first("www.example.com"), 0);
        assert_eq!(first("example.com"), 1);
        assert_eq!(first("example.org"), u32::MAX);
    }
}
