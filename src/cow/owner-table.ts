// owner[idx] = the vid whose data object holds block idx, or 0 for a hole that reads as zeros.
// Held in memory as pages allocated on first use, so a sparse 64 TiB image costs next to nothing.
// On disk it is an array of u32 LE right after the inode header; one entry changes per new block,
// so a block allocation writes 4 bytes, never the whole table.

export const ENTRY_BYTES = 4
const PAGE_ENTRIES = 4096

export class OwnerTable {
  private readonly pages = new Map<number, Uint32Array>()
  private length: number

  constructor (length: number) {
    this.length = length
  }

  get size (): number { return this.length }

  get (idx: number): number {
    return this.pages.get(Math.floor(idx / PAGE_ENTRIES))?.[idx % PAGE_ENTRIES] ?? 0
  }

  set (idx: number, vid: number): void {
    if (idx >= this.length) throw new RangeError(`owner table index ${idx} past its length ${this.length}`)
    const p = Math.floor(idx / PAGE_ENTRIES)
    let page = this.pages.get(p)
    if (page === undefined) {
      if (vid === 0) return
      page = new Uint32Array(PAGE_ENTRIES)
      this.pages.set(p, page)
    }
    page[idx % PAGE_ENTRIES] = vid
  }

  /** Changes the length; entries past a shrink are dropped. */
  resize (length: number): void {
    if (length < this.length) {
      for (const [p, page] of this.pages) {
        const first = p * PAGE_ENTRIES
        if (first >= length) this.pages.delete(p)
        else if (first + PAGE_ENTRIES > length) page.fill(0, length - first)
      }
    }
    this.length = length
  }

  /** Every non-hole entry, in index order. */
  * entries (): Generator<[idx: number, vid: number]> {
    for (const p of [...this.pages.keys()].sort((a, b) => a - b)) {
      const page = this.pages.get(p) as Uint32Array
      for (let i = 0; i < PAGE_ENTRIES; i++) {
        const vid = page[i] as number
        if (vid !== 0) yield [p * PAGE_ENTRIES + i, vid]
      }
    }
  }

  count (vid: number): number {
    let n = 0
    for (const [, v] of this.entries()) if (v === vid) n++
    return n
  }

  /** Fills entries [first, first + bytes.length / 4) from their on-disk form. */
  load (first: number, bytes: Uint8Array): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const n = Math.min(Math.floor(bytes.byteLength / ENTRY_BYTES), this.length - first)
    for (let i = 0; i < n; i++) {
      const vid = view.getUint32(i * ENTRY_BYTES, true)
      if (vid !== 0) this.set(first + i, vid)
    }
  }

  static encodeEntry (vid: number): Buffer {
    const b = Buffer.alloc(ENTRY_BYTES)
    b.writeUInt32LE(vid, 0)
    return b
  }
}
