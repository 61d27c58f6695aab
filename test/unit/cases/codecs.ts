// The inode header and the image directory: their on-disk codecs and how they report corruption.

import t from 'tap'
import { SheepError } from '../../../src/errors'
import { blockCount, decodeHeader, encodeHeader, HEADER_BYTES, inodeObjectSize, type InodeHeader, tableOffset } from '../../../src/cow/inode'
import { decodeDirectory, DIRECTORY_OID, type DirectoryEntry, encodeDirectory, HIDDEN } from '../../../src/cow/directory'
import { frame, FRAME_OVERHEAD } from '../../../src/cow/frame'
import { withXattr, XATTR_ENTRY_BYTES, XATTR_SIZE_MAX, XATTR_SPACE, xattrBytes } from '../../../src/cow/xattrs'
import { metaOid } from '../../../src/objects/oid'
import { sheepError } from '../tmp'

const header: InodeHeader = {
  vid: 0xabcdef,
  name: 'vm1.img',
  size: 20 * 2 ** 30,
  objectSize: 4 * 2 ** 20,
  copies: 3,
  parent: 0,
  ctime: 1_700_000_000_123,
  mtime: 1_700_000_999_456,
  mode: 0o644,
  uid: 1000,
  gid: 1000,
  tag: '',
  snapshotTime: 0,
  xattrs: []
}

/** Extended attributes as setfattr leaves them: an SELinux label, a file capability, libvirt's remembered owner. */
const labelled: InodeHeader['xattrs'] = [
  { name: 'security.capability', value: Buffer.from('0100000200200000000000000000000000000000', 'hex') },
  { name: 'security.selinux', value: Buffer.from('system_u:object_r:svirt_image_t:s0:c1,c2\0') },
  { name: 'trusted.libvirt.security.dac', value: Buffer.from('+0:+0') },
  { name: 'user.empty', value: Buffer.alloc(0) }
]

t.test('inode header round trip', async t => {
  const cases: InodeHeader[] = [
    header,
    { ...header, name: 'ünïcödé 日本語', parent: 0x123456, size: 0, copies: 1, mode: 0o7777, uid: 0, gid: 0 },
    { ...header, vid: 1, size: 64 * 2 ** 40, objectSize: 64 * 2 ** 10, ctime: 0, mtime: Number.MAX_SAFE_INTEGER },
    { ...header, name: 'x'.repeat(255), uid: 0xffffffff, gid: 0xfffffffe },
    // A snapshot: its tag and when it was taken.
    { ...header, tag: 'before-upgrade', snapshotTime: 1_700_000_500_789, parent: 0x42 },
    { ...header, tag: 't'.repeat(255), snapshotTime: Number.MAX_SAFE_INTEGER },
    // Format 2: with extended attributes (an empty value too).
    { ...header, xattrs: labelled },
    { ...header, tag: 'snap', snapshotTime: 1, xattrs: [{ name: 'user.x', value: Buffer.from([0, 255, 0]) }] }
  ]
  for (const h of cases) {
    const bytes = encodeHeader(h)
    t.ok(bytes.length <= HEADER_BYTES)
    t.same(decodeHeader(bytes, 'image x'), h)
    // As read from an inode object: the header block padded with zeros, then the owner table.
    const inode = Buffer.alloc(HEADER_BYTES + 64, 0xee)
    inode.fill(0, 0, HEADER_BYTES)
    bytes.copy(inode)
    t.same(decodeHeader(inode.subarray(0, HEADER_BYTES), 'image x'), h)
    // From a view with a non-zero byteOffset.
    const shifted = Buffer.alloc(bytes.length + 5)
    bytes.copy(shifted, 5)
    t.same(decodeHeader(new Uint8Array(shifted.buffer, shifted.byteOffset + 5, bytes.length), 'image x'), h)
  }
})

t.test('inode header formats: 1 without attributes (read by the version before), 2 with them', async t => {
  t.equal(encodeHeader(header)[8], 1, 'no attributes: format 1')
  t.equal(encodeHeader({ ...header, xattrs: labelled })[8], 2, 'attributes: format 2')
  // Format 1 as the version before wrote it (these bytes are its encoding of `header`): still loads.
  const v1 = Buffer.from('3b00000074dc1b2901feefcdab0007766d312e696d67ff0000000005000000fe000040000300ff7b68e5cf8b010000ff20a8f4cf8b010000fda401fde803fde8030000', 'hex')
  t.same(decodeHeader(v1, 'image x'), header, 'a format-1 header of the version before loads, with no attributes')
  t.ok(encodeHeader(header).equals(v1), 'and one without attributes is written byte for byte as before')
})

t.test('the largest header fits: longest name and tag, the attributes\' whole room', async t => {
  // One attribute filling XATTR_SPACE, and as many 1-byte ones as fit (the most overhead per byte).
  const fill = XATTR_SPACE - XATTR_ENTRY_BYTES - 20
  const big: InodeHeader = { ...header, name: 'n'.repeat(255), tag: 't'.repeat(255), vid: 0xffffff, size: 2 ** 46, uid: 0xfffffffe, gid: 0xfffffffe, mtime: Number.MAX_SAFE_INTEGER, ctime: Number.MAX_SAFE_INTEGER, snapshotTime: Number.MAX_SAFE_INTEGER, parent: 0xffffff, mode: 0o7777 }
  const one = withXattr([], 'security.'.padEnd(20, 'x'), Buffer.alloc(fill, 1), 'x')
  t.equal(xattrBytes(one), XATTR_SPACE)
  let many: InodeHeader['xattrs'] = []
  for (let i = 0; xattrBytes(many) + 17 + XATTR_ENTRY_BYTES <= XATTR_SPACE; i++) many = withXattr(many, `user.${String(i).padStart(12, '0')}`, Buffer.from([i & 255]), 'x')
  for (const xattrs of [one, many]) {
    const bytes = encodeHeader({ ...big, xattrs })
    t.ok(bytes.length <= HEADER_BYTES, `${xattrs.length} attributes: ${bytes.length} of ${HEADER_BYTES} bytes`)
    t.same(decodeHeader(bytes, 'x').xattrs, xattrs)
  }
})

t.test('extended attribute limits and errors, as ext4 gives them', async t => {
  const a = withXattr([], 'security.selinux', Buffer.from('label'), 'vm.img')
  t.same(a.map(x => x.name), ['security.selinux'])
  const b = withXattr(a, 'trusted.a', Buffer.from('1'), 'vm.img')
  t.same(b.map(x => x.name), ['security.selinux', 'trusted.a'], 'kept sorted')
  t.same(a.map(x => x.name), ['security.selinux'], 'the list given is not changed')
  const c = withXattr(b, 'security.selinux', Buffer.from('other'), 'vm.img')
  t.equal(c.length, 2, 'a set replaces')
  t.equal(c[0]?.value.toString(), 'other')
  t.same(withXattr(c, 'trusted.a', null, 'vm.img').map(x => x.name), ['security.selinux'], 'null removes')
  t.equal((await sheepError(() => withXattr(c, 'trusted.b', null, 'vm.img'))).code, 'ENODATA', 'removing one not there: ENODATA')
  t.equal((await sheepError(() => withXattr([], 'user.' + 'x'.repeat(251), Buffer.alloc(1), 'vm.img'))).code, 'ERANGE', 'a 256-byte name: ERANGE')
  t.equal(withXattr([], 'user.' + 'x'.repeat(250), Buffer.alloc(1), 'vm.img').length, 1, 'a 255-byte name is fine')
  t.equal((await sheepError(() => withXattr([], 'user.x', Buffer.alloc(XATTR_SIZE_MAX + 1), 'vm.img'))).code, 'E2BIG', 'a value past 64 KiB: E2BIG')
  const full = XATTR_SPACE - XATTR_ENTRY_BYTES - 'user.x'.length
  t.equal(withXattr([], 'user.x', Buffer.alloc(full), 'vm.img').length, 1, 'a value that fills the room exactly')
  const err = await sheepError(() => withXattr([], 'user.x', Buffer.alloc(full + 1), 'vm.img'))
  t.equal(err.code, 'ENOSPC', 'one byte more: ENOSPC')
  t.match(err.message, /^vm\.img: no room for user\.x/)
  const nearly = withXattr([], 'user.x', Buffer.alloc(full - 100), 'vm.img')
  t.equal((await sheepError(() => withXattr(nearly, 'user.y', Buffer.alloc(100), 'vm.img'))).code, 'ENOSPC', 'the room is shared by all attributes')
  t.equal(withXattr(nearly, 'user.x', Buffer.alloc(full), 'vm.img').length, 1, 'a replaced value frees its old room')
})

t.test('a header too large to fit is refused', async t => {
  const err = await sheepError(() => encodeHeader({ ...header, name: 'x'.repeat(HEADER_BYTES) }))
  t.equal(err.code, 'EINVAL')
})

async function corrupt (t: Pick<typeof import('tap'), 'equal' | 'match'>, bytes: Uint8Array, message: RegExp, label: string): Promise<void> {
  const err = await sheepError(() => decodeHeader(bytes, 'image abcdef'))
  t.equal(err.code, 'EIO', `${label}: EIO`)
  t.match(err.message, /^image abcdef: /, `${label}: names the image`)
  t.match(err.message, message, `${label}: ${err.message}`)
}

t.test('every flipped byte of an inode header is detected', async t => {
  const bytes = encodeHeader(header)
  for (let i = 0; i < bytes.length; i++) {
    for (const mask of [0x01, 0x80, 0xff]) {
      const bad = Buffer.from(bytes)
      bad[i] = (bad[i] as number) ^ mask
      const err = await sheepError(() => decodeHeader(bad, 'image abcdef'))
      if (err.code !== 'EIO' || !/^image abcdef: inode header/.test(err.message)) {
        t.fail(`byte ${i} ^ ${mask}: ${err.code} ${err.message}`)
      }
    }
  }
  t.pass(`all ${bytes.length * 3} single-byte corruptions give EIO`)
  const body = Buffer.from(bytes)
  body[10] = (body[10] as number) ^ 1
  await corrupt(t, body, /checksum mismatch/, 'flipped body byte')
  const crc = Buffer.from(bytes)
  crc[5] = (crc[5] as number) ^ 1
  await corrupt(t, crc, /checksum mismatch/, 'flipped checksum byte')
})

t.test('bad lengths', async t => {
  const bytes = encodeHeader(header)
  const inode = Buffer.alloc(HEADER_BYTES)
  bytes.copy(inode)
  const withLength = (len: number): Buffer => { const b = Buffer.from(inode); b.writeUInt32LE(len, 0); return b }
  await corrupt(t, withLength(0), /bad length 0/, 'zero length')
  await corrupt(t, withLength(HEADER_BYTES - 7), /bad length/, 'longer than the header block')
  await corrupt(t, withLength(0xffffffff), /bad length/, 'huge length')
  await corrupt(t, withLength(bytes.length - 8 - 1), /checksum mismatch/, 'one byte short')
  await corrupt(t, withLength(bytes.length - 8 + 1), /checksum mismatch/, 'one byte long')
  // An all-zero block (a never-written inode) is corrupt, not a default header.
  await corrupt(t, Buffer.alloc(HEADER_BYTES), /bad length 0/, 'all zeros')
})

t.test('truncated headers', async t => {
  const bytes = encodeHeader(header)
  await corrupt(t, Buffer.alloc(0), /truncated/, 'empty')
  for (const n of [1, 4, 7]) await corrupt(t, bytes.subarray(0, n), /truncated/, `${n} bytes`)
  for (const n of [8, 9, bytes.length - 1]) await corrupt(t, bytes.subarray(0, n), /truncated|bad length/, `${n} of ${bytes.length} bytes`)
})

t.test('a header with a good checksum but an unknown format or bad body', async t => {
  const zlib = await import('node:zlib')
  const frame = (body: Buffer): Buffer => {
    const out = Buffer.alloc(8 + body.length)
    out.writeUInt32LE(body.length, 0)
    out.writeUInt32LE(zlib.crc32(body), 4)
    body.copy(out, 8)
    return out
  }
  const good = encodeHeader(header)
  const body = Buffer.from(good.subarray(8))
  body[0] = 3 // format 3
  await corrupt(t, frame(body), /undecodable: unknown inode format 3/, 'format 3')
  body[0] = 2 // format 2, but the attributes are missing
  await corrupt(t, frame(body), /undecodable/, 'format 2 without its attributes')
  await corrupt(t, frame(Buffer.from(good.subarray(8, 14))), /undecodable/, 'cut-off body')
})

t.test('inode layout helpers', async t => {
  t.equal(blockCount(0, 4096), 0)
  t.equal(blockCount(1, 4096), 1)
  t.equal(blockCount(4096, 4096), 1)
  t.equal(blockCount(4097, 4096), 2)
  t.equal(inodeObjectSize(0, 65536), HEADER_BYTES)
  t.equal(inodeObjectSize(65536 * 3 + 1, 65536), HEADER_BYTES + 4 * 16, '16 bytes per block')
  t.equal(tableOffset(0), HEADER_BYTES)
  t.equal(tableOffset(5), HEADER_BYTES + 5 * 16)
})

t.test('directory round trip', async t => {
  t.equal(DIRECTORY_OID, metaOid(1))
  const cases: DirectoryEntry[][] = [
    [],
    [{ name: 'a', tag: '', vid: 1, flags: 0 }],
    [{ name: 'vm1.img', tag: '', vid: 0xabcdef, flags: 0 }, { name: 'ünïcödé 日本語', tag: '', vid: 0xffffff, flags: 0 }, { name: 'x'.repeat(255), tag: '', vid: 2, flags: 0 }],
    // An image with a visible and a hidden (deleted, still read through) snapshot.
    [{ name: 'vm1.img', tag: '', vid: 3, flags: 0 }, { name: 'vm1.img', tag: 'snap-1', vid: 4, flags: 0 },
      { name: 'vm1.img', tag: 'ünï 日本', vid: 5, flags: HIDDEN }, { name: 'gone.img', tag: 'x'.repeat(255), vid: 0xffffff, flags: HIDDEN }],
    Array.from({ length: 1000 }, (_, i) => ({ name: `disk-${i >> 1}.raw`, tag: i % 2 === 0 ? '' : `s${i}`, vid: i + 1, flags: i % 3 === 0 ? HIDDEN : 0 }))
  ]
  for (const list of cases) t.same(decodeDirectory(encodeDirectory(list)), list, `${list.length} entries`)
})

t.test('a corrupt directory is EIO with a clear message', async t => {
  const list: DirectoryEntry[] = [{ name: 'vm1.img', tag: '', vid: 0xabcdef, flags: 0 }, { name: 'disk.raw', tag: '', vid: 7, flags: 0 }]
  const bytes = encodeDirectory(list)
  const check = async (bad: Uint8Array, label: string): Promise<void> => {
    const err = await sheepError(() => decodeDirectory(bad))
    t.equal(err.code, 'EIO', `${label}: EIO`)
    t.match(err.message, /image directory is corrupt/, `${label}: ${err.message}`)
  }
  await check(Buffer.alloc(0), 'empty')
  await check(Buffer.from([2, 0]), 'shorter than a frame')
  for (let n = 1; n < bytes.length; n++) await check(bytes.subarray(0, n), `truncated to ${n} of ${bytes.length} bytes`)
  // Bodies that pass the checksum but do not decode: [format, entry count, name length, name, ...].
  const body = Buffer.from(bytes.subarray(FRAME_OVERHEAD))
  t.same([body[0], body[1], body[2]], [1, 2, 7], 'the body starts with format 1, 2 entries, a 7-byte name')
  const edited = (at: number, value: number): Buffer => { const b = Buffer.from(body); b[at] = value; return frame(b) }
  await check(edited(0, 2), 'unknown format')
  await check(edited(1, 50), 'bad entry count') // claims 50 entries
  await check(edited(1, 1), 'fewer entries than the body holds') // trailing bytes
  await check(edited(2, 200), 'bad name length') // first name claims 200 bytes
  await check(frame(Buffer.concat([body, Buffer.from([0])])), 'trailing byte in the body')
})

t.test('every flipped byte of a directory is detected', async t => {
  // The directory maps names to vids; a silently altered name or vid loses or misnames an image.
  const bytes = encodeDirectory([{ name: 'vm1.img', tag: '', vid: 0xabcdef, flags: 0 }, { name: 'vm1.img', tag: 'snap', vid: 7, flags: HIDDEN }])
  const undetected: string[] = []
  for (let i = 0; i < bytes.length; i++) {
    const bad = Buffer.from(bytes)
    bad[i] = (bad[i] as number) ^ 0x01
    try {
      const got = decodeDirectory(bad)
      undetected.push(`byte ${i}: decoded as ${JSON.stringify(got)}`)
    } catch (err) {
      if (!(err instanceof SheepError) || err.code !== 'EIO') undetected.push(`byte ${i}: ${String(err)}`)
    }
  }
  t.same(undetected, [], 'no single flipped byte decodes into a different directory')
  let trailing: unknown = null
  try { trailing = decodeDirectory(Buffer.concat([bytes, Buffer.from([1, 2, 3])])) } catch (err) { trailing = err }
  t.ok(trailing instanceof SheepError && trailing.code === 'EIO', 'trailing garbage is detected')
})
