//! Kafka's batch compression codecs, in the byte formats clients actually
//! write into the records section of a v2 batch.
//!
//! | codec  | what clients send                                              |
//! |--------|----------------------------------------------------------------|
//! | gzip   | a gzip stream (one member; more are accepted)                  |
//! | snappy | a raw snappy block (librdkafka), or snappy-java's "xerial"     |
//! |        | framing (the Java client): `\x82SNAPPY\0`, two version ints,   |
//! |        | then big-endian length-prefixed raw snappy blocks              |
//! | lz4    | the standard LZ4 frame (v2 batches have the correct header     |
//! |        | checksum; only Kafka's pre-v2 messages had the broken one)     |
//! | zstd   | one or more zstd frames                                        |
//!
//! Decompression takes a limit on its output so that a small batch cannot
//! make the broker allocate gigabytes (a "decompression bomb"): going past
//! the limit is an error, found before the bytes past it are kept, and the
//! output buffer's capacity never exceeds the limit. Besides the output,
//! gzip keeps its 32 KiB window and zstd keeps the frame's window, which is
//! refused past `max(limit, 8 MiB)` (see [`zstd_window_cap`]).
//!
//! Crates, all pure Rust, so core needs no C toolchain and builds quickly:
//! `flate2` on its default miniz_oxide backend; `snap` (raw blocks; the
//! xerial framing is ours, it is a few lines); `lz4_flex` for LZ4 blocks and
//! for writing frames (reading frames is ours, see `lz4_frames` for why)
//! with `twox-hash` for the frame checksums; `ruzstd` rather than the `zstd` bindings,
//! which compile the C library through `cc` on every clean build. ruzstd
//! compresses only at roughly zstd's level 1, which is enough for tests,
//! simulated clients and load tools; real producers bring their own
//! compressors and we only decode what they send.
//!
//! Compression output is a pure function of the input (no timestamps in
//! gzip headers, no randomness), as the simulator's determinism needs.

use std::fmt;
use std::io::{Read, Write};

use super::batch::Compression;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompressionError {
    /// The data decompresses to more than `limit` bytes (or a zstd frame
    /// asks for a window larger than decompression allows).
    LimitExceeded { codec: Compression, limit: usize },
    /// The data is not a valid stream of the codec.
    Malformed { codec: Compression, detail: String },
}

impl fmt::Display for CompressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressionError::LimitExceeded { codec, limit } => write!(
                f,
                "{} data decompresses to more than {limit} bytes",
                codec_name(*codec)
            ),
            CompressionError::Malformed { codec, detail } => {
                write!(f, "invalid {} data: {detail}", codec_name(*codec))
            }
        }
    }
}

impl std::error::Error for CompressionError {}

pub fn codec_name(codec: Compression) -> &'static str {
    match codec {
        Compression::None => "uncompressed",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

fn malformed(codec: Compression, detail: impl fmt::Display) -> CompressionError {
    CompressionError::Malformed {
        codec,
        detail: detail.to_string(),
    }
}

/// Decompresses `input` as `codec` writes it, producing at most `limit`
/// bytes. Never panics, whatever the input.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CompressionError> {
    // No codec's valid encoding of anything is empty, and a batch with a
    // record always has something to compress; say so plainly rather than
    // leave it to each decoder (the frame formats would read zero frames).
    if input.is_empty() && codec != Compression::None {
        return Err(malformed(codec, "no compressed data"));
    }
    let mut out = Sink::new(codec, limit);
    match codec {
        Compression::None => out.push(input)?,
        Compression::Gzip => drain(flate2::read::MultiGzDecoder::new(input), &mut out)?,
        Compression::Snappy => {
            if input.starts_with(&XERIAL_MAGIC) {
                snappy_xerial(input, &mut out)?
            } else {
                snappy_raw(input, &mut out)?
            }
        }
        Compression::Lz4 => lz4_frames(input, &mut out)?,
        Compression::Zstd => zstd_frames(input, &mut out)?,
    }
    Ok(out.into_inner())
}

/// Compresses `input` in the format `decompress` reads and Kafka clients
/// accept: gzip; raw snappy (what librdkafka sends; snappy-java reads it
/// too, falling back from its framing); an LZ4 frame with independent 64 KiB
/// blocks (as Kafka's own Java writer makes); one zstd frame with a content
/// checksum. Deterministic.
pub fn compress(codec: Compression, input: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => input.to_vec(),
        Compression::Gzip => {
            // The builder's defaults leave mtime at zero, so the same input
            // always gives the same bytes.
            let mut enc = flate2::GzBuilder::new().write(
                Vec::with_capacity(input.len() / 2 + 32),
                flate2::Compression::fast(),
            );
            enc.write_all(input).expect("writing to a Vec cannot fail");
            enc.finish().expect("writing to a Vec cannot fail")
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .expect("snappy compresses any input below 4 GiB"),
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(
                info,
                Vec::with_capacity(input.len() / 2 + 32),
            );
            enc.write_all(input).expect("writing to a Vec cannot fail");
            enc.finish().expect("writing to a Vec cannot fail")
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(input, ruzstd::encoding::CompressionLevel::Fastest)
        }
    }
}

/// Compresses with snappy-java's stream framing, as the Java client sends
/// snappy: for simulated Java producers and tests of the framing.
pub fn compress_snappy_java(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + input.len() / 2 + 32);
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&1i32.to_be_bytes()); // version
    out.extend_from_slice(&1i32.to_be_bytes()); // minimum compatible version
    let mut enc = snap::raw::Encoder::new();
    for chunk in input.chunks(XERIAL_BLOCK) {
        let block = enc
            .compress_vec(chunk)
            .expect("snappy compresses any input below 4 GiB");
        out.extend_from_slice(&(block.len() as i32).to_be_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// The output buffer, which refuses to grow past the limit. It grows by
/// doubling like a Vec but its capacity is clamped to the limit, so even the
/// allocation never exceeds it.
struct Sink {
    codec: Compression,
    out: Vec<u8>,
    limit: usize,
}

impl Sink {
    fn new(codec: Compression, limit: usize) -> Sink {
        Sink {
            codec,
            out: Vec::new(),
            limit,
        }
    }

    fn exceeded(&self) -> CompressionError {
        CompressionError::LimitExceeded {
            codec: self.codec,
            limit: self.limit,
        }
    }

    /// Makes room for `n` more bytes, or says the limit forbids them.
    fn reserve(&mut self, n: usize) -> Result<(), CompressionError> {
        let need = self
            .out
            .len()
            .checked_add(n)
            .filter(|need| *need <= self.limit)
            .ok_or_else(|| self.exceeded())?;
        if need > self.out.capacity() {
            let target = self
                .out
                .capacity()
                .saturating_mul(2)
                .max(need)
                .max(4096)
                .min(self.limit);
            self.out.reserve_exact(target - self.out.len());
        }
        Ok(())
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), CompressionError> {
        self.reserve(bytes.len())?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn into_inner(self) -> Vec<u8> {
        self.out
    }
}

/// Reads a streaming decoder to its end into the sink, a chunk at a time,
/// so that a bomb is stopped within one chunk of the limit.
fn drain(mut r: impl Read, out: &mut Sink) -> Result<(), CompressionError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => out.push(&chunk[..n])?,
            Err(e) => return Err(malformed(out.codec, e)),
        }
    }
}

// ---- snappy ----------------------------------------------------------------

const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Magic, version, minimum compatible version.
const XERIAL_HEADER_LEN: usize = 16;
/// snappy-java's default block size.
const XERIAL_BLOCK: usize = 32 * 1024;

/// Decompresses one raw snappy block onto the end of the sink. The block
/// states its uncompressed length up front, so the limit is checked before
/// anything is allocated.
fn snappy_raw(block: &[u8], out: &mut Sink) -> Result<(), CompressionError> {
    let codec = Compression::Snappy;
    let n = snap::raw::decompress_len(block).map_err(|e| malformed(codec, e))?;
    out.reserve(n)?;
    let start = out.out.len();
    out.out.resize(start + n, 0);
    match snap::raw::Decoder::new().decompress(block, &mut out.out[start..]) {
        Ok(written) if written == n => Ok(()),
        Ok(written) => {
            out.out.truncate(start);
            Err(malformed(
                codec,
                format!("block claims {n} bytes but holds {written}"),
            ))
        }
        Err(e) => {
            out.out.truncate(start);
            Err(malformed(codec, e))
        }
    }
}

/// snappy-java's framing: a header, then blocks each preceded by its
/// compressed length as a big-endian i32. The versions are not checked:
/// only version 1 exists, and librdkafka ignores them too. A second header
/// where a block length would be marks a concatenated stream, which
/// snappy-java reads on; so do we.
fn snappy_xerial(input: &[u8], out: &mut Sink) -> Result<(), CompressionError> {
    let codec = Compression::Snappy;
    let mut pos = 0;
    while pos < input.len() {
        let rest = &input[pos..];
        if rest.starts_with(&XERIAL_MAGIC) {
            if rest.len() < XERIAL_HEADER_LEN {
                return Err(malformed(codec, "truncated snappy-java header"));
            }
            pos += XERIAL_HEADER_LEN;
            continue;
        }
        let Some(len_bytes) = rest.get(..4) else {
            return Err(malformed(codec, "truncated snappy-java block length"));
        };
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let block = usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(4..4 + len))
            .ok_or_else(|| {
                malformed(
                    codec,
                    format!(
                        "snappy-java block of {len} bytes at {pos}, {} bytes left",
                        rest.len() - 4
                    ),
                )
            })?;
        snappy_raw(block, out)?;
        pos += 4 + block.len();
    }
    Ok(())
}

// ---- lz4 -------------------------------------------------------------------

const LZ4_MAGIC: u32 = 0x184D_2204;
/// Skippable frames, shared with zstd: magics 0x184D2A50..=0x184D2A5F.
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE: u32 = 0x184D_2A50;
/// How far back a linked block may reach into the output before it.
const LZ4_WINDOW: usize = 64 * 1024;

const FLG_VERSION_MASK: u8 = 0b1100_0000;
const FLG_VERSION_01: u8 = 0b0100_0000;
const FLG_INDEPENDENT_BLOCKS: u8 = 0b0010_0000;
const FLG_BLOCK_CHECKSUM: u8 = 0b0001_0000;
const FLG_CONTENT_SIZE: u8 = 0b0000_1000;
const FLG_CONTENT_CHECKSUM: u8 = 0b0000_0100;
const FLG_RESERVED: u8 = 0b0000_0010;
const FLG_DICT_ID: u8 = 0b0000_0001;
const BLOCK_UNCOMPRESSED: u32 = 0x8000_0000;

/// Reads little-endian u32s and byte runs off the front of a slice.
struct Cursor<'a> {
    rest: &'a [u8],
    codec: Compression,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CompressionError> {
        if self.rest.len() < n {
            return Err(malformed(
                self.codec,
                format!(
                    "truncated {what}: {n} bytes wanted, {} left",
                    self.rest.len()
                ),
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32_le(&mut self, what: &str) -> Result<u32, CompressionError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The LZ4 frame format, read here rather than by lz4_flex's frame reader
/// (whose block decoder does the work) for two reasons: lz4_flex takes a
/// stream that stops where a block header or end mark should be as having
/// ended cleanly, so a truncated frame would pass; and it sizes buffers by
/// the frame's declared block size (up to 12 MiB) before any output shows
/// they are needed. Here blocks decode straight into the bounded output, and
/// every part of a frame must be present.
fn lz4_frames(input: &[u8], out: &mut Sink) -> Result<(), CompressionError> {
    let codec = Compression::Lz4;
    let mut cur = Cursor { rest: input, codec };
    while !cur.rest.is_empty() {
        let magic = cur.u32_le("frame magic")?;
        if magic & SKIPPABLE_MASK == SKIPPABLE {
            let len = cur.u32_le("skippable frame")? as usize;
            cur.take(len, "skippable frame")?;
            continue;
        }
        if magic != LZ4_MAGIC {
            return Err(malformed(codec, format!("bad frame magic {magic:08x}")));
        }
        lz4_frame(&mut cur, out)?;
    }
    Ok(())
}

/// One frame, after its magic.
fn lz4_frame(cur: &mut Cursor<'_>, out: &mut Sink) -> Result<(), CompressionError> {
    let codec = Compression::Lz4;
    let descriptor_start = cur.rest;
    let fb = cur.take(2, "frame descriptor")?;
    let (flg, bd) = (fb[0], fb[1]);
    if flg & FLG_VERSION_MASK != FLG_VERSION_01 {
        return Err(malformed(
            codec,
            format!("unsupported frame version in {flg:02x}"),
        ));
    }
    if flg & FLG_RESERVED != 0 || bd & 0b1000_1111 != 0 {
        return Err(malformed(codec, "reserved frame descriptor bits set"));
    }
    if flg & FLG_DICT_ID != 0 {
        return Err(malformed(
            codec,
            "frames with a dictionary are not supported",
        ));
    }
    let block_max = match (bd >> 4) & 0x07 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        id => return Err(malformed(codec, format!("invalid block size id {id}"))),
    };
    let content_size = if flg & FLG_CONTENT_SIZE != 0 {
        let b = cur.take(8, "content size")?;
        Some(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    } else {
        None
    };
    let descriptor_len = descriptor_start.len() - cur.rest.len();
    let descriptor = &descriptor_start[..descriptor_len];
    let hc = cur.take(1, "header checksum")?[0];
    // The header checksum is the second byte of the descriptor's xxHash32.
    // (Kafka's magic v0/v1 messages hashed the magic too; v2 batches are
    // right, and only v2 batches reach here.)
    let expected = (twox_hash::XxHash32::oneshot(0, descriptor) >> 8) as u8;
    if hc != expected {
        return Err(malformed(
            codec,
            format!("header checksum {hc:02x}, expected {expected:02x}"),
        ));
    }
    let linked = flg & FLG_INDEPENDENT_BLOCKS == 0;
    let frame_start = out.out.len();
    loop {
        let info = cur.u32_le("block header or end mark")?;
        if info == 0 {
            break;
        }
        let stored = info & BLOCK_UNCOMPRESSED != 0;
        let len = (info & !BLOCK_UNCOMPRESSED) as usize;
        if len > block_max {
            return Err(malformed(
                codec,
                format!("block of {len} bytes, larger than the frame's {block_max}"),
            ));
        }
        let block = cur.take(len, "block")?;
        if flg & FLG_BLOCK_CHECKSUM != 0 {
            let sum = cur.u32_le("block checksum")?;
            if twox_hash::XxHash32::oneshot(0, block) != sum {
                return Err(malformed(codec, "block checksum mismatch"));
            }
        }
        if stored {
            out.push(block)?;
        } else {
            lz4_block(block, block_max, linked, frame_start, out)?;
        }
    }
    let produced = &out.out[frame_start..];
    if let Some(size) = content_size {
        if produced.len() as u64 != size {
            return Err(malformed(
                codec,
                format!("frame declares {size} bytes, holds {}", produced.len()),
            ));
        }
    }
    if flg & FLG_CONTENT_CHECKSUM != 0 {
        let sum = cur.u32_le("content checksum")?;
        if twox_hash::XxHash32::oneshot(0, produced) != sum {
            return Err(malformed(codec, "content checksum mismatch"));
        }
    }
    Ok(())
}

/// Decodes one compressed block onto the end of the output. It may produce
/// up to `block_max` bytes; it is given only as much room as the limit
/// leaves, and running out of that room is the limit's doing.
fn lz4_block(
    block: &[u8],
    block_max: usize,
    linked: bool,
    frame_start: usize,
    out: &mut Sink,
) -> Result<(), CompressionError> {
    let codec = Compression::Lz4;
    let start = out.out.len();
    let room = block_max.min(out.limit - start);
    out.reserve(room)?;
    out.out.resize(start + room, 0);
    let (before, space) = out.out.split_at_mut(start);
    // Linked blocks may copy from the frame's last 64 KiB of output, never
    // from an earlier frame's.
    let dict = if linked {
        &before[frame_start.max(start.saturating_sub(LZ4_WINDOW))..]
    } else {
        &[][..]
    };
    let result = lz4_flex::block::decompress_into_with_dict(block, space, dict);
    match result {
        Ok(n) => {
            out.out.truncate(start + n);
            Ok(())
        }
        Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) if room < block_max => {
            out.out.truncate(start);
            Err(out.exceeded())
        }
        Err(e) => {
            out.out.truncate(start);
            Err(malformed(codec, e))
        }
    }
}

// ---- zstd ------------------------------------------------------------------

/// The smallest window a zstd frame may always ask for. Zstd needs the last
/// `window` bytes of output while decoding, and ruzstd holds them before
/// handing any out, so the window is working memory the output limit does
/// not see. Capping it at the limit alone would refuse ordinary frames
/// whenever the limit is small: the Java client (zstd-jni, streaming, level
/// 3) declares a 2 MiB window however little it compresses, and levels up to
/// 18 stay within 8 MiB.
pub const ZSTD_WINDOW_ALLOWANCE: u64 = 8 << 20;

/// The largest window decompression accepts for a given output limit: the
/// limit itself, at least [`ZSTD_WINDOW_ALLOWANCE`], and at most what the
/// reference decoder accepts by default (128 MiB).
pub fn zstd_window_cap(limit: usize) -> u64 {
    (limit as u64).clamp(
        ZSTD_WINDOW_ALLOWANCE,
        ruzstd::decoding::DEFAULT_MAX_WINDOW_SIZE,
    )
}

const ZSTD_MAGIC: u32 = 0xFD2F_B528;

/// Decodes every frame in `input` in turn (ruzstd's streaming decoder reads
/// one), skipping skippable frames as the format says.
fn zstd_frames(input: &[u8], out: &mut Sink) -> Result<(), CompressionError> {
    use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
    let codec = Compression::Zstd;
    let mut rest: &[u8] = input;
    let mut chunk = [0u8; 16 * 1024];
    while !rest.is_empty() {
        let Some(magic) = rest.get(..4) else {
            return Err(malformed(codec, "trailing bytes after the last frame"));
        };
        let magic = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
        if magic & SKIPPABLE_MASK == SKIPPABLE {
            let len = rest
                .get(4..8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| malformed(codec, "truncated skippable frame"))?;
            rest = rest
                .get(8..)
                .and_then(|r| r.get(len..))
                .ok_or_else(|| malformed(codec, "truncated skippable frame"))?;
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Err(malformed(codec, format!("bad frame magic {magic:08x}")));
        }
        // A fresh decoder for each frame: reusing one would reserve the
        // whole window up front, before any output shows it is needed.
        let mut dec = FrameDecoder::new();
        dec.set_max_window_size(zstd_window_cap(out.limit));
        dec.init(&mut rest).map_err(|e| match e {
            ruzstd::decoding::errors::FrameDecoderError::WindowSizeTooBig { .. } => out.exceeded(),
            e => malformed(codec, e),
        })?;
        loop {
            let n = dec.read(&mut chunk).map_err(|e| malformed(codec, e))?;
            if n > 0 {
                out.push(&chunk[..n])?;
                continue;
            }
            if dec.is_finished() {
                break;
            }
            // One block at a time: a block is at most 128 KiB of output, so
            // a bomb is caught within a block of the limit (plus the window).
            dec.decode_blocks(&mut rest, BlockDecodingStrategy::UptoBlocks(1))
                .map_err(|e| malformed(codec, e))?;
        }
        if let Some(stored) = dec.get_checksum_from_data() {
            if dec.get_calculated_checksum() != Some(stored) {
                return Err(malformed(codec, "content checksum mismatch"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
