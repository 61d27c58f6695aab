// What an image may hold after a crash, sector by sector. The writes of the crash tests cover
// whole 4 KiB sectors; every 512-byte chunk of a sector they write holds an 8-byte header (the
// write's sequence number and the chunk's index in the image) and a fill byte taken from the
// sequence number, so a chunk read back names the write it came from. Zeros are sequence 0:
// never written.
//
// A write that was under way when the daemon died may have landed in part, and not only by whole
// pages: the kernel copies a write into the page cache piece by piece and stops between pieces
// for a fatal signal (seen once in 1000 rounds, a 4 KiB sector holding part of the last write).
// Disks promise no more than 512 bytes either, so a chunk is the unit that is checked.
//
// The model follows one image through crashes: `settled` is the write each sector held as last
// verified; a crash round adds the writes the guest made (`W`) and what fsync acknowledged (`S`).
// After the restart each chunk of a sector must hold the newest write to it acknowledged before
// the crash, or one of the writes made after that (they may or may not have reached the store),
// never anything older.

export const SECTOR = 4096
const CHUNK = 512
const CHUNKS = SECTOR / CHUNK
const HEADER = 8

const fills = new Map<number, Buffer>()
function fillOf (seq: number): Buffer {
  const byte = seq === 0 ? 0 : (seq % 255) + 1
  let f = fills.get(byte)
  if (f === undefined) { f = Buffer.alloc(CHUNK - HEADER, byte); fills.set(byte, f) }
  return f
}

export function fillSector (target: Buffer, seq: number, sector: number): void {
  for (let c = 0; c < CHUNKS; c++) {
    const at = c * CHUNK
    target.writeUInt32LE(seq, at)
    target.writeUInt32LE(sector * CHUNKS + c, at + 4)
    fillOf(seq).copy(target, at + HEADER)
  }
}

/** The write each chunk of a sector read back came from, or a description of what is wrong with it. */
export function chunkSeqs (data: Buffer, sector: number): number[] | string {
  const seqs: number[] = []
  for (let c = 0; c < CHUNKS; c++) {
    const chunk = data.subarray(c * CHUNK, (c + 1) * CHUNK)
    const seq = chunk.readUInt32LE(0)
    if (seq === 0) {
      if (!chunk.equals(ZERO_CHUNK)) return `chunk ${c} holds neither zeros nor a write (torn inside 512 bytes, or foreign bytes)`
    } else if (chunk.readUInt32LE(4) !== sector * CHUNKS + c) {
      return `chunk ${c} holds write ${seq}'s bytes for chunk ${chunk.readUInt32LE(4)}`
    } else if (!chunk.subarray(HEADER).equals(fillOf(seq))) {
      return `chunk ${c} of write ${seq} is torn inside 512 bytes`
    }
    seqs.push(seq)
  }
  return seqs
}

const ZERO_CHUNK = Buffer.alloc(CHUNK)

export class CrashModel {
  /** Per sector: the write it held when last verified (0: zeros). */
  private readonly settled: Uint32Array
  /** Sectors whose chunks hold different writes (a write torn by the crash): each chunk's. */
  private readonly mixed = new Map<number, number[]>()
  /** Per sector touched this round: the writes made to it, oldest first. */
  private readonly round = new Map<number, number[]>()
  /** Highest sequence number acknowledged by an fsync this round. */
  private acked = 0
  nextSeq = 1
  writes = 0
  syncs = 0

  constructor (readonly sectors: number) {
    this.settled = new Uint32Array(sectors)
  }

  /** Takes one line of crash-writer's output. */
  take (line: string): void {
    const [kind, a = '', b = '', c = ''] = line.split(' ')
    if (kind === 'W') {
      const seq = Number(a)
      const first = Number(b)
      const count = Number(c)
      for (let s = first; s < first + count; s++) {
        let list = this.round.get(s)
        if (list === undefined) { list = []; this.round.set(s, list) }
        list.push(seq)
      }
      this.nextSeq = seq + 1
      this.writes++
    } else if (kind === 'S') {
      this.acked = Number(a)
      this.syncs++
    }
  }

  /** Sectors this round wrote to. */
  touched (): number[] {
    return [...this.round.keys()].sort((x, y) => x - y)
  }

  /**
   * Checks a sector read back after the restart and settles it; returns what is wrong, or null.
   * Sectors the round did not write must hold what they held before.
   */
  check (sector: number, data: Buffer): string | null {
    const got = chunkSeqs(data, sector)
    if (typeof got === 'string') return `sector ${sector}: ${got}`
    const writes = this.round.get(sector) ?? []
    let must = this.settled[sector] as number
    const may = new Set<number>()
    for (const seq of writes) {
      if (seq <= this.acked) must = seq
      else may.add(seq)
    }
    // A sector settled from a torn write holds several writes: each chunk keeps what it held.
    const before = this.mixed.get(sector)
    for (const [c, seq] of got.entries()) {
      const mustHere = writes.some(w => w <= this.acked) ? must : before?.[c] ?? must
      if (seq !== mustHere && !may.has(seq)) {
        const what = seq === 0 ? 'zeros' : `write ${seq}`
        return `sector ${sector}, chunk ${c} holds ${what}; it must hold ${mustHere === 0 ? 'zeros' : `write ${mustHere}`} (acknowledged by the last fsync, up to write ${this.acked})${may.size > 0 ? ` or one of the later writes ${[...may].join(', ')}` : ''}`
      }
    }
    if (got.every(seq => seq === got[0])) {
      this.settled[sector] = got[0] as number
      this.mixed.delete(sector)
    } else {
      this.settled[sector] = Math.max(...got)
      this.mixed.set(sector, got)
    }
    return null
  }

  /** Every sector ever written (for a full check). */
  everWritten (): number[] {
    const out: number[] = []
    for (let s = 0; s < this.sectors; s++) if ((this.settled[s] as number) !== 0 || this.round.has(s)) out.push(s)
    return out
  }

  /** Starts the next round once every sector was checked. */
  endRound (): void {
    this.round.clear()
    this.acked = 0
  }
}
