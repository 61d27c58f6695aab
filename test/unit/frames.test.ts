// The direct path's frames (src/swarm/frames.ts) and carrier (src/swarm/direct.ts): round trips
// however TCP cuts the bytes, the limits, tampering, and plain-authenticated frames only where
// both ends asked for them; then two real Links over loopback TCP, with a proxy between them that
// flips one bit.

import t, { type Test } from 'tap'
import crypto from 'node:crypto'
import net from 'node:net'
import DHT from 'hyperdht'
import { SheepError } from '../../src/errors'
import { directCarrier } from '../../src/swarm/direct'
import { type Frame, FrameReader, frameKeys, FrameSealer, FrameType, MAX_BODY, MAX_HEAD, MAX_UNPROVEN_BODY, PLAIN, PREFIX, TAG, WANTS_PLAIN, type WireMode } from '../../src/swarm/frames'
import { Link } from '../../src/swarm/link'
import { encode, type Hello, hello, MAX_DATA, MAX_MEMBERS, Op, type Request } from '../../src/swarm/messages'
import type { Member, View } from '../../src/swarm/view'

function pair (): { sealer: FrameSealer, reader: FrameReader } {
  const tx = crypto.randomBytes(32)
  const rx = crypto.randomBytes(32)
  return { sealer: new FrameSealer(frameKeys(tx, rx).send), reader: new FrameReader(frameKeys(rx, tx).receive) }
}

function read (reader: FrameReader, bytes: Buffer, cuts: number[] = []): Frame[] {
  const out: Frame[] = []
  let from = 0
  for (const at of [...cuts, bytes.length]) {
    reader.push(bytes.subarray(from, at), f => out.push(f))
    from = at
  }
  return out
}

function protoError (fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    if (err instanceof SheepError && err.code === 'EPROTO') return err.message
    throw err
  }
  throw new Error('no error')
}

t.test('frames read back whole however the bytes are cut: at every boundary, in one-byte pieces, many in one chunk', async t => {
  const { sealer, reader } = pair()
  const frames: Array<[FrameType, Buffer, Buffer]> = [
    [FrameType.Hello, crypto.randomBytes(90), Buffer.alloc(0)],
    [FrameType.Request, crypto.randomBytes(20), crypto.randomBytes(300)],
    [FrameType.KeepAlive, Buffer.alloc(0), Buffer.alloc(0)],
    [FrameType.Response, crypto.randomBytes(12), Buffer.alloc(0)]
  ]
  const bytes = Buffer.concat(frames.flatMap(([type, head, data]) => sealer.seal(type, head, data)))
  let checked = 0
  // Each cut point alone, and every pair of cut points a few bytes apart.
  const cutsList: number[][] = []
  for (let i = 1; i < bytes.length; i++) cutsList.push([i])
  for (let i = 1; i < bytes.length; i += 7) for (let j = i + 1; j < Math.min(bytes.length, i + 40); j++) cutsList.push([i, j])
  cutsList.push(Array.from({ length: bytes.length - 1 }, (_, i) => i + 1))
  for (const cuts of cutsList) {
    // A new pair of ends each time: the nonces count frames.
    const tx = crypto.randomBytes(32)
    const s = new FrameSealer(frameKeys(tx, tx).send)
    const r = new FrameReader(frameKeys(tx, tx).receive)
    const b = Buffer.concat(frames.flatMap(([type, head, data]) => s.seal(type, head, data)))
    const got = read(r, b, cuts)
    const same = got.length === frames.length && got.every((f, i) => {
      const [type, head, data] = frames[i] as [FrameType, Buffer, Buffer]
      return f.type === type && f.head.equals(head) && f.data.equals(data)
    })
    if (!same) { t.fail(`cut at ${cuts.join(', ')}: ${got.length} frames, not the ones sealed`); return }
    checked++
  }
  t.equal(checked, cutsList.length, `${checked} ways to cut ${bytes.length} bytes of ${frames.length} frames: each read back the same frames`)
  t.equal(read(reader, bytes).length, frames.length, 'and in one chunk')
})

t.test('frames at the limits: the largest head and data go through; past them is refused on both ends', async t => {
  const { sealer, reader } = pair()
  reader.maxBody = MAX_BODY // as once the peer's hello is in
  const head = crypto.randomBytes(MAX_HEAD)
  const data = crypto.randomBytes(MAX_DATA)
  const sealed = Buffer.concat(sealer.seal(FrameType.Request, head, data))
  t.equal(sealed.length, PREFIX + MAX_HEAD + MAX_DATA + TAG, 'prefix, head, data and tag, nothing more')
  const [f] = read(reader, sealed, Array.from({ length: 200 }, (_, i) => (i + 1) * 65536))
  t.ok(f !== undefined && f.head.equals(head) && f.data.equals(data), 'a frame of the largest head and data reads back')
  for (const [what, fn] of [['head', () => sealer.seal(FrameType.Request, Buffer.alloc(MAX_HEAD + 1))], ['data', () => sealer.seal(FrameType.Request, Buffer.alloc(1), Buffer.alloc(MAX_DATA + 1))]] as const) {
    try { fn(); t.fail(`a ${what} past the limit was sealed`) } catch (err) { t.equal((err as SheepError).code, 'EFBIG', `a ${what} past the limit is not sealed: ${(err as Error).message}`) }
  }
  // A prefix claiming more: refused from its 7 bytes, before any of the body is kept.
  const prefix = (body: number, type: number, head: number): Buffer => {
    const p = Buffer.alloc(PREFIX)
    p.writeUInt32LE(body, 0); p[4] = type; p.writeUInt16LE(head, 5)
    return p
  }
  const cases: Array<[string, Buffer, RegExp]> = [
    ['a body of 4 GiB - 1', prefix(0xffffffff, FrameType.Request, 0), /more than/],
    ['data one byte past the limit', prefix(MAX_DATA + 1, FrameType.Request, 0), /more than/],
    ['a head longer than its body', prefix(10, FrameType.Request, 11), /longer than its body/],
    ['an unknown type', prefix(0, 9, 0), /unknown type 9/],
    ['a keep-alive with a body', prefix(3, FrameType.KeepAlive, 0), /keep-alive frame of 3 bytes/],
    ['a request asking for plain frames', prefix(0, FrameType.Request | WANTS_PLAIN, 0), /asks for plain/],
    ['a plain frame where frames are encrypted', prefix(0, FrameType.Request | PLAIN, 0), /plain-authenticated frame where/],
    ['before the hello, a frame past MAX_UNPROVEN_BODY (any key passes Noise)', prefix(MAX_UNPROVEN_BODY + 1, FrameType.Hello, 0), /more than 1048576/]
  ]
  for (const [what, bytes, why] of cases) {
    const { reader } = pair()
    t.match(protoError(() => read(reader, bytes)), why, `${what}: EPROTO`)
  }
})

t.test('a frame changed on the way, replayed, reordered or sealed with another key fails its check', async t => {
  const build = (): { sealer: FrameSealer, reader: FrameReader, frames: Buffer[] } => {
    const key = crypto.randomBytes(32)
    const sealer = new FrameSealer(frameKeys(key, key).send)
    const frames = [0, 1, 2].map(i => Buffer.concat(sealer.seal(FrameType.Request, Buffer.from([i]), crypto.randomBytes(64))))
    return { sealer, reader: new FrameReader(frameKeys(key, key).receive), frames }
  }
  const size = (build().frames[0] as Buffer).length
  let flips = 0
  for (let at = 0; at < size; at++) {
    const { reader, frames } = build()
    const b = Buffer.from(frames[0] as Buffer)
    b[at] = (b[at] as number) ^ 1
    let message: string
    try {
      message = protoError(() => read(reader, b))
    } catch {
      // A flip that lengthens the body makes the reader wait for more bytes: the next ones fail it.
      message = protoError(() => read(reader, Buffer.concat([frames[1] as Buffer, frames[2] as Buffer, Buffer.alloc(MAX_BODY)])))
    }
    if (message === '') { t.fail(`a flip at byte ${at} went through`); return }
    flips++
  }
  t.equal(flips, size, `one bit flipped at each of the ${size} bytes of a frame: each refused`)
  {
    const { reader, frames } = build()
    read(reader, frames[0] as Buffer)
    t.match(protoError(() => read(reader, frames[0] as Buffer)), /authentication/, 'a frame replayed')
  }
  {
    const { reader, frames } = build()
    t.match(protoError(() => read(reader, frames[1] as Buffer)), /authentication/, 'a frame before the one sealed before it (reordered, or one dropped)')
  }
  {
    const { frames } = build()
    const { reader } = pair()
    t.match(protoError(() => read(reader, frames[0] as Buffer)), /authentication/, 'a frame sealed with another key')
  }
})

t.test('plain-authenticated frames: the data goes as it is, still authenticated', async t => {
  const key = crypto.randomBytes(32)
  const sealer = new FrameSealer(frameKeys(key, key).send)
  const reader = new FrameReader(frameKeys(key, key).receive)
  sealer.plain = true
  reader.acceptPlain = true
  const data = Buffer.from('readable on the wire, never changeable')
  const sealed = Buffer.concat(sealer.seal(FrameType.Request, Buffer.from([1, 2]), data))
  t.ok(sealed.includes(data), 'the data is in the frame as it is')
  const [f] = read(reader, sealed)
  t.ok(f?.data.equals(data), 'and reads back')
  const changed = Buffer.from(Buffer.concat(sealer.seal(FrameType.Request, Buffer.from([1, 2]), data)))
  changed[PREFIX + 5] = (changed[PREFIX + 5] as number) ^ 0x20
  t.match(protoError(() => read(reader, changed)), /authentication/, 'a changed byte of plain data fails the check')
})

// Two real Links over loopback TCP.

interface End { link: Link, requests: Request[] }

async function linked (t: Test, wires: [WireMode, WireMode], through?: (port: number) => Promise<number>, timing = { keepAliveMs: 1000, deadAfterMs: 5000 }): Promise<[End, End]> {
  const secret = crypto.randomBytes(32)
  const keys = [DHT.keyPair(), DHT.keyPair()]
  const ends: End[] = []
  const make = async (socket: net.Socket, i: number): Promise<End> => {
    const kp = keys[i] as DHT.KeyPair
    const carrier = await directCarrier(socket, i === 0, kp, wires[i] as WireMode, timing)
    const requests: Request[] = []
    const link = new Link(carrier, {
      kind: 'tcp',
      secret: () => secret,
      gate: (_id, proves) => proves(secret) ? null : 'bad proof',
      self: () => ({ member: { id: kp.publicKey.toString('hex'), host: '127.0.0.1', port: 1, zone: '', weight: 1 }, view: { epoch: 0, members: [] } }),
      onRequest: async req => { requests.push(req); return { data: req.data, version: req.data.length } },
      log: () => {}
    })
    t.teardown(() => link.close())
    await new Promise((resolve, reject) => { link.once('open', resolve); link.once('close', reject) })
    return { link, requests }
  }
  const server = net.createServer()
  t.teardown(() => server.close())
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
  const accepted = new Promise<End>(resolve => server.once('connection', s => { make(s, 1).then(resolve, () => {}) }))
  let port = (server.address() as net.AddressInfo).port
  if (through !== undefined) port = await through(port)
  const socket = net.connect({ host: '127.0.0.1', port })
  await new Promise(resolve => socket.once('connect', resolve))
  ends.push(await make(socket, 0), await accepted)
  return ends as [End, End]
}

const req = (data: Buffer): Omit<Request, 'id'> => ({ epoch: 1, op: Op.Write, oid: 7n, offset: 0, length: 0, version: 0, data })

t.test('two Links over TCP: requests of every size, pipelined, in both wire modes; plain only where both ends ask', async t => {
  for (const wires of [['encrypted', 'encrypted'], ['plain-authenticated', 'plain-authenticated'], ['plain-authenticated', 'encrypted']] as Array<[WireMode, WireMode]>) {
    const [a, b] = await linked(t, wires)
    const sizes = [0, 1, 4096, 65535, 65536, 65537, 2 ** 20, MAX_DATA]
    const datas = sizes.map(n => crypto.randomBytes(n))
    const answers = await Promise.all(datas.map(async d => await a.link.call(req(d), 10_000)))
    t.ok(answers.every((r, i) => r.error === '' && Buffer.from(r.data).equals(datas[i] as Buffer)), `${wires.join(' / ')}: ${sizes.length} requests in flight at once, up to ${MAX_DATA} bytes, each answered with its own data`)
    const back = await b.link.call(req(Buffer.from('the other way')), 5000)
    t.equal(Buffer.from(back.data).toString(), 'the other way', `${wires.join(' / ')}: and the other way`)
    a.link.close()
  }
})

t.test('one bit flipped by a proxy between two nodes: the connection closes, nothing changed is served', async t => {
  let flip = false
  let flipped = 0
  const proxy = async (port: number): Promise<number> => {
    const server = net.createServer(client => {
      const upstream = net.connect({ host: '127.0.0.1', port })
      client.on('error', () => {}); upstream.on('error', () => {})
      client.on('data', (chunk: Buffer) => {
        // Past the handshake and hellos: the next chunk of a request in flight.
        if (flip && chunk.length > 100) { chunk[50] = (chunk[50] as number) ^ 0x04; flip = false; flipped++ }
        upstream.write(chunk)
      })
      upstream.pipe(client)
      client.on('close', () => upstream.destroy())
      upstream.on('close', () => client.destroy())
    })
    t.teardown(() => server.close())
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
    return (server.address() as net.AddressInfo).port
  }
  const [a, b] = await linked(t, ['encrypted', 'encrypted'], proxy)
  const first = await a.link.call(req(Buffer.alloc(1000, 1)), 5000)
  t.equal(first.error, '', 'a request before the flip is answered')
  const closed = new Promise<string>(resolve => b.link.once('close', resolve))
  flip = true
  const err = await a.link.call(req(Buffer.alloc(1000, 2)), 5000).then(() => null, (e: Error) => e)
  t.equal(flipped, 1, 'the proxy flipped one bit')
  t.match(await closed, /authentication check/, 'the receiving end closed the connection')
  t.ok(err instanceof SheepError && err.code === 'ENOTCONN', `the sender's request fails: ${err?.message ?? ''}`)
  t.equal(b.requests.length, 1, 'the changed request never reached the handler')
})

t.test('a peer that falls silent (frozen, or the network cut) is dropped after the dead time, though this end keeps sending keep-alives', async t => {
  let cut = false
  const proxy = async (port: number): Promise<number> => {
    const server = net.createServer(client => {
      const upstream = net.connect({ host: '127.0.0.1', port })
      client.on('error', () => {}); upstream.on('error', () => {})
      // Once cut, nothing goes through either way, and neither end is told.
      client.on('data', (chunk: Buffer) => { if (!cut) upstream.write(chunk) })
      upstream.on('data', (chunk: Buffer) => { if (!cut) client.write(chunk) })
      // A cut network does not carry a close either: b, which goes deaf too, must not tell a.
      client.on('close', () => { if (!cut) upstream.destroy() })
      upstream.on('close', () => { if (!cut) client.destroy() })
      t.teardown(() => { client.destroy(); upstream.destroy() })
    })
    t.teardown(() => server.close())
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
    return (server.address() as net.AddressInfo).port
  }
  const [a, b] = await linked(t, ['encrypted', 'encrypted'], proxy, { keepAliveMs: 200, deadAfterMs: 800 })
  await new Promise(resolve => setTimeout(resolve, 1500))
  t.ok(a.link.isOpen && b.link.isOpen, 'idle for twice the dead time with the keep-alives going through: both ends stay open')
  cut = true
  const started = Date.now()
  const why = await new Promise<string>(resolve => a.link.once('close', resolve))
  const ms = Date.now() - started
  t.match(why, /nothing heard for 800 ms/, `closed: ${why}`)
  // Counted from the last frame heard, up to a keep-alive interval before the cut.
  t.ok(ms >= 500 && ms < 2000, `after ${ms} ms of silence`)
})

t.test('the largest hello (a view of MAX_MEMBERS members with the longest hosts and zones) goes over the direct path', async t => {
  const members: Member[] = Array.from({ length: MAX_MEMBERS }, (_, i) => ({
    id: crypto.createHash('sha256').update(String(i)).digest('hex'),
    host: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`, port: 65535, zone: 'z'.repeat(64), weight: 2 ** 40
  })).sort((a, b) => a.id < b.id ? -1 : 1)
  const view: View = { epoch: 2 ** 40, members }
  const big: Hello = { proof: crypto.randomBytes(32), self: members[0] as Member, view }
  t.ok(encode(hello, big).length > MAX_HEAD, `the hello is ${encode(hello, big).length} bytes, more than a head's ${MAX_HEAD}`)
  const server = net.createServer()
  t.teardown(() => server.close())
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
  const timing = { keepAliveMs: 1000, deadAfterMs: 5000 }
  const [ka, kb] = [DHT.keyPair(), DHT.keyPair()]
  const accepted = new Promise<net.Socket>(resolve => server.once('connection', resolve))
  const socket = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port })
  const [ca, cb] = await Promise.all([directCarrier(socket, true, ka, 'encrypted', timing), accepted.then(async s => await directCarrier(s, false, kb, 'encrypted', timing))])
  t.teardown(() => { ca.destroy(); cb.destroy() })
  const quiet = { request: () => {}, response: () => {}, drain: () => {}, error: () => {}, close: () => {} }
  const got = new Promise<Hello>((resolve, reject) => cb.open({ proof: Buffer.alloc(32), self: members[1] as Member, view: { epoch: 0, members: [] } }, { ...quiet, hello: resolve, error: reject }))
  ca.open(big, { ...quiet, hello: () => {} })
  const h = await got
  t.equal(h.view.members.length, MAX_MEMBERS, 'it arrives whole')
  t.same(h.view.members[MAX_MEMBERS - 1], members[MAX_MEMBERS - 1])

})
