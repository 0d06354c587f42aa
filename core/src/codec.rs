//! Big-endian binary layouts for Odradek's own records (group records in
//! `__consumer_offsets`, metadata records), in Kafka's style: fixed-width
//! integers, strings with an `i16` length (-1 for null), byte arrays and
//! arrays with an `i32` length.
//!
//! What is read back is untrusted (disk rot, a peer's bytes): every read is
//! bounds-checked, and an array length is checked against the bytes left
//! before anything is allocated, so a corrupt length is an error, never a
//! huge allocation or a panic.

/// A decoding failure: the bytes are corrupt or not what they claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord(pub String);

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn new() -> Writer {
        Writer(Vec::new())
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    pub fn i8(&mut self, v: i8) {
        self.0.push(v as u8);
    }
    pub fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    pub fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// Strings longer than `i16::MAX` bytes are cut: callers refuse them
    /// before they get here.
    pub fn str(&mut self, s: &str) {
        let n = s.len().min(i16::MAX as usize);
        self.i16(n as i16);
        self.0.extend_from_slice(&s.as_bytes()[..n]);
    }
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.i16(-1),
        }
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.i32(b.len() as i32);
        self.0.extend_from_slice(b);
    }
    pub fn len(&mut self, n: usize) {
        self.i32(n as i32);
    }
    pub fn i32s(&mut self, v: &[i32]) {
        self.len(v.len());
        for x in v {
            self.i32(*x);
        }
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    /// Fails unless every byte was read: trailing bytes mean the record is
    /// not what its type says.
    pub fn finish(&self) -> Result<(), BadRecord> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(BadRecord(format!(
                "{} unexpected bytes after the record",
                self.remaining()
            )))
        }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], BadRecord> {
        if self.remaining() < n {
            return Err(BadRecord(format!(
                "record ends at byte {} but {n} more bytes were expected",
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BadRecord> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn i8(&mut self) -> Result<i8, BadRecord> {
        Ok(self.take(1)?[0] as i8)
    }
    pub fn bool(&mut self) -> Result<bool, BadRecord> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(BadRecord(format!("{b} is not a boolean"))),
        }
    }
    pub fn i16(&mut self) -> Result<i16, BadRecord> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, BadRecord> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, BadRecord> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, BadRecord> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn u128(&mut self) -> Result<u128, BadRecord> {
        Ok(u128::from_be_bytes(self.array()?))
    }
    pub fn opt_str(&mut self) -> Result<Option<String>, BadRecord> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| BadRecord("a string is not UTF-8".into()))
    }
    pub fn str(&mut self) -> Result<String, BadRecord> {
        self.opt_str()?
            .ok_or_else(|| BadRecord("a required string is null".into()))
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, BadRecord> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(Vec::new());
        }
        Ok(self.take(n as usize)?.to_vec())
    }
    /// An array length, bounded by what is left: every element takes at
    /// least `min_elem` bytes, so a corrupt length cannot make us allocate.
    pub fn len(&mut self, min_elem: usize) -> Result<usize, BadRecord> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = n as usize;
        if n.saturating_mul(min_elem.max(1)) > self.remaining() {
            return Err(BadRecord(format!("array of {n} elements cannot fit")));
        }
        Ok(n)
    }
    pub fn i32s(&mut self) -> Result<Vec<i32>, BadRecord> {
        let n = self.len(4)?;
        (0..n).map(|_| self.i32()).collect()
    }
}
