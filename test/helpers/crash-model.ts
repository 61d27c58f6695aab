// What an image may hold after a crash, sector by sector. The writes of the crash tests cover
// whole 4 KiB sectors; every 512-byte chunk of a sector they write holds an 8-byte header (the
// write's sequence number and the chunk's index in the image) and a fill byte taken from the
// sequence number, so the bytes a write put anywhere can be told from any other write's.
//
// A write that was under way when the daemon died may have landed in part, at any byte: the
// kernel copies a write into the page cache piece by piece, a piece ends where the source
// buffer's page faults, and a fatal signal stops the copy there (seen in 2 of 123 rounds under
// load, the last write torn inside a 512-byte chunk). That is what a raw image file on ext4 gives QEMU when
// its host crashes, and no acknowledged byte is involved; so every byte of a sector must come
// from one of the writes it may hold, but a sector may mix them.
//
// The model follows one image through crashes: what each sector held when last verified (a
// write, or the bytes of a mix), and per crash round the writes the guest made (`W`) and what
// fsync acknowledged (`S`). After the restart a sector must hold the newest write to it
// acknowledged before the crash, or bytes of the writes made after that (they may or may not
// have reached the store), never anything older.

export const SECTOR = 4096
const CHUNK = 512
const HEADER = 8

const fills = new Map<number, Buffer>()
function fillOf (seq: number): Buffer {
  const byte = seq === 0 ? 0 : (seq % 255) + 1
  let f = fills.get(byte)
  if (f === undefined) { f = Buffer.alloc(CHUNK - HEADER, byte); fills.set(byte, f) }
  return f
}

export function fillSector (target: Buffer, seq: number, sector: number): void {
  if (seq === 0) { target.fill(0, 0, SECTOR); return }
  for (let c = 0; c < SECTOR / CHUNK; c++) {
    const at = c * CHUNK
    target.writeUInt32LE(seq, at)
    target.writeUInt32LE(sector * (SECTOR / CHUNK) + c, at + 4)
    fillOf(seq).copy(target, at + HEADER)
  }
}

function sectorOf (seq: number, sector: number): Buffer {
  const b = Buffer.alloc(SECTOR)
  fillSector(b, seq, sector)
  return b
}

export class CrashModel {
  /** Per sector: the write it held when last verified (0: zeros). */
  private readonly settled: Uint32Array
  /** Sectors that hold a mix of writes (one torn by a crash): their bytes. */
  private readonly mixed = new Map<number, Buffer>()
  /** Sectors found torn. */
  torn = 0
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
    const writes = this.round.get(sector) ?? []
    const acked = writes.filter(seq => seq <= this.acked)
    const may = writes.filter(seq => seq > this.acked)
    const mustSeq = acked.length > 0 ? acked[acked.length - 1] as number : this.settled[sector] as number
    const must = acked.length === 0 ? this.mixed.get(sector) ?? sectorOf(mustSeq, sector) : sectorOf(mustSeq, sector)
    const candidates = [must, ...may.map(seq => sectorOf(seq, sector))]
    const whole = candidates.findIndex(c => c.equals(data))
    if (whole === 0 && this.mixed.has(sector) && acked.length === 0) return null
    if (whole >= 0) {
      this.settled[sector] = whole === 0 ? mustSeq : may[whole - 1] as number
      this.mixed.delete(sector)
      return null
    }
    for (let i = 0; i < SECTOR; i++) {
      if (candidates.some(c => c[i] === data[i])) continue
      const what = `${mustSeq === 0 ? 'zeros' : `write ${mustSeq}`}${acked.length === 0 && this.mixed.has(sector) ? ' (as mixed before)' : ''}`
      return `sector ${sector}, byte ${i}: ${data[i]} is from none of the writes it may hold: ${what} (acknowledged by the last fsync, up to write ${this.acked})${may.length > 0 ? ` or the later writes ${may.join(', ')}` : ''}`
    }
    // A write under way at the crash landed in part: the sector keeps the mix.
    this.torn++
    this.mixed.set(sector, Buffer.from(data))
    return null
  }

  /** Every sector ever written (for a full check). */
  everWritten (): number[] {
    const out: number[] = []
    for (let s = 0; s < this.sectors; s++) if ((this.settled[s] as number) !== 0 || this.round.has(s) || this.mixed.has(s)) out.push(s)
    return out
  }

  /** Starts the next round once every sector was checked. */
  endRound (): void {
    this.round.clear()
    this.acked = 0
  }
}
