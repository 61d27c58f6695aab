// The results: samples per (row, target), medians, ratios against the baseline, the Markdown table.

import { type CowRow, type CowRowId, type CowSectionId, formatGoal, meets, type Row, type RowId } from './rows'
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
  /** The copy-on-write table: its rows, and the targets it runs on (those with snapshots). */
  readonly cowRows: CowRow[]
  readonly cowTargets: TargetInfo[]
  /** Errors of a copy-on-write section, by section and target. */
  private readonly cowErrorLists = new Map<string, string[]>()
  /** The last run's detail line of each section, by target. */
  readonly cowDetails = new Map<string, Map<CowSectionId, string>>()

  constructor (rows: Row[], targets: TargetInfo[], cowRows: CowRow[] = [], cowTargets: TargetInfo[] = []) {
    this.rows = rows
    this.targets = targets
    this.cowRows = cowRows
    this.cowTargets = cowTargets
  }

  cell (row: RowId | `cow:${CowRowId}`, target: string): Cell {
    const key = `${row}\0${target}`
    let c = this.cells.get(key)
    if (c === undefined) {
      c = { samples: [], errors: [] }
      this.cells.set(key, c)
    }
    return c
  }

  cowCell (row: CowRowId, target: string): Cell {
    return this.cell(`cow:${row}`, target)
  }

  cowMedian (row: CowRowId, target: string): number | null {
    return median(this.cowCell(row, target).samples)
  }

  cowErrors (section: CowSectionId, target: string): string[] {
    const key = `${section}\0${target}`
    let list = this.cowErrorLists.get(key)
    if (list === undefined) {
      list = []
      this.cowErrorLists.set(key, list)
    }
    return list
  }

  cowSections (): CowSectionId[] {
    return [...new Set(this.cowRows.map(r => r.section))]
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
      if (this.cowTargets.some(c => c.name === t.name)) {
        for (const section of this.cowSections()) {
          for (const e of this.cowErrors(section, t.name)) {
            if (e === SKIPPED) skipped++
            else out.push(`${section} on ${t.name}: ${e}`)
          }
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
      rss: Object.fromEntries(this.rss),
      cow: {
        targets: this.cowTargets.map(t => t.name),
        rows: this.cowRows.map(row => ({
          ...row,
          cells: Object.fromEntries(this.cowTargets.map(t => [t.name, { ...this.cowCell(row.id, t.name), median: this.cowMedian(row.id, t.name) }]))
        })),
        errors: Object.fromEntries(this.cowTargets.map(t => [t.name, Object.fromEntries(this.cowSections().map(s => [s, this.cowErrors(s, t.name)]))])),
        details: Object.fromEntries([...this.cowDetails].map(([t, m]) => [t, Object.fromEntries(m)]))
      }
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

function formatCowValue (v: number, row: CowRow): string {
  switch (row.unit) {
    case 'ms': return v.toFixed(1)
    case 'ratio': return v.toFixed(2)
    default: return String(Math.round(v))
  }
}

function formatCowGoal (row: CowRow): string {
  if (row.goal === undefined) return ''
  const unit = row.unit === 'ms' || row.unit === 'KiB' ? ` ${row.unit}` : ''
  return `${row.goal.op === '<=' ? '≤' : '≥'} ${row.goal.value}${unit}`
}

/**
 * The copy-on-write table: a row per measurement, per target its value (the median of its
 * samples), target and verdict. A section that failed shows "failed" in each row it has no value for.
 */
export function cowTable (results: Results): string {
  if (results.cowTargets.length === 0 || results.cowRows.length === 0) return ''
  const header = ['copy-on-write']
  const right = [false]
  for (const t of results.cowTargets) {
    header.push(t.name, 'target', 'met')
    right.push(true, false, false)
  }
  const body: string[][] = []
  for (const row of results.cowRows) {
    const line = [row.label]
    for (const t of results.cowTargets) {
      const v = results.cowMedian(row.id, t.name)
      line.push(v === null ? 'failed' : formatCowValue(v, row), formatCowGoal(row),
        row.goal === undefined ? '' : v === null ? 'n/a' : meets(row.goal, v) ? 'yes' : '**no**')
    }
    body.push(line)
  }
  const notes: string[] = []
  for (const t of results.cowTargets) {
    for (const [section, detail] of results.cowDetails.get(t.name) ?? []) notes.push(`- ${t.name}, ${section}: ${detail}`)
  }
  return markdownTable(header, body, right) + (notes.length > 0 ? '\n' + notes.join('\n') + '\n' : '')
}
