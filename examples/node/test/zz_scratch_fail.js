// temporary scratch (deleted right after): checks cleanup on a mid-test failure
const { test, before, after } = require('node:test');
const h = require('./xds_harness');
let stack;
before(async () => { stack = await h.startStack(); });
after(async () => { await stack.stop(); });
test('fails midway', async (t) => {
  const b = await h.Backend.start('x-1');
  t.after(() => b.stop());
  stack.startAgent({ service: 'x', node: 'x-1', port: b.port });
  const loop = new h.CallLoop(h.xdsClient('x')).start();
  t.after(() => loop.stop());
  await h.waitFor(() => b.received.length > 0, { timeoutMs: 20000, what: 'calls' });
  throw new Error('deliberate');
});
