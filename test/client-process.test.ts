// Across processes: a worker child process serves an endpoint over TCP and registers in a file discovery store; the
// test process routes to it with EndpointClient. SIGKILLing the worker mid-stream ends the stream with a migratable
// DisconnectedError at once, takes the instance out of rotation, and the lease expiry then removes it from discovery.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { EndpointClient, DisconnectedError } from '../src/runtime/client.js';
import { Discovery, FileStore } from '../src/runtime/discovery/index.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';

const src = (p: string) => pathToFileURL(resolve(import.meta.dirname, '..', 'src', p)).href;

/** The worker: serves `ticker` (one item every 10 ms until cancelled) and reports its instance id. */
const workerSource = `
import { Discovery, FileStore } from ${JSON.stringify(src('runtime/discovery/index.ts'))};
import { serveEndpoint } from ${JSON.stringify(src('runtime/endpoint.ts'))};
import { TcpRequestServer } from ${JSON.stringify(src('runtime/request-plane/tcp-server.ts'))};
const discovery = new Discovery(new FileStore({ root: process.env.STORE_ROOT, leaseTtlMs: 1500 }));
const tcpServer = await TcpRequestServer.start({ host: '127.0.0.1', port: 0, wireProfile: 'main' });
await serveEndpoint({
  discovery, namespace: 'proc', component: 'worker', endpoint: 'ticker', plane: 'tcp', tcpServer,
  handler: async function* (_req, ctx) {
    for (let i = 0; !ctx.isStopped(); i++) {
      yield { i, pid: process.pid };
      await new Promise((r) => setTimeout(r, 10));
    }
  },
});
console.log('ready ' + discovery.instanceId.toString(16));
`;

t.test('a SIGKILLed worker: stream fails as Disconnected, instance skipped, then gone from discovery', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'client-process-'));
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', workerSource], {
    env: { ...process.env, STORE_ROOT: root },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const discovery = new Discovery(new FileStore({ root, leaseTtlMs: 1500 }));
  const responses = await ResponseServer.start({ host: '127.0.0.1' });
  t.teardown(async () => {
    child.kill('SIGKILL');
    await discovery.close();
    await responses.close();
    rmSync(root, { recursive: true, force: true });
  });
  const instanceHex = await new Promise<string>((resolveReady, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /ready ([0-9a-f]+)/.exec(out);
      if (m) resolveReady(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`worker exited early (${code}): ${out}`)));
  });
  const client = await EndpointClient.create({ discovery, namespace: 'proc', component: 'worker', endpoint: 'ticker', responses });
  t.teardown(() => client.close());
  await client.waitForInstances(10_000);
  t.equal(client.instances()[0].instance_id.toString(16), instanceHex);

  const stream = await client.generate({});
  const seen: number[] = [];
  let killedAt = 0;
  const error = await (async () => {
    try {
      for await (const item of stream) {
        seen.push((item.data as { i: number }).i);
        if (seen.length === 5) {
          killedAt = performance.now();
          child.kill('SIGKILL');
        }
      }
    } catch (err) {
      return err;
    }
    return undefined;
  })();
  const detectedMs = performance.now() - killedAt;
  t.ok(error instanceof DisconnectedError, `stream failed with ${String(error)}`);
  t.match(error, { code: 'LLM_ERR_TRANSPORT', migratable: true });
  t.ok(detectedMs < 500, `disconnect seen ${detectedMs.toFixed(1)} ms after SIGKILL`);
  t.same(seen.slice(0, 5), [0, 1, 2, 3, 4], 'items arrived in order before the kill');
  t.equal(client.available().length, 0, 'the dead instance is out of rotation at once');
  // still in discovery but marked down: it is tried again (the mark is no ban) and refuses the connection (or resets it, when the kill lands mid-handshake)
  await t.rejects(client.generate({}), { code: 'LLM_ERR_TRANSPORT', message: /ECONNREFUSED|ECONNRESET|refused|closed/ });

  // its lease expires (1.5 s TTL): discovery forgets it
  const deadline = Date.now() + 10_000;
  while (client.instances().length > 0 && Date.now() < deadline) await sleep(100);
  t.equal(client.instances().length, 0, 'gone from discovery after the lease TTL');
  await t.rejects(client.generate({}), { code: 'LLM_ERR_DISCOVERY', message: /no instances of proc\/worker\/ticker in discovery \(file store at / });
});
