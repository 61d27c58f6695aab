// Resident memory of a target's processes, sampled from /proc/<pid>/status while something runs.

import fs from 'node:fs'

export interface RssReport {
  /** Sum over the processes at the first sample, MiB. */
  startMiB: number
  /** Highest sum over the processes at any one sample, MiB. */
  peakMiB: number
  /** Sum of the processes' VmHWM (their own high-water marks since they started), MiB. */
  hwmMiB: number
  /** Each process on its own, in the order given (a cluster's nodes do not peak at the same sample). */
  perPid: Array<{ peakMiB: number, hwmMiB: number }>
  samples: number
}

/** A field of /proc/<pid>/status in KiB, or null when the process is gone. */
function statusKiB (pid: number, field: 'VmRSS' | 'VmHWM'): number | null {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return null
  }
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)
  return m?.[1] === undefined ? null : Number(m[1])
}

export class RssSampler {
  private readonly pids: number[]
  private readonly intervalMs: number
  private timer: NodeJS.Timeout | null = null
  private start: number | null = null
  private peak = 0
  private readonly peaks: number[]
  private samples = 0

  constructor (pids: number[], intervalMs = 100) {
    if (pids.length === 0) throw new Error('no processes to sample')
    this.pids = pids
    this.peaks = pids.map(() => 0)
    this.intervalMs = intervalMs
  }

  private sample (): void {
    let sum = 0
    this.pids.forEach((pid, i) => {
      const kib = statusKiB(pid, 'VmRSS') ?? 0
      sum += kib
      if (kib > (this.peaks[i] ?? 0)) this.peaks[i] = kib
    })
    if (this.start === null) this.start = sum
    if (sum > this.peak) this.peak = sum
    this.samples++
  }

  begin (): void {
    this.sample()
    this.timer = setInterval(() => this.sample(), this.intervalMs)
  }

  end (): RssReport {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    this.sample()
    const hwms = this.pids.map(pid => statusKiB(pid, 'VmHWM') ?? 0)
    return {
      startMiB: (this.start ?? 0) / 1024,
      peakMiB: this.peak / 1024,
      hwmMiB: hwms.reduce((a, b) => a + b, 0) / 1024,
      perPid: this.peaks.map((peak, i) => ({ peakMiB: peak / 1024, hwmMiB: (hwms[i] ?? 0) / 1024 })),
      samples: this.samples
    }
  }
}
