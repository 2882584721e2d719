//! FNV-1a, 64 bits: a stable hash (std's hasher may change between releases) for telling runs,
//! inputs and models apart in files written to disk. Not a security boundary.

/// A running FNV-1a hash. Its state is its value, so a hash recorded on disk can be continued
/// ([`Fnv::resume`]) when more input follows — a resumed collection extends the hash of what it
/// had already read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    pub const fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Continues a hash from its hex form ([`Fnv::hex`]); None if `hex` is not one.
    pub fn resume(hex: &str) -> Option<Self> {
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok().map(Fnv)).flatten()
    }

    pub fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash of `bytes` alone.
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Self::new();
        h.eat(bytes);
        h
    }

    /// Sixteen lowercase hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_vectors_and_resumes() {
        // Test vectors of the FNV reference (draft-eastlake-fnv).
        assert_eq!(Fnv::of(b"").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv::of(b"a").0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv::of(b"foobar").0, 0x8594_4171_f739_67e8);
        let mut h = Fnv::resume(&Fnv::of(b"foo").hex()).unwrap();
        h.eat(b"bar");
        assert_eq!(h, Fnv::of(b"foobar"));
        assert!(Fnv::resume("xyz").is_none() && Fnv::resume("").is_none());
    }
}
