// The receive side's body memory (src/swarm/body-pool.ts): given back only by its owner, used
// again for a later body, and never two live bodies on one piece of memory.

import t from 'tap'
import { BodyPool, POOLED_MIN } from '../../src/swarm/body-pool'
import { FrameReader, frameKeys, FrameSealer, FrameType, type Frame } from '../../src/swarm/frames'

const MiB = 2 ** 20

t.test('a body given back carries the next of about its size; one not given back is never shared', async t => {
  const pool = new BodyPool()
  const a = pool.take(MiB)
  const b = pool.take(MiB)
  t.equal(a.length, MiB)
  t.not(a.buffer, b.buffer, 'two bodies taken and not given back have memory of their own')
  pool.give(a)
  const c = pool.take(MiB - 100)
  t.equal(c.buffer, a.buffer, 'the memory given back carries the next body that fits')
  t.equal(c.length, MiB - 100, 'at exactly its size')
  pool.give(c)
  pool.give(c)
  const d = pool.take(MiB)
  const e = pool.take(MiB)
  t.not(d.buffer, e.buffer, 'memory given back twice is handed out once')
})

t.test('small bodies and buffers the pool did not make are left alone', async t => {
  const pool = new BodyPool()
  const small = pool.take(POOLED_MIN - 1)
  pool.give(small)
  const foreign = Buffer.alloc(MiB)
  pool.give(foreign)
  const next = pool.take(MiB)
  t.not(next.buffer, foreign.buffer, 'a foreign buffer is never handed out')
  t.not(next.buffer, small.buffer, 'nor the slab of a small one')
})

t.test('a reader hands each frame its own bytes until ready() gives them back', async t => {
  const key = Buffer.alloc(32, 7)
  const sealer = new FrameSealer(frameKeys(key, key).send)
  const reader = new FrameReader(frameKeys(key, key).receive)
  reader.maxBody = 8 * MiB
  const frames: Frame[] = []
  const send = (fill: number): void => {
    const wire = Buffer.concat(sealer.seal(FrameType.Request, Buffer.alloc(10), Buffer.alloc(MiB, fill)))
    for (let at = 0; at < wire.length; at += 65536) reader.push(wire.subarray(at, at + 65536), f => frames.push(f))
  }
  send(1)
  send(2)
  const [first, second] = frames as [Frame, Frame]
  t.ok(first.data.every(b => b === 1) && second.data.every(b => b === 2), 'two frames not given back keep their bytes')
  reader.ready(first.data)
  send(3)
  const third = frames[2] as Frame
  t.equal(third.data.buffer, first.data.buffer, 'the third takes the memory the first gave back')
  t.ok(third.data.every(b => b === 3) && second.data.every(b => b === 2), 'and its bytes, the second keeping its own')
})
