//! Byte-level encoding shared by the messages and the files: big-endian
//! integers, and a reader that fails instead of panicking on short or
//! malformed input and never allocates more than the input it was given.

use std::fmt;

use super::{Entry, EntryKind};

/// Bytes that do not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed raft data: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

pub(crate) fn err<T>(what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(what.into()))
}

pub(crate) struct Reader<'a> {
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

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return err(format!(
                "wanted {n} bytes at {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => err(format!("bad boolean {b}")),
        }
    }

    /// A u32 length followed by that many bytes.
    pub fn blob(&mut self, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return err(format!("{len} bytes exceeds the limit of {max}"));
        }
        Ok(self.bytes(len)?.to_vec())
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return err(format!("{} trailing bytes", self.remaining()));
        }
        Ok(())
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_blob(out: &mut Vec<u8>, data: &[u8]) {
    // Callers bound their data far below 4 GiB (Config::validate).
    put_u32(out, data.len() as u32);
    out.extend_from_slice(data);
}

/// Encoded size of an entry's fixed part: offset, epoch, kind, data length.
pub(crate) const ENTRY_HEADER: usize = 8 + 8 + 1 + 4;

pub(crate) fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    put_u64(out, e.offset);
    put_u64(out, e.epoch);
    out.push(match e.kind {
        EntryKind::LeaderChange => 0,
        EntryKind::Data => 1,
    });
    put_blob(out, &e.data);
}

pub(crate) fn get_entry(r: &mut Reader<'_>, max_data: usize) -> Result<Entry, DecodeError> {
    let offset = r.u64()?;
    let epoch = r.u64()?;
    let kind = match r.u8()? {
        0 => EntryKind::LeaderChange,
        1 => EntryKind::Data,
        k => return err(format!("unknown entry kind {k}")),
    };
    let data = r.blob(max_data)?;
    Ok(Entry {
        offset,
        epoch,
        kind,
        data,
    })
}
