// A checksum for every 4 KiB chunk of an object, verified on every read (docs/ARCHITECTURE.md,
// "Checksums"). A chunk's checksum covers 4096 bytes, the bytes past the object's end counted as
// zeros: so a chunk an object grows over keeps its checksum, and a new object's are all the one
// of a zero chunk. CRC-32 (IEEE), measured here per 1 MiB in 4 KiB chunks: @node-rs/crc32 (Rust
// crc32fast, PCLMULQDQ) 115 µs, node:zlib's 230 µs, sodium's SipHash 380 µs, BLAKE2b 1.7 ms,
// @node-rs/xxhash's xxh3 515 µs (its 64-bit answer is a BigInt). Both CRC-32s give the same
// values: where the native module has no build for the platform, zlib's serves. It finds what
// disks do to data (flipped bits, torn or misdirected writes, zeroed pages); it is no defence
// against someone who may write the store's files, who could rewrite the checksums as well.

import zlib from 'node:zlib'

type Crc32 = (data: Uint8Array, initial?: number) => number

function nativeCrc32 (): Crc32 | null {
  try {
    return (require('@node-rs/crc32') as { crc32: Crc32 }).crc32
  } catch {
    return null
  }
}

/** CRC-32 of data, continuing from `initial`. */
export const crc32: Crc32 = nativeCrc32() ?? ((data, initial) => zlib.crc32(data, initial))

export const CHUNK = 4096
const ZEROS = new Uint8Array(CHUNK)
export const ZERO_SUM = crc32(ZEROS)

/** The checksum of one chunk whose first `bytes.length` bytes are `bytes` (at most CHUNK), the rest zeros. */
export function chunkSum (bytes: Uint8Array): number {
  const sum = crc32(bytes)
  return bytes.length === CHUNK ? sum : crc32(ZEROS.subarray(bytes.length), sum)
}

/**
 * CRC-32's register after 4096 more zero bytes, as four tables by byte: a linear map over
 * GF(2), so that CRC(a || b) for a chunk b is after4k(CRC(a)) ^ CRC(b) (zlib's crc32_combine,
 * for one length). A read checks its chunks with one CRC call over all of them against the
 * combination of their checksums, instead of a call per chunk.
 */
const [AFTER_4K_0, AFTER_4K_1, AFTER_4K_2, AFTER_4K_3] = afterZeros(CHUNK) as [Uint32Array, Uint32Array, Uint32Array, Uint32Array]

function afterZeros (bytes: number): Uint32Array[] {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = (c & 1) !== 0 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  const columns = new Uint32Array(32)
  for (let bit = 0; bit < 32; bit++) {
    let r = (1 << bit) >>> 0
    for (let i = 0; i < bytes; i++) r = ((table[r & 0xff] as number) ^ (r >>> 8)) >>> 0
    columns[bit] = r
  }
  return [0, 8, 16, 24].map(shift => {
    const t = new Uint32Array(256)
    for (let b = 0; b < 256; b++) {
      let v = 0
      for (let k = 0; k < 8; k++) if ((b >> k) & 1) v ^= columns[shift + k] as number
      t[b] = v >>> 0
    }
    return t
  })
}

/** The CRC-32 of `a || b` where b is one whole chunk: from a's CRC and b's. */
export function combineChunk (crcA: number, crcB: number): number {
  return ((AFTER_4K_0[crcA & 0xff] as number) ^ (AFTER_4K_1[(crcA >>> 8) & 0xff] as number) ^ (AFTER_4K_2[(crcA >>> 16) & 0xff] as number) ^
    (AFTER_4K_3[crcA >>> 24] as number) ^ crcB) >>> 0
}

/** How many chunks an object of `size` bytes has. */
export function chunksOf (size: number): number {
  return Math.ceil(size / CHUNK)
}

/** Chunks [first, end) that the byte range [offset, offset + length) touches. */
export function chunkRange (offset: number, length: number): { first: number, end: number } {
  return { first: Math.floor(offset / CHUNK), end: Math.ceil((offset + length) / CHUNK) }
}

/**
 * One object's checksums, as the store keeps them in memory while the object is in use. Chunks
 * past `length` are zero chunks. `changes` counts changes, so that a save knows whether it holds
 * the latest.
 */
export class ObjectSums {
  private sums: Uint32Array
  changes = 0

  constructor (sums: Uint32Array = new Uint32Array(0)) {
    this.sums = sums
  }

  /** The checksums of an object whose bytes are `data`. */
  static of (data: Uint8Array): ObjectSums {
    const s = new ObjectSums(new Uint32Array(chunksOf(data.length)))
    s.setFrom(0, data)
    return s
  }

  get (chunk: number): number {
    return chunk < this.sums.length ? this.sums[chunk] as number : ZERO_SUM
  }

  set (chunk: number, sum: number): void {
    if (chunk >= this.sums.length) {
      if (sum === ZERO_SUM) return
      const grown = new Uint32Array(Math.max(chunk + 1, this.sums.length * 2))
      grown.fill(ZERO_SUM, this.sums.length)
      grown.set(this.sums)
      this.sums = grown
    }
    this.sums[chunk] = sum
    this.changes++
  }

  /** Sets the checksums of the chunks `data` (the object's bytes from chunk `first` on) covers; a short last piece counts as zeros past its end. */
  setFrom (first: number, data: Uint8Array): void {
    for (let at = 0, chunk = first; at < data.length; at += CHUNK, chunk++) this.set(chunk, chunkSum(data.subarray(at, at + CHUNK)))
  }

  /** Forgets chunks from `chunk` on (the object was cut there): they read as zeros. */
  cut (chunk: number): void {
    if (chunk >= this.sums.length) return
    this.sums.fill(ZERO_SUM, chunk)
    this.changes++
  }

  /**
   * Chunks of `data` (the object's bytes from chunk `first` on, the last piece possibly short)
   * whose bytes do not match their checksums.
   */
  mismatches (first: number, data: Uint8Array): number[] {
    // The whole chunks at once: one CRC call, checked against their checksums combined. Damage
    // confined to one chunk is found exactly as that chunk's own checksum would find it; only
    // damage in several chunks that cancels out (about 1 in 2^32) could pass. The chunks are
    // named one by one only when it does not match.
    const whole = Math.floor(data.length / CHUNK)
    let from = 0
    if (whole > 1) {
      let expected = this.get(first)
      for (let k = 1; k < whole; k++) expected = combineChunk(expected, this.get(first + k))
      if (crc32(data.subarray(0, whole * CHUNK)) === expected) from = whole * CHUNK
    }
    const bad: number[] = []
    for (let at = from, chunk = first + from / CHUNK; at < data.length; at += CHUNK, chunk++) {
      if (chunkSum(data.subarray(at, at + CHUNK)) !== this.get(chunk)) bad.push(chunk)
    }
    return bad
  }

  /** The checksums of an object of `size` bytes, for the store's index (chunks past it are zeros). */
  encode (size: number): Uint8Array {
    const n = chunksOf(size)
    const out = new Uint32Array(n)
    out.set(this.sums.subarray(0, n))
    if (n > this.sums.length) out.fill(ZERO_SUM, this.sums.length)
    return new Uint8Array(out.buffer)
  }

  static decode (bytes: Uint8Array): ObjectSums {
    if (bytes.length % 4 !== 0) throw new Error(`checksums of ${bytes.length} bytes, not a multiple of 4`)
    const copy = new Uint8Array(bytes) // aligned for the Uint32Array view
    return new ObjectSums(new Uint32Array(copy.buffer, 0, copy.length / 4))
  }
}
