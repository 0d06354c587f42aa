//! The run's event trace: every event becomes a line, every line feeds a
//! 64-bit FNV-1a hash, and the lines themselves are kept only when asked
//! for. Two runs of a seed are the same run exactly when their hashes are
//! equal, which is what `--check-determinism` compares.

use std::fmt::{self, Write as _};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub struct Trace {
    hash: u64,
    events: u64,
    keep: bool,
    lines: Vec<String>,
    buf: String,
}

impl Trace {
    pub fn new(keep: bool) -> Trace {
        Trace {
            hash: FNV_OFFSET,
            events: 0,
            keep,
            lines: Vec::new(),
            buf: String::new(),
        }
    }

    /// Records one line at simulated time `now_ns`.
    pub fn record(&mut self, now_ns: u64, args: fmt::Arguments<'_>) {
        self.buf.clear();
        let _ = write!(
            self.buf,
            "{:>6}.{:06} ",
            now_ns / 1_000_000,
            now_ns % 1_000_000
        );
        let _ = self.buf.write_fmt(args);
        for b in self.buf.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= b as u64;
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        self.events += 1;
        if self.keep {
            self.lines.push(self.buf.clone());
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_line_and_its_order() {
        let mk = |lines: &[&str]| {
            let mut t = Trace::new(true);
            for (i, l) in lines.iter().enumerate() {
                t.record(i as u64, format_args!("{l}"));
            }
            t.hash()
        };
        assert_eq!(mk(&["a", "b"]), mk(&["a", "b"]));
        assert_ne!(mk(&["a", "b"]), mk(&["b", "a"]));
        assert_ne!(mk(&["a", "b"]), mk(&["a", "c"]));
        assert_ne!(mk(&["ab"]), mk(&["a", "b"]));
    }
}
