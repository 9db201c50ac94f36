//! Comparisons of secrets (passwords, API secrets) whose time does not depend on where the
//! bytes differ, so a client cannot find a secret byte by byte from response times. The
//! length is not hidden.

/// Whether `given` equals `expected`, compared in constant time for equal lengths.
pub fn eq(given: &str, expected: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), expected.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_when_every_byte_matches() {
        assert!(super::eq("hunter2", "hunter2"));
        assert!(super::eq("", ""));
        assert!(!super::eq("hunter2", "hunter3"));
        assert!(!super::eq("hunter2", "hunter22"));
        assert!(!super::eq("", "x"));
    }
}
