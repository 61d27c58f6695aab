// Fuzzing every peer codec and the channel handshake: valid messages from a seeded generator,
// broken by a seeded mutator (every truncation, bit flips, extension, huge length and count
// prefixes, random bytes). Each decode must either return a value that passes the codec's rules
// and encodes again to a stable form, or throw SheepError EPROTO: never a RangeError or TypeError
// (protomux's safety-catch turns those into an uncaught exception: the daemon dies), never a huge
// allocation. The same goes through a real Link and protomux, before and after the proof.
//
// SHEEP_FUZZ_SEED=N replays a run (the seed is printed, and named in every failure);
// SHEEP_FUZZ_COUNT=N sets the inputs per codec (default 100 000).

import t from 'tap'
import crypto from 'node:crypto'
import c from 'compact-encoding'
import { isErrorCode, SheepError } from '../../src/errors'
import {
  agreement, decode, encode, hello, LIST_PAGE, MAX_DATA, MAX_MEMBERS, MAX_MESSAGE, MAX_STRING, member, objectList, oidList,
  request, response, SYNC_BATCH, tokenRecord, usage, verifyAnswer, view, viewProblem, wire
} from '../../src/swarm/messages'
import { muxCarrier } from '../../src/swarm/carrier'
import { Link } from '../../src/swarm/link'
import { proofFor } from '../../src/swarm/proof'
import { MAX_VOTES, memberProblem, type Member, type View } from '../../src/swarm/view'
import type { AgreementMessage, Ballot } from '../../src/swarm/view-agreement'
import { Rng } from '../helpers/random'
import {
  agreementOf, FakeSecureStream, helloOf, HUGE_PREFIXES, memberOf, messageFrame, mutate, objectListOf, oidListOf, openFrame,
  requestOf, responseOf, tokenRecordOf, usageOf, verifyAnswerOf, viewOf
} from '../helpers/hostile'

const SEED = process.env.SHEEP_FUZZ_SEED !== undefined ? Number(process.env.SHEEP_FUZZ_SEED) : crypto.randomInt(2 ** 31)
const COUNT = Number(process.env.SHEEP_FUZZ_COUNT ?? 100_000)
t.comment(`fuzz seed ${SEED} (replay: SHEEP_FUZZ_SEED=${SEED}), ${COUNT} inputs per codec`)

// ---------------------------------------------------------------------------------------------
// What a decoded value must satisfy, checked here independently of the decoders.

const ID = /^[0-9a-f]{64}$/
const SIGNATURE = /^[0-9a-f]{128}$/
const safe = (n: unknown): boolean => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0
const u8 = (b: unknown): boolean => b instanceof Uint8Array && b.length <= MAX_DATA

function memberOk (m: Member): boolean { return ID.test(m.id) && memberProblem(m) === null && Buffer.byteLength(m.host) <= MAX_STRING }
function viewOk (v: View): boolean { return safe(v.epoch) && v.members.length <= MAX_MEMBERS && v.members.every(memberOk) && viewProblem(v) === null }
function ballotOk (b: Ballot): boolean { return safe(b.round) && ID.test(b.proposer) }

interface Case<T> { name: string, codec: c.Encoding<T>, make: (rng: Rng) => T, ok: (v: T) => boolean }

function fuzzCase<T> (name: string, codec: c.Encoding<T>, make: (rng: Rng) => T, ok: (v: T) => boolean): Case<unknown> {
  return { name, codec, make, ok } as unknown as Case<unknown>
}

const CASES: Array<Case<unknown>> = [
  fuzzCase('hello', hello, helloOf, h => h.proof.length === 32 && memberOk(h.self) && viewOk(h.view)),
  fuzzCase('member', member, rng => memberOf(rng), memberOk),
  fuzzCase('view', view, viewOf, viewOk),
  fuzzCase('request', request, requestOf, r => [r.id, r.epoch, r.op, r.offset, r.length, r.version].every(safe) && typeof r.oid === 'bigint' && u8(r.data)),
  fuzzCase('response', response, responseOf, r => [r.id, r.epoch, r.version, r.size].every(safe) && (r.error === '' || isErrorCode(r.error)) &&
    Buffer.byteLength(r.message) <= MAX_MESSAGE && u8(r.data)),
  fuzzCase('objectList', objectList, objectListOf, l => l.length <= LIST_PAGE && l.every(e => typeof e.oid === 'bigint' && safe(e.version) && safe(e.size))),
  fuzzCase('oidList', oidList, oidListOf, l => l.length <= SYNC_BATCH && l.every(o => typeof o === 'bigint')),
  fuzzCase('tokenRecord', tokenRecord, tokenRecordOf, r => ID.test(r.holder) && safe(r.generation) && typeof r.deleted === 'boolean'),
  fuzzCase('usage', usage, usageOf, u => safe(u.capacity) && safe(u.free)),
  fuzzCase('verifyAnswer', verifyAnswer, verifyAnswerOf, v => typeof v.behind === 'boolean' && safe(v.digest) && v.digest <= 0xffffffff),
  fuzzCase('agreement', agreement, agreementOf, (m: AgreementMessage) => {
    switch (m.type) {
      case 'prepare': return safe(m.epoch) && ballotOk(m.ballot)
      case 'accepted': return safe(m.epoch) && ballotOk(m.ballot) && SIGNATURE.test(m.signature)
      case 'promise': return safe(m.epoch) && ballotOk(m.ballot) && (m.accepted === null || (ballotOk(m.accepted.ballot) && viewOk(m.accepted.view)))
      case 'accept': return safe(m.epoch) && ballotOk(m.ballot) && viewOk(m.view)
      case 'nack': return safe(m.epoch) && ballotOk(m.ballot) && ballotOk(m.promised)
      case 'decided': return viewOk(m.view) && (m.certificate === null ||
        (ballotOk(m.certificate.ballot) && m.certificate.votes.length <= MAX_VOTES && m.certificate.votes.every(v => ID.test(v.voter) && SIGNATURE.test(v.signature))))
      case 'query': return safe(m.epoch)
    }
    return false
  })
]

/** Peak of heap and array buffers, sampled: a decoder that allocates what a prefix claims shows here. */
class MemoryWatch {
  private readonly base = used()
  peak = 0
  sample (): void { this.peak = Math.max(this.peak, used() - this.base) }
}
function used (): number { const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers }
const MEMORY_LIMIT = 256 * 2 ** 20

// ---------------------------------------------------------------------------------------------

/** Most inputs are refused, and capturing a stack for each error is most of what that costs. */
function withoutStacks (t: { teardown: (fn: () => void) => void }): void {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  t.teardown(() => { Error.stackTraceLimit = limit })
}

t.test('every codec: mutated valid messages decode to a valid value or throw SheepError EPROTO', async t => {
  withoutStacks(t)
  for (const [k, cs] of CASES.entries()) {
    const seed = SEED + k
    const rng = new Rng(seed)
    const started = performance.now()
    const memory = new MemoryWatch()
    let inputs = 0
    let accepted = 0
    let failure: string | null = null
    const check = (input: Buffer): void => {
      inputs++
      let value: unknown
      try {
        value = decode(cs.codec, input)
      } catch (err) {
        if (!(err instanceof SheepError) || err.code !== 'EPROTO') {
          failure ??= `${cs.name}: ${(err as Error).name} "${(err as Error).message}" on input ${input.toString('hex').slice(0, 400)} (seed ${seed})`
        }
        return
      }
      accepted++
      if (!cs.ok(value)) {
        failure ??= `${cs.name}: decoded an invalid value from ${input.toString('hex').slice(0, 400)} (seed ${seed})`
        return
      }
      // What was accepted can be sent on: it encodes, and decodes to the same encoding.
      try {
        const again = encode(cs.codec, value)
        if (!encode(cs.codec, decode(cs.codec, again)).equals(again)) failure ??= `${cs.name}: unstable encoding of ${input.toString('hex').slice(0, 400)} (seed ${seed})`
      } catch (err) {
        failure ??= `${cs.name}: a decoded value does not encode again (${(err as Error).message}) from ${input.toString('hex').slice(0, 400)} (seed ${seed})`
      }
    }
    while (inputs < COUNT && failure === null) {
      const valid = encode(cs.codec, cs.make(rng))
      check(valid)
      // Every truncation of this sample, then mutations of it.
      for (let n = 0; n < valid.length; n++) check(valid.subarray(0, n))
      for (let m = 0; m < 64; m++) check(mutate(rng, valid))
      if (inputs % 4096 < 100) memory.sample()
    }
    memory.sample()
    const ms = Math.round(performance.now() - started)
    t.equal(failure, null, `${cs.name}: ${inputs} inputs (${accepted} accepted) in ${ms} ms, seed ${seed}`)
    t.ok(memory.peak < MEMORY_LIMIT, `${cs.name}: memory grew by at most ${Math.round(memory.peak / 2 ** 20)} MiB (seed ${seed})`)
  }
})

t.test('a count or length prefix of 2^30 and more is refused before anything is allocated', async t => {
  const lists: Array<[string, c.Encoding<unknown>, Buffer]> = [
    ['objectList', objectList as c.Encoding<unknown>, Buffer.alloc(0)],
    ['oidList', oidList as c.Encoding<unknown>, Buffer.alloc(0)],
    // a view's member list after its epoch
    ['view', view as c.Encoding<unknown>, Buffer.from([0x05])],
    // a request's data length after its seven numbers and the oid
    ['request', request as c.Encoding<unknown>, Buffer.concat([Buffer.from([1, 1, 3]), Buffer.alloc(8), Buffer.from([0, 0, 0])])]
  ]
  for (const [name, codec, before] of lists) {
    for (const huge of HUGE_PREFIXES.slice(0, 5)) {
      const memory = new MemoryWatch()
      const started = performance.now()
      let err: unknown = null
      try { decode(codec, Buffer.concat([before, huge, Buffer.alloc(16)])) } catch (e) { err = e }
      memory.sample()
      t.ok(err instanceof SheepError && err.code === 'EPROTO', `${name} with prefix ${huge.toString('hex')}: EPROTO (${(err as Error | null)?.message ?? 'accepted'})`)
      t.ok(memory.peak < 16 * 2 ** 20 && performance.now() - started < 50, `${name} with prefix ${huge.toString('hex')}: nothing allocated`)
    }
  }
})

t.test('wire() codecs, as protomux calls them, throw only SheepError', async t => {
  const rng = new Rng(SEED + 100)
  const codec = wire(hello, 'hello')
  let bad = 0
  for (let i = 0; i < 20_000; i++) {
    const input = mutate(rng, encode(hello, helloOf(rng)))
    try { codec.decode(c.state(0, input.length, input)) } catch (err) { if (!(err instanceof SheepError)) bad++ }
  }
  t.equal(bad, 0, `no other error type escapes (seed ${SEED + 100})`)
})

// ---------------------------------------------------------------------------------------------
// Through a real Link and protomux: the channel open with a mutated hello (before the proof),
// and mutated requests and responses after a valid proof.

interface Harness { stream: FakeSecureStream, link: Link, logs: string[], misbehaved: boolean, opened: boolean }

const SECRET = crypto.randomBytes(32)
const SELF: Member = { id: 'a'.repeat(64), host: '127.0.0.1', port: 1, zone: '', weight: 1 }

function harness (remoteKey: Buffer, served: () => void): Harness {
  const stream = new FakeSecureStream(remoteKey, crypto.randomBytes(32), false)
  const logs: string[] = []
  const h: Harness = { stream, link: null as unknown as Link, logs, misbehaved: false, opened: false }
  h.link = new Link(muxCarrier(stream as never), {
    kind: 'tcp',
    secret: () => SECRET,
    gate: (_id, proves) => proves(SECRET) ? null : 'it did not prove it holds the cluster secret',
    self: () => ({ member: SELF, view: { epoch: 0, members: [] } }),
    onRequest: async () => { served(); return {} },
    log: line => logs.push(line),
    helloTimeoutMs: 60_000
  })
  h.link.on('misbehaved', () => { h.misbehaved = true })
  h.link.on('open', () => { h.opened = true })
  return h
}

/** Errors that reached the process instead of closing a stream (safety-catch rethrows there). */
function trapUncaught (t: { teardown: (fn: () => void) => void }): unknown[] {
  const caught: unknown[] = []
  const trap = (err: unknown): void => { caught.push(err) }
  process.on('uncaughtException', trap)
  t.teardown(() => { process.off('uncaughtException', trap) })
  return caught
}

t.test('the channel open through protomux and a Link: a mutated hello closes only that stream, with the key logged', async t => {
  withoutStacks(t)
  const caught = trapUncaught(t)
  const rng = new Rng(SEED + 200)
  const remote = crypto.randomBytes(32)
  let opened = 0
  let closedWithLog = 0
  let thrown: string | null = null
  const n = Math.max(1, Math.floor(COUNT / 4))
  for (let i = 0; i < n && thrown === null; i++) {
    const h = harness(remote, () => {})
    const valid = encode(hello, { ...helloOf(rng), self: memberOf(rng, remote.toString('hex')) })
    const mode = rng.int(0, 3)
    // The payload broken, or the whole open frame (protomux's own framing), or truncated.
    const frame = mode === 0
      ? openFrame(valid.subarray(0, rng.int(0, valid.length - 1)))
      : mode === 1 ? mutate(rng, openFrame(valid)) : openFrame(mutate(rng, valid))
    try {
      h.stream.push(frame)
      await Promise.resolve() // protomux opens the responder's channel on the next tick
    } catch (err) {
      thrown = `${(err as Error).name} "${(err as Error).message}" from frame ${frame.toString('hex').slice(0, 400)} (seed ${SEED + 200})`
    }
    if (h.stream.destroyError !== null && (h.stream.destroyError instanceof RangeError || h.stream.destroyError instanceof TypeError)) {
      thrown ??= `the stream was destroyed with a ${h.stream.destroyError.name} (seed ${SEED + 200})`
    }
    if (h.opened) opened++
    if (h.stream.destroyed && h.logs.some(l => l.includes(remote.toString('hex')))) closedWithLog++
    h.link.close()
  }
  await new Promise(resolve => setImmediate(resolve))
  t.equal(thrown, null, `${n} channel opens: nothing thrown out of protomux`)
  t.same(caught, [], 'no uncaught exception')
  t.equal(opened, 0, 'no hello opened the link (no proof is valid)')
  t.ok(closedWithLog > n / 2, `${closedWithLog} of ${n} were closed with a log line naming the remote key (the rest were ignored by protomux or wait for a valid open)`)
})

t.test('after a valid proof: mutated requests and responses close only that link, never throw', async t => {
  withoutStacks(t)
  const caught = trapUncaught(t)
  const rng = new Rng(SEED + 300)
  const remote = crypto.randomBytes(32)
  let served = 0
  let links = 0
  let misbehaved = 0
  let inputs = 0
  let thrown: string | null = null
  const fresh = (): Harness => {
    links++
    const h = harness(remote, () => { served++ })
    const proof = proofFor(SECRET, h.stream.handshakeHash as Buffer, true)
    h.stream.push(openFrame(encode(hello, { proof, self: memberOf(rng, remote.toString('hex')), view: { epoch: 0, members: [] } })))
    return h
  }
  let h = fresh()
  const n = Math.max(1, Math.floor(COUNT / 2))
  while (inputs < n && thrown === null) {
    if (!h.opened) { thrown = `a valid hello did not open the link: ${h.logs.join('; ')}`; break }
    const type = rng.int(0, 2) // 2: a message type the channel does not have
    const valid = type === 1 ? encode(response, responseOf(rng)) : encode(request, requestOf(rng))
    const frame = rng.chance(0.1) ? mutate(rng, messageFrame(type, valid)) : messageFrame(type, rng.chance(0.2) ? valid : mutate(rng, valid))
    inputs++
    try {
      h.stream.push(frame)
    } catch (err) {
      thrown = `${(err as Error).name} "${(err as Error).message}" from frame ${frame.toString('hex').slice(0, 400)} (seed ${SEED + 300})`
    }
    if (h.stream.destroyed) {
      if (h.misbehaved) misbehaved++
      h = fresh()
    }
    if (inputs % 1024 === 0) await new Promise(resolve => setImmediate(resolve))
  }
  h.link.close()
  await new Promise(resolve => setImmediate(resolve))
  t.equal(thrown, null, `${inputs} messages after the proof on ${links} links: nothing thrown out of protomux`)
  t.same(caught, [], 'no uncaught exception')
  t.ok(served > 0, `${served} well-formed requests were served`)
  t.ok(misbehaved > 0, `${misbehaved} links closed as misbehaving (their key is banned by the mesh)`)
})
