// The results: samples per (row, target), medians, ratios against the baseline, the Markdown table.

import { formatGoal, meets, type Row, type RowId } from './rows'
import type { RssReport } from './rss'

/** The error of a cell not measured because its target had failed before. */
export const SKIPPED = 'skipped: the target had failed earlier'

export interface TargetInfo {
  name: string
  description: string
  goals: Partial<Record<RowId, { op: '>=' | '<=', value: number }>>
}

export interface Cell {
  samples: number[]
  errors: string[]
}

export interface RssResult extends RssReport {
  /** How fast the image was written while sampling, MiB/s. */
  mibps: number
}

export class Results {
  readonly rows: Row[]
  /** The first is the baseline. */
  readonly targets: TargetInfo[]
  private readonly cells = new Map<string, Cell>()
  /** The run with the highest peak, per target. */
  readonly rss = new Map<string, RssResult>()
  readonly rssErrors = new Map<string, string[]>()

  constructor (rows: Row[], targets: TargetInfo[]) {
    this.rows = rows
    this.targets = targets
  }

  cell (row: RowId, target: string): Cell {
    const key = `${row}\0${target}`
    let c = this.cells.get(key)
    if (c === undefined) {
      c = { samples: [], errors: [] }
      this.cells.set(key, c)
    }
    return c
  }

  addRss (target: string, r: RssResult): void {
    const old = this.rss.get(target)
    if (old === undefined || r.peakMiB > old.peakMiB) this.rss.set(target, r)
  }

  median (row: RowId, target: string): number | null {
    return median(this.cell(row, target).samples)
  }

  failures (): string[] {
    const out: string[] = []
    for (const t of this.targets) {
      let skipped = 0
      for (const row of this.rows) {
        for (const e of this.cell(row.id, t.name).errors) {
          if (e === SKIPPED) skipped++
          else out.push(`${row.id} on ${t.name}: ${e}`)
        }
      }
      if (skipped > 0) out.push(`${skipped} later measurement${skipped === 1 ? '' : 's'} on ${t.name} skipped after that`)
    }
    for (const [t, errors] of this.rssErrors) for (const e of errors) out.push(`memory on ${t}: ${e}`)
    return out
  }

  toJSON (): unknown {
    return {
      targets: this.targets,
      rows: this.rows.map(row => ({
        ...row,
        cells: Object.fromEntries(this.targets.map(t => [t.name, { ...this.cell(row.id, t.name), median: this.median(row.id, t.name) }]))
      })),
      rss: Object.fromEntries(this.rss)
    }
  }
}

export function median (xs: number[]): number | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid] as number : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

function formatValue (v: number | null, row: Row): string {
  if (v === null) return 'failed'
  switch (row.unit) {
    case 's': return v.toFixed(2)
    case 'MiB/s': return v >= 100 ? String(Math.round(v)) : v.toFixed(1)
    default: return String(Math.round(v))
  }
}

function formatRatio (r: number, row: Row): string {
  return row.better === 'lower' ? `${r.toFixed(2)}×` : r.toFixed(2)
}

/** Pads the columns of a Markdown table so it also reads well in a terminal. */
export function markdownTable (header: string[], rows: string[][], rightAligned: boolean[]): string {
  const widths = header.map((h, i) => Math.max([...h].length, ...rows.map(r => [...(r[i] ?? '')].length)))
  const pad = (s: string, i: number): string => {
    const gap = ' '.repeat((widths[i] ?? 0) - [...s].length)
    return rightAligned[i] === true ? gap + s : s + gap
  }
  const line = (cells: string[]): string => '| ' + cells.map(pad).join(' | ') + ' |'
  const rule = '|' + widths.map((w, i) => rightAligned[i] === true ? '-'.repeat(w + 1) + ':' : '-'.repeat(w + 2)).join('|') + '|'
  return [line(header), rule, ...rows.map(line)].join('\n') + '\n'
}

/** The table: a row per measurement; the baseline, then per other target its value, ratio, target and verdict. */
export function resultsTable (results: Results): string {
  const [baseline, ...others] = results.targets
  if (baseline === undefined) return ''
  const header = ['job', baseline.name]
  const right = [false, true]
  for (const t of others) {
    header.push(t.name, 'ratio', 'target', 'met')
    right.push(true, true, false, false)
  }
  const body: string[][] = []
  for (const row of results.rows) {
    const base = results.median(row.id, baseline.name)
    const line = [row.label, formatValue(base, row)]
    for (const t of others) {
      const v = results.median(row.id, t.name)
      const goal = t.goals[row.id]
      const ratio = v !== null && base !== null && base > 0 ? v / base : null
      line.push(formatValue(v, row), ratio === null ? '—' : formatRatio(ratio, row), goal === undefined ? '' : formatGoal(goal, row),
        goal === undefined ? '' : ratio === null ? 'n/a' : meets(goal, ratio) ? 'yes' : '**no**')
    }
    body.push(line)
  }
  return markdownTable(header, body, right)
}

export function rssLines (results: Results, sizeText: string): string {
  const [baseline, ...others] = results.targets
  const lines: string[] = []
  for (const t of [...others, ...(baseline ? [baseline] : [])]) {
    const r = results.rss.get(t.name)
    if (r === undefined) {
      if (results.rssErrors.has(t.name)) lines.push(`- ${t.name}: failed`)
      continue
    }
    lines.push(`- ${t.name}: **${Math.round(r.peakMiB)} MiB** peak (${Math.round(r.startMiB)} MiB before the write; ` +
      `VmHWM since start ${Math.round(r.hwmMiB)} MiB; written at ${Math.round(r.mibps)} MiB/s; ${r.samples} samples)`)
  }
  if (lines.length === 0) return ''
  return `Peak RSS (VmRSS every 100 ms, summed over the target's daemons) while a ${sizeText} image is written ` +
    'sequentially (fio, 1M O_DIRECT):\n' + lines.join('\n') + '\n'
}
