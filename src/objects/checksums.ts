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
    const bad: number[] = []
    for (let at = 0, chunk = first; at < data.length; at += CHUNK, chunk++) {
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
