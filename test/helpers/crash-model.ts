// What an image may hold after a crash, sector by sector. Every write of the crash tests fills
// each 4 KiB sector it covers with an 8-byte header (the write's sequence number and the
// sector's index) and a fill byte taken from the sequence number, so a sector read back names
// the write it came from. Zeros are sequence 0: never written.
//
// The model follows one image through crashes: `settled` is the write each sector holds as last
// verified; a crash round adds the writes the guest made (`W`) and what fsync acknowledged (`S`).
// After the restart a sector must hold the newest write acknowledged before the crash, or one of
// the writes made after it (they may or may not have reached the store), never anything older.

export const SECTOR = 4096
const HEADER = 8

const fills = new Map<number, Buffer>()
function fillOf (seq: number): Buffer {
  const byte = seq === 0 ? 0 : (seq % 255) + 1
  let f = fills.get(byte)
  if (f === undefined) { f = Buffer.alloc(SECTOR - HEADER, byte); fills.set(byte, f) }
  return f
}

export function fillSector (target: Buffer, seq: number, sector: number): void {
  target.writeUInt32LE(seq, 0)
  target.writeUInt32LE(sector, 4)
  fillOf(seq).copy(target, HEADER)
}

/** The write a sector read back came from, or a description of what is wrong with it. */
export function sectorSeq (data: Buffer, sector: number): number | string {
  const seq = data.readUInt32LE(0)
  if (seq === 0) return data.equals(Buffer.alloc(SECTOR)) ? 0 : 'a sector of neither zeros nor a write (torn or foreign bytes)'
  if (data.readUInt32LE(4) !== sector) return `write ${seq}'s bytes for sector ${data.readUInt32LE(4)} are in sector ${sector}`
  if (!data.subarray(HEADER).equals(fillOf(seq))) return `write ${seq}'s sector is torn`
  return seq
}

export class CrashModel {
  /** Per sector: the write it held when last verified (0: zeros). */
  private readonly settled: Uint32Array
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
    const got = sectorSeq(data, sector)
    const writes = this.round.get(sector) ?? []
    let must = this.settled[sector] as number
    const may = new Set<number>()
    for (const seq of writes) {
      if (seq <= this.acked) must = seq
      else may.add(seq)
    }
    if (typeof got === 'string') return `sector ${sector}: ${got}`
    if (got !== must && !may.has(got)) {
      const what = got === 0 ? 'zeros' : `write ${got}`
      return `sector ${sector} holds ${what}; it must hold ${must === 0 ? 'zeros' : `write ${must}`} (acknowledged by the last fsync, up to write ${this.acked})${may.size > 0 ? ` or one of the later writes ${[...may].join(', ')}` : ''}`
    }
    this.settled[sector] = got
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
