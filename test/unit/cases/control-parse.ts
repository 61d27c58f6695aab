// The control socket's request parser: what it accepts and how it refuses the rest.

import t from 'tap'
import { parseRequest } from '../../../src/control/server'
import { OPS } from '../../../src/control/messages'
import { SheepError } from '../../../src/errors'

const j = (v: unknown): string => JSON.stringify(v)

t.test('accepts every well-formed request', async t => {
  const ok: Array<[unknown, unknown]> = [
    [{ op: 'status' }, { op: 'status', args: {} }],
    [{ op: 'status', args: {} }, { op: 'status', args: {} }],
    [{ op: 'image.list' }, { op: 'image.list', args: {} }],
    [{ op: 'image.create', args: { name: 'vm.img', size: 1024 } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: 0 } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: Number.MAX_SAFE_INTEGER } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: 1024, objectSize: 65536 } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: 1024, objectSize: 65536, copies: 2 } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: 1024, copies: 1 } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: 1024, uid: 107, gid: 107, mode: 0o660 } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: 1024, uid: 0, gid: 0, mode: 0 } }, null],
    [{ op: 'image.create', args: { name: 'vm.img', size: 1024, uid: 0xfffffffe, gid: 0xfffffffe, mode: 0o7777 } }, null],
    [{ op: 'image.delete', args: { name: 'x' } }, null],
    [{ op: 'image.resize', args: { name: 'x', size: 5 } }, null],
    [{ op: 'image.rename', args: { from: 'a', to: 'b' } }, null],
    [{ op: 'image.clone', args: { source: 'a', tag: 's1', name: 'b' } }, null],
    [{ op: 'image.clone', args: { source: 'a', name: 'b' } }, null], // without a tag: snapshot first
    [{ op: 'image.flatten', args: { name: 'b' } }, null],
    [{ op: 'image.tree' }, { op: 'image.tree', args: {} }],
    [{ op: 'snapshot.create', args: { name: 'a', tag: 's1' } }, null],
    [{ op: 'snapshot.list', args: { name: 'a' } }, null],
    [{ op: 'snapshot.delete', args: { name: 'a', tag: 's1' } }, null],
    [{ op: 'snapshot.rollback', args: { name: 'a', tag: 's1' } }, null],
    [{ op: 'stop' }, { op: 'stop', args: {} }],
    [{ op: 'cluster.token' }, { op: 'cluster.token', args: {} }],
    [{ op: 'node.list' }, { op: 'node.list', args: {} }],
    [{ op: 'stop', args: {} }, null],
    [{ op: 'stop', args: { force: true } }, null],
    [{ op: 'stop', args: { force: false } }, null],
    [{ args: {}, op: 'status' }, { op: 'status', args: {} }], // key order does not matter
    [{ op: 'status', extra: 1 }, { op: 'status', args: {} }] // fields beside op and args are ignored
  ]
  for (const [req, expected] of ok) {
    const got = parseRequest(j(req))
    t.same(got, expected ?? req, j(req))
  }
  // Whitespace around the JSON is fine.
  t.same(parseRequest('  {"op":"status"}  '), { op: 'status', args: {} })
  t.same(parseRequest('{"op":"status"}\r'), { op: 'status', args: {} })
  // Every op the protocol defines is accepted in some form.
  const sample: Record<string, unknown> = {
    status: {}, 'image.list': {}, 'image.create': { name: 'a', size: 1 }, 'image.delete': { name: 'a' },
    'image.resize': { name: 'a', size: 1 }, 'image.rename': { from: 'a', to: 'b' },
    'image.clone': { source: 'a', tag: 't', name: 'b' }, 'image.flatten': { name: 'a' }, 'image.tree': {},
    'snapshot.create': { name: 'a', tag: 't' }, 'snapshot.list': { name: 'a' }, 'snapshot.delete': { name: 'a', tag: 't' },
    'snapshot.rollback': { name: 'a', tag: 't' }, stop: {}, 'cluster.token': {}, 'node.list': {},
    'node.admit': { id: '0123abcd' }, 'node.remove': { id: '0123abcd' }, 'cluster.rotate': {}, 'cluster.forceStart': {}, check: { name: 'vm1.img', repair: true }
  }
  t.same(Object.keys(sample).sort(), [...OPS].sort(), 'the sample covers every op')
  for (const op of OPS) t.equal(parseRequest(j({ op, args: sample[op] })).op, op, `op ${op}`)
})

function refused (t: Pick<typeof import('tap'), 'ok' | 'equal' | 'match'>, line: string, message: RegExp): void {
  let err: unknown
  try { parseRequest(line) } catch (e) { err = e }
  // eslint-disable-next-line no-control-regex
  const label = line.slice(0, 80).replace(/[\u0000-\u001f]/g, c => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) || '(empty)'
  t.ok(err instanceof SheepError, `${label}: refused with a SheepError`)
  t.equal((err as SheepError | undefined)?.code, 'EINVAL', `${label}: EINVAL`)
  t.match((err as Error | undefined)?.message ?? '', message, `${label}: ${(err as Error | undefined)?.message}`)
}

t.test('refuses what is not JSON', async t => {
  for (const line of ['', ' ', 'status', '{', '{"op":"status"', "{'op':'status'}", '{"op":"status"}{}', '{"op":"status"}\n{"op":"stop"}', 'undefined', 'NaN', '\u0000']) {
    refused(t, line, /not JSON/)
  }
  refused(t, '{"op":"status"}' + ' '.repeat(10) + 'x', /not JSON/)
})

t.test('refuses what is not an object', async t => {
  for (const line of ['null', '1', '"status"', 'true', 'false']) refused(t, line, /must be an object/)
  // An array is an object to typeof, but has no op.
  refused(t, '[]', /unknown operation/)
  refused(t, '["status"]', /unknown operation/)
})

t.test('refuses unknown or malformed operations', async t => {
  for (const op of [undefined, null, 1, true, [], {}, '', 'STATUS', 'image', 'image.destroy', 'status ', 'toString', '__proto__', 'constructor', 'hasOwnProperty']) {
    refused(t, j({ op, args: {} }), /unknown operation/)
  }
  refused(t, '{}', /unknown operation/)
})

t.test('refuses args that are not an object', async t => {
  for (const args of [null, 1, 'x', true, [], ['name']]) refused(t, j({ op: 'status', args }), /args must be an object/)
})

t.test('refuses unknown arguments', async t => {
  refused(t, j({ op: 'status', args: { verbose: true } }), /unknown argument "verbose"/)
  refused(t, j({ op: 'image.delete', args: { name: 'x', force: true } }), /unknown argument "force"/)
  refused(t, j({ op: 'image.create', args: { name: 'x', size: 1, objectsize: 65536 } }), /unknown argument "objectsize"/)
  refused(t, j({ op: 'stop', args: { name: 'x' } }), /unknown argument "name"/)
  refused(t, j({ op: 'image.tree', args: { name: 'x' } }), /unknown argument "name"/)
  refused(t, j({ op: 'snapshot.create', args: { name: 'x', tag: 't', force: true } }), /unknown argument "force"/)
  refused(t, j({ op: 'check', args: { repair: 'yes' } }), /bad or missing argument "repair"/)
  refused(t, j({ op: 'check', args: { name: 7 } }), /bad or missing argument "name"/)
  refused(t, j({ op: 'check', args: { deep: true } }), /unknown argument "deep"/)
})

t.test('refuses argument names inherited from Object.prototype', async t => {
  // They are not keys of the op's shape, so they must be unknown arguments like any other.
  const accepted: string[] = []
  for (const key of ['toString', 'constructor', 'hasOwnProperty', 'valueOf', '__proto__', 'isPrototypeOf']) {
    for (const line of [`{"op":"status","args":{${j(key)}:1}}`, `{"op":"image.delete","args":{"name":"x",${j(key)}:{}}}`]) {
      try {
        parseRequest(line)
        accepted.push(line)
      } catch (err) {
        if (!(err instanceof SheepError) || err.code !== 'EINVAL' || !/unknown argument/.test(err.message)) accepted.push(`${line}: ${String(err)}`)
      }
    }
  }
  t.same(accepted, [], 'every such request is refused as an unknown argument')
})

t.test('refuses missing or mistyped arguments', async t => {
  const bad: Array<[unknown, string]> = [
    [{ op: 'image.create', args: {} }, 'name'],
    [{ op: 'image.create' }, 'name'],
    [{ op: 'image.create', args: { name: 'x' } }, 'size'],
    [{ op: 'image.create', args: { size: 1 } }, 'name'],
    [{ op: 'image.create', args: { name: 1, size: 1 } }, 'name'],
    [{ op: 'image.create', args: { name: null, size: 1 } }, 'name'],
    [{ op: 'image.create', args: { name: ['x'], size: 1 } }, 'name'],
    [{ op: 'image.create', args: { name: 'x', size: '1G' } }, 'size'],
    [{ op: 'image.create', args: { name: 'x', size: -1 } }, 'size'],
    [{ op: 'image.create', args: { name: 'x', size: 1.5 } }, 'size'],
    [{ op: 'image.create', args: { name: 'x', size: 2 ** 53 } }, 'size'],
    [{ op: 'image.create', args: { name: 'x', size: 1e300 } }, 'size'],
    [{ op: 'image.create', args: { name: 'x', size: null } }, 'size'],
    [{ op: 'image.create', args: { name: 'x', size: true } }, 'size'],
    [{ op: 'image.create', args: { name: 'x', size: 1, objectSize: '64K' } }, 'objectSize'],
    [{ op: 'image.create', args: { name: 'x', size: 1, objectSize: null } }, 'objectSize'],
    [{ op: 'image.create', args: { name: 'x', size: 1, objectSize: -65536 } }, 'objectSize'],
    [{ op: 'image.create', args: { name: 'x', size: 1, copies: '3' } }, 'copies'],
    [{ op: 'image.create', args: { name: 'x', size: 1, copies: 2.5 } }, 'copies'],
    [{ op: 'image.create', args: { name: 'x', size: 1, uid: -1 } }, 'uid'],
    [{ op: 'image.create', args: { name: 'x', size: 1, uid: 0xffffffff } }, 'uid'], // chown's "unchanged"
    [{ op: 'image.create', args: { name: 'x', size: 1, uid: 'root' } }, 'uid'],
    [{ op: 'image.create', args: { name: 'x', size: 1, uid: 1.5 } }, 'uid'],
    [{ op: 'image.create', args: { name: 'x', size: 1, gid: 2 ** 32 } }, 'gid'],
    [{ op: 'image.create', args: { name: 'x', size: 1, gid: null } }, 'gid'],
    [{ op: 'image.create', args: { name: 'x', size: 1, mode: 0o10000 } }, 'mode'],
    [{ op: 'image.create', args: { name: 'x', size: 1, mode: '0600' } }, 'mode'],
    [{ op: 'image.create', args: { name: 'x', size: 1, mode: -1 } }, 'mode'],
    [{ op: 'image.delete', args: {} }, 'name'],
    [{ op: 'image.delete', args: { name: 5 } }, 'name'],
    [{ op: 'image.resize', args: { name: 'x' } }, 'size'],
    [{ op: 'image.resize', args: { size: 5 } }, 'name'],
    [{ op: 'image.resize', args: { name: 'x', size: -5 } }, 'size'],
    [{ op: 'image.rename', args: { from: 'a' } }, 'to'],
    [{ op: 'image.rename', args: { to: 'a' } }, 'from'],
    [{ op: 'image.rename', args: { from: 'a', to: 2 } }, 'to'],
    [{ op: 'image.clone', args: { tag: 't', name: 'b' } }, 'source'],
    [{ op: 'image.clone', args: { source: 'a', tag: 't' } }, 'name'],
    [{ op: 'image.clone', args: { source: 'a', tag: 1, name: 'b' } }, 'tag'],
    [{ op: 'image.clone', args: { source: 'a', tag: null, name: 'b' } }, 'tag'],
    [{ op: 'image.flatten', args: {} }, 'name'],
    [{ op: 'snapshot.create', args: { name: 'a' } }, 'tag'],
    [{ op: 'snapshot.create', args: { tag: 't' } }, 'name'],
    [{ op: 'snapshot.list', args: { name: ['a'] } }, 'name'],
    [{ op: 'snapshot.delete', args: { name: 'a', tag: 7 } }, 'tag'],
    [{ op: 'snapshot.rollback', args: { name: 'a' } }, 'tag'],
    [{ op: 'stop', args: { force: 'yes' } }, 'force'],
    [{ op: 'stop', args: { force: 1 } }, 'force'],
    [{ op: 'stop', args: { force: null } }, 'force']
  ]
  for (const [req, key] of bad) refused(t, j(req), new RegExp(`bad or missing argument "${key}"`))
})

t.test('a refused request names its operation', async t => {
  let err: unknown
  try { parseRequest(j({ op: 'image.resize', args: { name: 'x' } })) } catch (e) { err = e }
  t.match((err as Error).message, /^image\.resize: /)
})
