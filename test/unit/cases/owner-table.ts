// The owner table: sparse pages in memory, 16-byte entries on disk (owner, backing, 64-bit map of
// present sub-blocks).

import t from 'tap'
import { ENTRY_BYTES, OwnerTable, SUBBLOCKS } from '../../../src/cow/owner-table'

const PAGE = 4096 // entries per page (the implementation's page size)

/** How many pages the table holds; read from the private field, for the sparseness checks. */
function pages (table: OwnerTable): number {
  return (table as unknown as { pages: Map<number, Uint32Array> }).pages.size
}

/** The whole entry as plain values, for comparisons. */
function entry (table: OwnerTable, idx: number): { owner: number, backing: number, full: boolean, present: number, subs: number[] } {
  const subs: number[] = []
  for (let s = 0; s < SUBBLOCKS; s++) if (table.hasSubblock(idx, s)) subs.push(s)
  return { owner: table.owner(idx), backing: table.backing(idx), full: table.isFull(idx), present: table.presentCount(idx), subs }
}

const ALL = Array.from({ length: SUBBLOCKS }, (_, i) => i)
const HOLE = { owner: 0, backing: 0, full: false, present: 0, subs: [] }

t.test('constants', async t => {
  t.equal(ENTRY_BYTES, 16)
  t.equal(SUBBLOCKS, 64)
})

t.test('a new table reads as holes', async t => {
  const table = new OwnerTable(10)
  t.equal(table.size, 10)
  for (let i = 0; i < 10; i++) t.same(entry(table, i), HOLE)
  t.same(entry(table, 1e9), HOLE, 'far past the end is a hole too')
  t.same([...table.blocks()], [])
  t.same([...table.ownedBy(0)], [])
  t.same([...table.ownedBy(7)], [])
  t.equal(pages(table), 0, 'reading allocates nothing')
})

t.test('setFull: every sub-block present, no backing', async t => {
  const table = new OwnerTable(3 * PAGE)
  table.setFull(0, 7)
  table.setFull(PAGE - 1, 8)
  table.setFull(PAGE, 9)
  table.setFull(3 * PAGE - 1, 0xffffff)
  t.same(entry(table, 0), { owner: 7, backing: 0, full: true, present: 64, subs: ALL })
  t.equal(table.owner(PAGE - 1), 8)
  t.equal(table.owner(PAGE), 9)
  t.equal(table.owner(3 * PAGE - 1), 0xffffff)
  t.ok(table.isFull(3 * PAGE - 1))
  t.same(entry(table, 1), HOLE, 'neighbours stay holes')
  table.setFull(0, 11)
  t.equal(table.owner(0), 11, 'overwrites')
  table.clear(0)
  t.same(entry(table, 0), HOLE, 'clear makes a hole again')
  t.equal(table.owner(PAGE - 1), 8, 'others unchanged')
})

t.test('setEmpty: an own object with no sub-block yet, reading through backing', async t => {
  const table = new OwnerTable(4)
  table.setFull(1, 5) // something else in the table
  table.setEmpty(2, 9, 5)
  t.same(entry(table, 2), { owner: 9, backing: 5, full: false, present: 0, subs: [] })
  // setEmpty over a full entry replaces it wholly.
  table.setEmpty(1, 9, 5)
  t.same(entry(table, 1), { owner: 9, backing: 5, full: false, present: 0, subs: [] })
})

t.test('addSubblocks sets exactly the bits asked for, in both words', async t => {
  const table = new OwnerTable(4)
  table.setEmpty(0, 9, 5)
  table.addSubblocks(0, 3, 3)
  t.same(entry(table, 0).subs, [3])
  table.addSubblocks(0, 30, 33) // across the low/high word boundary
  t.same(entry(table, 0).subs, [3, 30, 31, 32, 33])
  table.addSubblocks(0, 63, 63)
  table.addSubblocks(0, 0, 0)
  t.same(entry(table, 0), { owner: 9, backing: 5, full: false, present: 7, subs: [0, 3, 30, 31, 32, 33, 63] })
  table.addSubblocks(0, 3, 3)
  t.equal(table.presentCount(0), 7, 'adding a present sub-block again changes nothing')
  t.equal(table.owner(0), 9)
  t.equal(table.backing(0), 5, 'a partial block keeps its backing')
  for (const idx of [1, 2, 3]) t.same(entry(table, idx), HOLE, `entry ${idx} untouched`)
})

t.test('a block that becomes full drops its backing', async t => {
  const table = new OwnerTable(2)
  table.setEmpty(0, 9, 5)
  table.addSubblocks(0, 0, 31)
  t.equal(table.backing(0), 5)
  t.notOk(table.isFull(0))
  table.addSubblocks(0, 32, 63)
  t.same(entry(table, 0), { owner: 9, backing: 0, full: true, present: 64, subs: ALL })
  // In pieces, with the last missing sub-block in the middle.
  table.setEmpty(1, 9, 5)
  table.addSubblocks(1, 0, 40)
  table.addSubblocks(1, 42, 63)
  t.equal(table.backing(1), 5)
  t.equal(table.presentCount(1), 63)
  table.addSubblocks(1, 41, 41)
  t.equal(table.backing(1), 0)
  t.ok(table.isFull(1))
  // All at once.
  table.setEmpty(0, 9, 5)
  table.addSubblocks(0, 0, 63)
  t.same(entry(table, 0), { owner: 9, backing: 0, full: true, present: 64, subs: ALL })
})

t.test('writes past the length are a RangeError', async t => {
  const table = new OwnerTable(5)
  t.throws(() => table.setFull(5, 1), RangeError)
  t.throws(() => table.setEmpty(100000, 1, 2), RangeError)
  t.doesNotThrow(() => table.setFull(4, 1))
  t.throws(() => new OwnerTable(0).setFull(0, 1), RangeError)
  t.doesNotThrow(() => table.clear(100), 'clear past the end is a no-op')
  t.equal(table.size, 5)
})

t.test('clearing an untouched page allocates nothing', async t => {
  const table = new OwnerTable(10 * PAGE)
  for (let i = 0; i < 10 * PAGE; i += 997) table.clear(i)
  t.equal(pages(table), 0)
})

t.test('blocks are in index order, ownedBy filters by vid', async t => {
  const table = new OwnerTable(5 * PAGE)
  const set: Array<[number, number]> = [[4 * PAGE + 3, 1], [2, 2], [PAGE, 1], [3 * PAGE + 9, 3], [1, 1], [4 * PAGE + 2, 2]]
  for (const [idx, vid] of set) table.setFull(idx, vid)
  table.setEmpty(7, 4, 1) // a copy-up in progress belongs to its owner
  const expected = [...set, [7, 4] as [number, number]].sort((a, b) => a[0] - b[0])
  t.same([...table.blocks()], expected.map(([idx]) => idx))
  t.same([...table.ownedBy(1)], [1, PAGE, 4 * PAGE + 3])
  t.same([...table.ownedBy(2)], [2, 4 * PAGE + 2])
  t.same([...table.ownedBy(3)], [3 * PAGE + 9])
  t.same([...table.ownedBy(4)], [7])
  t.same([...table.ownedBy(5)], [])
})

t.test('clone is a deep, independent copy', async t => {
  const a = new OwnerTable(3 * PAGE)
  a.setFull(0, 1)
  a.setEmpty(PAGE + 5, 2, 1)
  a.addSubblocks(PAGE + 5, 4, 9)
  const b = a.clone()
  t.equal(b.size, a.size)
  t.same([...b.blocks()], [...a.blocks()])
  for (const idx of [0, PAGE + 5, 7]) t.same(entry(b, idx), entry(a, idx), `entry ${idx} copied`)
  // Changes on either side stay on that side.
  b.setFull(1, 3)
  b.addSubblocks(PAGE + 5, 20, 20)
  b.clear(0)
  a.setFull(2 * PAGE, 4)
  a.addSubblocks(PAGE + 5, 30, 30)
  t.same([...a.blocks()], [0, PAGE + 5, 2 * PAGE])
  t.same([...b.blocks()], [1, PAGE + 5])
  t.same(entry(a, PAGE + 5).subs, [4, 5, 6, 7, 8, 9, 30])
  t.same(entry(b, PAGE + 5).subs, [4, 5, 6, 7, 8, 9, 20])
  t.equal(a.owner(0), 1)
  b.resize(1)
  t.equal(a.size, 3 * PAGE, 'resizing the clone leaves the original')
  t.equal(a.owner(PAGE + 5), 2)
})

t.test('shrink drops entries past the end, grow reads holes', async t => {
  const table = new OwnerTable(3 * PAGE)
  for (let i = 0; i < 3 * PAGE; i += 100) table.setFull(i, 5)
  table.setEmpty(PAGE + 10, 6, 5)
  table.addSubblocks(PAGE + 10, 1, 1)
  table.setFull(PAGE + 11, 6)
  table.resize(PAGE + 11) // cuts inside the second page
  t.equal(table.size, PAGE + 11)
  t.same(entry(table, PAGE + 10), { owner: 6, backing: 5, full: false, present: 1, subs: [1] }, 'last kept entry stays whole')
  t.same(entry(table, PAGE + 11), HOLE, 'first cut entry goes')
  t.ok([...table.blocks()].every(idx => idx < PAGE + 11), 'no entry past the end')
  t.equal(pages(table), 2, 'the page wholly past the end is freed')
  t.throws(() => table.setFull(PAGE + 11, 1), RangeError)
  table.resize(3 * PAGE)
  t.equal(table.size, 3 * PAGE)
  for (let i = PAGE + 11; i < 3 * PAGE; i++) {
    if (table.owner(i) !== 0 || table.presentCount(i) !== 0 || table.backing(i) !== 0) { t.fail(`entry ${i} is not a hole after shrink and grow`); break }
  }
  t.same([...table.ownedBy(6)], [PAGE + 10])
  t.equal([...table.ownedBy(5)].length, Math.floor((PAGE + 10) / 100) + 1)

  table.resize(0)
  t.equal(table.size, 0)
  t.same([...table.blocks()], [])
  t.equal(pages(table), 0)
  table.resize(10)
  t.same(entry(table, 0), HOLE)
})

t.test('shrink on a page boundary', async t => {
  const table = new OwnerTable(2 * PAGE)
  table.setFull(PAGE - 1, 1)
  table.setFull(PAGE, 2)
  table.resize(PAGE)
  t.same([...table.blocks()], [PAGE - 1])
  table.resize(2 * PAGE)
  t.same(entry(table, PAGE), HOLE)
})

t.test('grow keeps entries', async t => {
  const table = new OwnerTable(1)
  table.setEmpty(0, 3, 2)
  table.addSubblocks(0, 5, 6)
  table.resize(10 * PAGE)
  t.same(entry(table, 0), { owner: 3, backing: 2, full: false, present: 2, subs: [5, 6] })
  table.setFull(10 * PAGE - 1, 4)
  t.same([...table.blocks()], [0, 10 * PAGE - 1])
})

t.test('encodeEntry is u32 LE owner, backing, present low, present high', async t => {
  const table = new OwnerTable(4)
  t.same([...table.encodeEntry(0)], new Array(16).fill(0), 'a hole encodes as zeros')
  t.same([...table.encodeEntry(1e6)], new Array(16).fill(0), 'so does an index past the end')
  table.setEmpty(1, 0x01020304, 0x0a0b0c0d)
  table.addSubblocks(1, 0, 0)
  table.addSubblocks(1, 63, 63)
  const e = table.encodeEntry(1)
  t.equal(e.length, ENTRY_BYTES)
  t.same([...e], [4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a, 1, 0, 0, 0, 0, 0, 0, 0x80])
  table.setFull(2, 0xffffff)
  t.same([...table.encodeEntry(2)], [0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
})

t.test('encode and load round trip, entry by entry and page by page', async t => {
  const src = new OwnerTable(3 * PAGE)
  src.setFull(0, 1)
  src.setEmpty(7, 0xffffff, 3)
  src.addSubblocks(7, 31, 32)
  src.setEmpty(PAGE - 1, 2, 0xabcdef) // no sub-block yet
  src.setFull(2 * PAGE + 9, 0xffffffff)
  src.setEmpty(3 * PAGE - 1, 4, 5)
  src.addSubblocks(3 * PAGE - 1, 0, 62)

  const byEntry = new OwnerTable(3 * PAGE)
  for (const idx of src.blocks()) byEntry.load(idx, src.encodeEntry(idx))
  const byRun = new OwnerTable(3 * PAGE)
  for (const { first, bytes } of src.encodedRuns()) byRun.load(first, bytes)
  for (const copy of [byEntry, byRun]) {
    t.same([...copy.blocks()], [...src.blocks()])
    for (const idx of src.blocks()) t.same(entry(copy, idx), entry(src, idx), `entry ${idx}`)
  }
})

t.test('encodedRuns: the entries in use, in their on-disk form, holes left out', async t => {
  const table = new OwnerTable(2 * PAGE + 3)
  table.setFull(0, 2)
  table.setFull(1, 3)
  table.setEmpty(2, 4, 2) // a copy-up with nothing present yet is in use too
  table.setFull(5, 2)
  table.setFull(PAGE - 1, 6) // the last entry of a page and the first of the next
  table.setFull(PAGE, 7)
  table.setFull(2 * PAGE + 2, 1) // the last entry of a table that is not whole pages
  table.setFull(9, 8)
  table.clear(9) // set then cleared: a hole again
  const runs = [...table.encodedRuns()].sort((a, b) => a.first - b.first)
  const covered: number[] = []
  for (const { first, bytes } of runs) {
    t.equal(bytes.length % ENTRY_BYTES, 0, `run at ${first}: whole entries`)
    for (let i = 0; i < bytes.length / ENTRY_BYTES; i++) {
      covered.push(first + i)
      // Entry idx of the on-disk array, at idx * 16 from the table's start.
      t.same(bytes.subarray(i * ENTRY_BYTES, (i + 1) * ENTRY_BYTES), table.encodeEntry(first + i), `entry ${first + i}`)
    }
  }
  t.same(covered, [...table.blocks()], 'exactly the entries in use, each once, none past the length')
  t.same(covered, [0, 1, 2, 5, PAGE - 1, PAGE, 2 * PAGE + 2])
  t.same(runs.filter(r => r.first < PAGE - 1).map(r => [r.first, r.bytes.length / ENTRY_BYTES]), [[0, 3], [5, 1]], 'neighbouring entries go in one run')
  t.same([...new OwnerTable(10).encodedRuns()], [], 'an empty table has nothing to write')
  const cut = new OwnerTable(PAGE)
  cut.setFull(PAGE - 1, 1)
  cut.resize(PAGE - 1)
  t.same([...cut.encodedRuns()], [], 'nothing past a shrink')
})

t.test('load from on-disk bytes', async t => {
  const table = new OwnerTable(2 * PAGE)
  const n = PAGE + 10
  const bytes = Buffer.alloc(n * ENTRY_BYTES)
  bytes.writeUInt32LE(1, 0) // entry 0: owner 1, nothing present
  bytes.writeUInt32LE(0xffffff, 7 * ENTRY_BYTES) // entry 7: owner, both words full
  bytes.writeUInt32LE(0xffffffff, 7 * ENTRY_BYTES + 8)
  bytes.writeUInt32LE(0xffffffff, 7 * ENTRY_BYTES + 12)
  bytes.writeUInt32LE(0xffffffff, (PAGE + 9) * ENTRY_BYTES)
  bytes.writeUInt32LE(3, (PAGE + 9) * ENTRY_BYTES + 4)
  bytes.writeUInt32LE(0x80000001, (PAGE + 9) * ENTRY_BYTES + 12) // sub-blocks 32 and 63
  bytes.writeUInt32LE(0, 9 * ENTRY_BYTES) // entry 9: owner 0 but junk after it is a hole
  bytes.writeUInt32LE(5, 9 * ENTRY_BYTES + 4)
  bytes.writeUInt32LE(5, 9 * ENTRY_BYTES + 8)
  table.load(0, bytes)
  t.same([...table.blocks()], [0, 7, PAGE + 9])
  t.same(entry(table, 0), { owner: 1, backing: 0, full: false, present: 0, subs: [] })
  t.same(entry(table, 7), { owner: 0xffffff, backing: 0, full: true, present: 64, subs: ALL })
  t.same(entry(table, PAGE + 9), { owner: 0xffffffff, backing: 3, full: false, present: 2, subs: [32, 63] })
  t.same(entry(table, 9), HOLE, 'an entry with owner 0 is a hole')

  // At an offset, from a view into a larger buffer (byteOffset != 0), with a trailing partial entry.
  const big = Buffer.alloc(3 + 3 * ENTRY_BYTES + 2)
  big.writeUInt32LE(9, 3)
  big.writeUInt32LE(10, 3 + 2 * ENTRY_BYTES)
  big.writeUInt32LE(4, 3 + 2 * ENTRY_BYTES + 8)
  const other = new OwnerTable(100)
  other.load(50, big.subarray(3))
  t.same([...other.blocks()], [50, 52])
  t.equal(other.owner(50), 9)
  t.same(entry(other, 52), { owner: 10, backing: 0, full: false, present: 1, subs: [2] })

  // Entries past the length are ignored, not thrown.
  const maker = new OwnerTable(3)
  for (let i = 0; i < 3; i++) maker.setFull(i, i + 1)
  const three = Buffer.concat([maker.encodeEntry(0), maker.encodeEntry(1), maker.encodeEntry(2)])
  const short = new OwnerTable(2)
  short.load(0, three)
  t.same([...short.blocks()], [0, 1])
  t.same([short.owner(0), short.owner(1)], [1, 2])
  short.load(5, three)
  t.same([...short.blocks()], [0, 1], 'a load starting past the end adds nothing')

  // An all-zero table allocates nothing.
  const zeros = new OwnerTable(4 * PAGE)
  zeros.load(0, Buffer.alloc(4 * PAGE * ENTRY_BYTES))
  t.equal(pages(zeros), 0)
})

t.test('a 64 TiB table with one entry stays sparse', async t => {
  // 64 TiB in 4 MiB objects is 2^24 entries; in 64 KiB objects 2^30.
  for (const length of [2 ** 24, 2 ** 30]) {
    const before = process.memoryUsage().arrayBuffers
    const table = new OwnerTable(length)
    table.setFull(length - 1, 42)
    const grown = process.memoryUsage().arrayBuffers - before
    t.equal(pages(table), 1, `${length} entries: one page`)
    t.ok(grown <= PAGE * ENTRY_BYTES * 2, `${length} entries: ${grown} bytes of array buffers allocated`)
    t.same([...table.blocks()], [length - 1])
    t.same([...table.ownedBy(42)], [length - 1])
    const copy = table.clone()
    t.equal(pages(copy), 1, 'a clone is as sparse')
    t.same([...table.encodedRuns()].map(r => [r.first, r.bytes.length]), [[length - 1, ENTRY_BYTES]], 'only the entry in use is encoded')
    table.resize(length / 2)
    t.equal(pages(table), 0, 'shrinking past it frees the page')
  }
})
