// The owner table of an inode: one entry per block of the image.
//
//   owner    vid of the data object (owner, idx) that holds the block; 0 for a hole (zeros)
//   present  64-bit map of the object's sub-blocks (objectSize / 64 each) that hold data
//   backing  where the other sub-blocks come from: the vid whose inode's entry for idx to read
//            them through; 0 for zeros
//
// A block written from a hole is "full" (every sub-block present, no backing). A block first
// written in an image whose entry points at a snapshot's object is copied up sub-block by
// sub-block: only the sub-blocks a write touches are copied, the rest stay shared.
// An inode's entry for a block it does not own is a verbatim copy of the owner's own entry, and
// the owner is frozen (a snapshot, or an image's inode frozen for a copy: ./copy-range.ts), so
// its entries never change and following `backing` always finds the bytes the image had.
//
// In memory the table is held as pages allocated on first use, so a sparse 64 TiB image costs
// next to nothing. On disk it is an array of 16-byte entries (u32 LE owner, u32 LE backing,
// u32 LE present low, u32 LE present high) after the inode header; a block allocation or
// copy-up rewrites one entry, never the table.

export const ENTRY_BYTES = 16
export const SUBBLOCKS = 64
const WORDS = 4
const PAGE_ENTRIES = 4096
const FULL = 0xffffffff

export class OwnerTable {
  private readonly pages = new Map<number, Uint32Array>()
  private length: number

  constructor (length: number) {
    this.length = length
  }

  get size (): number { return this.length }

  owner (idx: number): number {
    return this.pages.get(Math.floor(idx / PAGE_ENTRIES))?.[(idx % PAGE_ENTRIES) * WORDS] ?? 0
  }

  backing (idx: number): number {
    return this.pages.get(Math.floor(idx / PAGE_ENTRIES))?.[(idx % PAGE_ENTRIES) * WORDS + 1] ?? 0
  }

  /** Every sub-block of the block is in its owner's object. */
  isFull (idx: number): boolean {
    const page = this.pages.get(Math.floor(idx / PAGE_ENTRIES))
    if (page === undefined) return false
    const w = (idx % PAGE_ENTRIES) * WORDS
    return page[w + 2] === FULL && page[w + 3] === FULL
  }

  hasSubblock (idx: number, sub: number): boolean {
    const page = this.pages.get(Math.floor(idx / PAGE_ENTRIES))
    if (page === undefined) return false
    const word = page[(idx % PAGE_ENTRIES) * WORDS + 2 + (sub >>> 5)] as number
    return ((word >>> (sub & 31)) & 1) === 1
  }

  /** Sub-blocks present, as a count. */
  presentCount (idx: number): number {
    const page = this.pages.get(Math.floor(idx / PAGE_ENTRIES))
    if (page === undefined) return 0
    const w = (idx % PAGE_ENTRIES) * WORDS
    return popcount(page[w + 2] as number) + popcount(page[w + 3] as number)
  }

  setFull (idx: number, owner: number): void {
    this.set(idx, owner, 0, FULL, FULL)
  }

  /** A copied-up block with no sub-block yet: everything still reads through `backing`. */
  setEmpty (idx: number, owner: number, backing: number): void {
    this.set(idx, owner, backing, 0, 0)
  }

  /** Marks sub-blocks [first, last] present; a block that becomes full drops its backing. */
  addSubblocks (idx: number, first: number, last: number): void {
    const page = this.page(idx)
    const w = (idx % PAGE_ENTRIES) * WORDS
    for (let s = first; s <= last; s++) page[w + 2 + (s >>> 5)] = ((page[w + 2 + (s >>> 5)] as number) | (1 << (s & 31))) >>> 0
    if (page[w + 2] === FULL && page[w + 3] === FULL) page[w + 1] = 0
  }

  /** Entry idx becomes a verbatim copy of `from`'s entry idx (a hole there clears it). */
  copyEntry (idx: number, from: OwnerTable): void {
    const page = from.pages.get(Math.floor(idx / PAGE_ENTRIES))
    const w = (idx % PAGE_ENTRIES) * WORDS
    if (page === undefined || page[w] === 0) return this.clear(idx)
    this.set(idx, page[w] as number, page[w + 1] as number, page[w + 2] as number, page[w + 3] as number)
  }

  clear (idx: number): void {
    if (idx >= this.length) return
    const page = this.pages.get(Math.floor(idx / PAGE_ENTRIES))
    if (page === undefined) return
    page.fill(0, (idx % PAGE_ENTRIES) * WORDS, (idx % PAGE_ENTRIES + 1) * WORDS)
  }

  private set (idx: number, owner: number, backing: number, lo: number, hi: number): void {
    if (idx >= this.length) throw new RangeError(`owner table index ${idx} past its length ${this.length}`)
    const page = this.page(idx)
    const w = (idx % PAGE_ENTRIES) * WORDS
    page[w] = owner
    page[w + 1] = backing
    page[w + 2] = lo
    page[w + 3] = hi
  }

  private page (idx: number): Uint32Array {
    const p = Math.floor(idx / PAGE_ENTRIES)
    let page = this.pages.get(p)
    if (page === undefined) {
      page = new Uint32Array(PAGE_ENTRIES * WORDS)
      this.pages.set(p, page)
    }
    return page
  }

  /** Changes the length; entries past a shrink are dropped. */
  resize (length: number): void {
    if (length < this.length) {
      for (const [p, page] of this.pages) {
        const first = p * PAGE_ENTRIES
        if (first >= length) this.pages.delete(p)
        else if (first + PAGE_ENTRIES > length) page.fill(0, (length - first) * WORDS)
      }
    }
    this.length = length
  }

  /** A deep copy, for a snapshot or a clone. */
  clone (): OwnerTable {
    const copy = new OwnerTable(this.length)
    for (const [p, page] of this.pages) copy.pages.set(p, page.slice())
    return copy
  }

  /** Indexes of every non-hole entry, in order. */
  * blocks (): Generator<number> {
    for (const p of [...this.pages.keys()].sort((a, b) => a - b)) {
      const page = this.pages.get(p) as Uint32Array
      for (let i = 0; i < PAGE_ENTRIES; i++) if (page[i * WORDS] !== 0) yield p * PAGE_ENTRIES + i
    }
  }

  /** Blocks whose owner is `vid`. */
  * ownedBy (vid: number): Generator<number> {
    for (const idx of this.blocks()) if (this.owner(idx) === vid) yield idx
  }

  /**
   * Every run of non-hole entries in its on-disk form, for writing a whole table into a new
   * (sparse) inode: holes are not written, so the cost follows the blocks in use.
   */
  * encodedRuns (): Generator<{ first: number, bytes: Buffer }> {
    for (const [p, page] of this.pages) {
      const base = p * PAGE_ENTRIES
      const n = Math.min(PAGE_ENTRIES, this.length - base)
      let i = 0
      while (i < n) {
        if (page[i * WORDS] === 0) { i++; continue }
        let end = i + 1
        while (end < n && page[end * WORDS] !== 0) end++
        const bytes = Buffer.alloc((end - i) * ENTRY_BYTES)
        for (let w = i * WORDS; w < end * WORDS; w++) bytes.writeUInt32LE(page[w] as number, (w - i * WORDS) * 4)
        yield { first: base + i, bytes }
        i = end
      }
    }
  }

  /** Entry idx in its on-disk form. */
  encodeEntry (idx: number): Buffer {
    const b = Buffer.alloc(ENTRY_BYTES)
    const page = this.pages.get(Math.floor(idx / PAGE_ENTRIES))
    if (page === undefined) return b
    const w = (idx % PAGE_ENTRIES) * WORDS
    for (let i = 0; i < WORDS; i++) b.writeUInt32LE(page[w + i] as number, i * 4)
    return b
  }

  /** Fills entries [first, first + bytes.length / 16) from their on-disk form. */
  load (first: number, bytes: Uint8Array): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const n = Math.min(Math.floor(bytes.byteLength / ENTRY_BYTES), this.length - first)
    for (let i = 0; i < n; i++) {
      const owner = view.getUint32(i * ENTRY_BYTES, true)
      if (owner === 0) continue
      this.set(first + i, owner, view.getUint32(i * ENTRY_BYTES + 4, true),
        view.getUint32(i * ENTRY_BYTES + 8, true), view.getUint32(i * ENTRY_BYTES + 12, true))
    }
  }
}

function popcount (x: number): number {
  x = x - ((x >>> 1) & 0x55555555)
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333)
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24
}
