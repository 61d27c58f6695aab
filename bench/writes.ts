// Bytes a target writes to its stores per byte the guest writes, counted two ways around a
// sequential write job:
// - the daemons' own count: write_bytes − cancelled_write_bytes of /proc/<pid>/io, summed over the
//   target's processes. The kernel charges a process when it dirties page-cache pages (or submits
//   direct I/O), so this is everything the daemons wrote: object data, copies received from the
//   other nodes, index, logs; it does not wait for writeback.
// - the growth of the allocated bytes (du) of the target's data folders (the stores' `objects`
//   folders, the passthrough's backing folder): what stays on disk, not what was rewritten.
// A target keeping N copies cannot go below N on either.

import fs from 'node:fs'
import { diskUsage } from './cow'
import type { Target } from './targets'

/** What one process has written, from /proc/<pid>/io; null when it is gone or unreadable. */
function writtenBytes (pid: number): number | null {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/io`, 'utf8')
  } catch {
    return null
  }
  const field = (name: string): number | null => {
    const m = new RegExp(`^${name}:\\s+(\\d+)$`, 'm').exec(text)
    return m?.[1] === undefined ? null : Number(m[1])
  }
  const written = field('write_bytes')
  return written === null ? null : written - (field('cancelled_write_bytes') ?? 0)
}

export interface WriteCounters {
  /** By process, in the order of the target's pids(). */
  perPid: number[]
  /** Allocated bytes of the data folders; null when not taken. */
  allocated: number | null
}

/** The counters now; `allocated` only when asked (du walks the folders). */
export function writeCounters (t: Target, withAllocated: boolean): WriteCounters {
  const perPid = t.pids().map(pid => {
    const n = writtenBytes(pid)
    if (n === null) throw new Error(`cannot read /proc/${pid}/io`)
    return n
  })
  return { perPid, allocated: withAllocated ? t.dataDirs().reduce((sum, dir) => sum + diskUsage(dir), 0) : null }
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0)

/**
 * Waits until the target's processes have stopped writing: their total unchanged for quietMs.
 * What a daemon writes after the guest's write returned (an index flush, a copy still on its way
 * to another node) belongs to that write.
 */
export async function settle (t: Target, quietMs = 1000, maxMs = 20_000): Promise<void> {
  const deadline = Date.now() + maxMs
  let last = sum(writeCounters(t, false).perPid)
  let since = Date.now()
  while (Date.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 200))
    const now = sum(writeCounters(t, false).perPid)
    if (now !== last) {
      last = now
      since = Date.now()
    } else if (Date.now() - since >= quietMs) {
      return
    }
  }
}

export type WriteKind = 'first-write' | 'overwrite'

export interface WriteSample {
  kind: WriteKind
  /** Bytes fio wrote (fio's io_bytes). */
  guestBytes: number
  /** Bytes each process wrote meanwhile, in the order of the target's pids(). */
  perPid: number[]
  /** Growth of the data folders' allocated bytes; null when not taken. */
  allocatedGrowth: number | null
}

export function writeSample (kind: WriteKind, guestBytes: number, before: WriteCounters, after: WriteCounters): WriteSample {
  return {
    kind,
    guestBytes,
    perPid: after.perPid.map((n, i) => n - (before.perPid[i] ?? 0)),
    allocatedGrowth: after.allocated === null || before.allocated === null ? null : after.allocated - before.allocated
  }
}
