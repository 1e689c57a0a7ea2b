//! A small random generator for the races.

use super::reporter::Reporter;

/// A small xorshift generator; the seed is logged, so a run can be told apart.
pub struct Rng(u64);

impl Rng {
    pub fn new(r: &mut Reporter) -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        r.log(&format!("random seed {seed}"));
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
