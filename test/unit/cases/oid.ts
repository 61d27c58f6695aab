// Object ids: packing and unpacking, range checks and the hex form used for file names.

import t from 'tap'
import {
  dataOid, inodeOid, MAX_INDEX, MAX_VID, metaOid, ObjectType, oidFromHex, oidIndex, oidToHex, oidType, oidVid, tokenOid
} from '../../../src/objects/oid'

const VIDS = [0, 1, 2, 0x7fffff, 0x800000, MAX_VID - 1, MAX_VID]
const INDEXES = [0, 1, 0xffff, 0x10000, 0x7fffffff, 0x80000000, MAX_INDEX - 1, MAX_INDEX]

t.test('constants', async t => {
  t.equal(MAX_VID, 2 ** 24 - 1)
  t.equal(MAX_INDEX, 2 ** 32 - 1)
})

t.test('data ids round trip for every edge vid and index', async t => {
  const seen = new Set<bigint>()
  for (const vid of VIDS) {
    for (const idx of INDEXES) {
      const oid = dataOid(vid, idx)
      t.equal(typeof oid, 'bigint')
      t.ok(oid >= 0n && oid < 2n ** 64n, 'fits in 64 bits')
      t.equal(oidType(oid), ObjectType.Data)
      t.equal(oidVid(oid), vid)
      t.equal(oidIndex(oid), idx)
      const hex = oidToHex(oid)
      t.match(hex, /^[0-9a-f]{16}$/)
      t.equal(oidFromHex(hex), oid, `hex round trip of ${hex}`)
      seen.add(oid)
    }
  }
  t.equal(seen.size, VIDS.length * INDEXES.length, 'distinct (vid, idx) give distinct ids')
})

t.test('inode ids round trip', async t => {
  for (const vid of VIDS) {
    const oid = inodeOid(vid)
    t.equal(oidType(oid), ObjectType.Inode)
    t.equal(oidVid(oid), vid)
    t.equal(oidIndex(oid), 0)
    t.equal(oidFromHex(oidToHex(oid)), oid)
    t.not(oid, dataOid(vid, 0), 'an inode id differs from the data id of block 0')
  }
})

t.test('meta ids round trip', async t => {
  for (const n of INDEXES) {
    const oid = metaOid(n)
    t.equal(oidType(oid), ObjectType.Meta)
    t.equal(oidVid(oid), 0)
    t.equal(oidIndex(oid), n)
    t.equal(oidFromHex(oidToHex(oid)), oid)
  }
})

t.test('types never collide', async t => {
  const ids = new Set([dataOid(0, 0), inodeOid(0), metaOid(0), dataOid(MAX_VID, MAX_INDEX), inodeOid(MAX_VID), metaOid(MAX_INDEX)])
  t.equal(ids.size, 6)
})

t.test('exact bit layout: type (4) | reserved (4) | vid (24) | index (32)', async t => {
  t.equal(oidToHex(dataOid(0, 0)), '0000000000000000')
  t.equal(oidToHex(dataOid(MAX_VID, MAX_INDEX)), '00ffffffffffffff')
  t.equal(oidToHex(inodeOid(0xabcdef)), '10abcdef00000000')
  t.equal(oidToHex(metaOid(1)), '2000000000000001')
  t.equal(oidToHex(dataOid(1, 2)), '0000000100000002')
})

t.test('range errors', async t => {
  const badVids = [-1, MAX_VID + 1, 2 ** 32, 0.5, NaN, Infinity, -Infinity]
  for (const vid of badVids) {
    t.throws(() => dataOid(vid, 0), RangeError, `data vid ${vid}`)
    t.throws(() => inodeOid(vid), RangeError, `inode vid ${vid}`)
  }
  const badIndexes = [-1, MAX_INDEX + 1, 2 ** 40, 1.5, NaN, Infinity]
  for (const idx of badIndexes) {
    t.throws(() => dataOid(0, idx), RangeError, `data index ${idx}`)
    t.throws(() => metaOid(idx), RangeError, `meta index ${idx}`)
  }
  t.throws(() => dataOid(MAX_VID + 1, 0), { message: /vid out of range/ })
  t.throws(() => dataOid(0, MAX_INDEX + 1), { message: /object index out of range/ })
})

t.test('oidFromHex rejects malformed strings', async t => {
  const bad = [
    '', // empty
    '0', // too short
    '000000000000000', // 15 digits
    '00000000000000000', // 17 digits
    '00000000000000000000000000000000', // 32 digits
    '00ffffffffffffFF', // upper case
    'ABCDEF0000000000',
    '0x00000000000001', // prefix
    '000000000000000g', // not hex
    ' 000000000000001', // space
    '000000000000001 ',
    '0000000000000001\n',
    '-000000000000001',
    '+000000000000001',
    '00000000_0000001',
    '4000000000000000', // type 4 (unknown)
    'f000000000000000', // type 15
    '0100000000000000', // reserved bits set
    '0f00000000000000',
    '1800000000000000',
    '0000000000000001.tmp', // a temporary file name
    'ｆ000000000000000' // full-width letter
  ]
  for (const s of bad) t.equal(oidFromHex(s), null, `rejects ${JSON.stringify(s)}`)
  t.equal(oidFromHex('0000000000000000'), 0n)
  t.equal(oidFromHex('2000000000000001'), metaOid(1))
  t.equal(oidFromHex('3000002a00000000'), tokenOid(0x2a))
})
