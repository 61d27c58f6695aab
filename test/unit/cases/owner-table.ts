// The owner table: sparse pages in memory, u32 LE entries on disk.

import t from 'tap'
import { ENTRY_BYTES, OwnerTable } from '../../../src/cow/owner-table'

const PAGE = 4096 // entries per page (the implementation's page size)

/** How many pages the table holds; read from the private field, for the sparseness checks. */
function pages (table: OwnerTable): number {
  return (table as unknown as { pages: Map<number, Uint32Array> }).pages.size
}

t.test('a new table reads as holes', async t => {
  const table = new OwnerTable(10)
  t.equal(table.size, 10)
  for (let i = 0; i < 10; i++) t.equal(table.get(i), 0)
  t.equal(table.get(1e9), 0, 'far past the end is a hole too')
  t.same([...table.entries()], [])
  t.equal(table.count(0), 0)
  t.equal(pages(table), 0)
})

t.test('set and get', async t => {
  const table = new OwnerTable(3 * PAGE)
  table.set(0, 7)
  table.set(PAGE - 1, 8)
  table.set(PAGE, 9)
  table.set(3 * PAGE - 1, 0xffffff)
  t.equal(table.get(0), 7)
  t.equal(table.get(PAGE - 1), 8)
  t.equal(table.get(PAGE), 9)
  t.equal(table.get(3 * PAGE - 1), 0xffffff)
  t.equal(table.get(1), 0)
  table.set(0, 11)
  t.equal(table.get(0), 11, 'overwrites')
  table.set(0, 0)
  t.equal(table.get(0), 0, 'back to a hole')
  t.equal(table.get(PAGE - 1), 8, 'others unchanged')
})

t.test('set past the length is a RangeError', async t => {
  const table = new OwnerTable(5)
  t.throws(() => table.set(5, 1), RangeError)
  t.throws(() => table.set(100000, 1), RangeError)
  t.doesNotThrow(() => table.set(4, 1))
  t.throws(() => new OwnerTable(0).set(0, 1), RangeError)
})

t.test('setting a hole in an untouched page allocates nothing', async t => {
  const table = new OwnerTable(10 * PAGE)
  for (let i = 0; i < 10 * PAGE; i += 997) table.set(i, 0)
  t.equal(pages(table), 0)
})

t.test('entries are in index order, count counts by vid', async t => {
  const table = new OwnerTable(5 * PAGE)
  const set: Array<[number, number]> = [[4 * PAGE + 3, 1], [2, 2], [PAGE, 1], [3 * PAGE + 9, 3], [1, 1], [4 * PAGE + 2, 2]]
  for (const [idx, vid] of set) table.set(idx, vid)
  const expected = [...set].sort((a, b) => a[0] - b[0])
  t.same([...table.entries()], expected)
  t.equal(table.count(1), 3)
  t.equal(table.count(2), 2)
  t.equal(table.count(3), 1)
  t.equal(table.count(4), 0)
})

t.test('shrink drops entries past the end, grow reads zeros', async t => {
  const table = new OwnerTable(3 * PAGE)
  for (let i = 0; i < 3 * PAGE; i += 100) table.set(i, 5)
  table.set(PAGE + 10, 6)
  table.set(PAGE + 11, 6)
  table.resize(PAGE + 11) // cuts inside the second page
  t.equal(table.size, PAGE + 11)
  t.equal(table.get(PAGE + 10), 6, 'last kept entry stays')
  t.equal(table.get(PAGE + 11), 0, 'first cut entry goes')
  t.ok([...table.entries()].every(([idx]) => idx < PAGE + 11), 'no entry past the end')
  t.equal(pages(table), 2, 'the page wholly past the end is freed')
  t.throws(() => table.set(PAGE + 11, 1), RangeError)
  table.resize(3 * PAGE)
  t.equal(table.size, 3 * PAGE)
  for (let i = PAGE + 11; i < 3 * PAGE; i++) {
    if (table.get(i) !== 0) { t.fail(`entry ${i} reads ${table.get(i)} after shrink and grow`); break }
  }
  t.equal(table.get(2 * PAGE), 0)
  t.equal(table.count(6), 1)
  t.equal(table.count(5), Math.floor((PAGE + 10) / 100) + 1)

  table.resize(0)
  t.equal(table.size, 0)
  t.same([...table.entries()], [])
  t.equal(pages(table), 0)
  table.resize(10)
  t.equal(table.get(0), 0)
})

t.test('shrink on a page boundary', async t => {
  const table = new OwnerTable(2 * PAGE)
  table.set(PAGE - 1, 1)
  table.set(PAGE, 2)
  table.resize(PAGE)
  t.same([...table.entries()], [[PAGE - 1, 1]])
  table.resize(2 * PAGE)
  t.equal(table.get(PAGE), 0)
})

t.test('grow keeps entries', async t => {
  const table = new OwnerTable(1)
  table.set(0, 3)
  table.resize(10 * PAGE)
  t.equal(table.get(0), 3)
  table.set(10 * PAGE - 1, 4)
  t.same([...table.entries()], [[0, 3], [10 * PAGE - 1, 4]])
})

t.test('load from on-disk bytes', async t => {
  const table = new OwnerTable(2 * PAGE)
  const n = PAGE + 10
  const bytes = Buffer.alloc(n * ENTRY_BYTES)
  bytes.writeUInt32LE(1, 0)
  bytes.writeUInt32LE(0xffffff, 4 * 7)
  bytes.writeUInt32LE(0xffffffff, 4 * (PAGE + 9))
  table.load(0, bytes)
  t.same([...table.entries()], [[0, 1], [7, 0xffffff], [PAGE + 9, 0xffffffff]])

  // At an offset, from a view into a larger buffer (byteOffset != 0), with a trailing partial entry.
  const big = Buffer.alloc(3 + 3 * ENTRY_BYTES + 2)
  big.writeUInt32LE(9, 3)
  big.writeUInt32LE(10, 3 + 8)
  const other = new OwnerTable(100)
  other.load(50, big.subarray(3))
  t.same([...other.entries()], [[50, 9], [52, 10]])

  // Entries past the length are ignored, not thrown.
  const short = new OwnerTable(2)
  const three = Buffer.concat([OwnerTable.encodeEntry(1), OwnerTable.encodeEntry(2), OwnerTable.encodeEntry(3)])
  short.load(0, three)
  t.same([...short.entries()], [[0, 1], [1, 2]])
  short.load(5, three)
  t.same([...short.entries()], [[0, 1], [1, 2]], 'a load starting past the end adds nothing')

  // An all-zero table allocates nothing.
  const zeros = new OwnerTable(4 * PAGE)
  zeros.load(0, Buffer.alloc(4 * PAGE * ENTRY_BYTES))
  t.equal(pages(zeros), 0)
})

t.test('encodeEntry is u32 LE and round trips through load', async t => {
  t.same([...OwnerTable.encodeEntry(0x01020304)], [4, 3, 2, 1])
  t.equal(OwnerTable.encodeEntry(7).length, ENTRY_BYTES)
  const table = new OwnerTable(4)
  for (const vid of [1, 0xff, 0x100, 0xffffff]) {
    table.load(2, OwnerTable.encodeEntry(vid))
    t.equal(table.get(2), vid)
  }
})

t.test('a 64 TiB table with one entry stays sparse', async t => {
  // 64 TiB in 4 MiB objects is 2^24 entries; in 64 KiB objects 2^30.
  for (const length of [2 ** 24, 2 ** 30]) {
    const before = process.memoryUsage().arrayBuffers
    const table = new OwnerTable(length)
    table.set(length - 1, 42)
    const grown = process.memoryUsage().arrayBuffers - before
    t.equal(pages(table), 1, `${length} entries: one page`)
    t.ok(grown <= PAGE * ENTRY_BYTES * 2, `${length} entries: ${grown} bytes of array buffers allocated`)
    t.same([...table.entries()], [[length - 1, 42]])
    t.equal(table.count(42), 1)
    table.resize(length / 2)
    t.equal(pages(table), 0, 'shrinking past it frees the page')
  }
})
