// Overload from a user's side: a burst of requests means as many simultaneous call-home connects to the caller's
// response server. None may be dropped by the kernel (a dropped SYN is retried after 1 s and 3 s, past the
// worker's call-home connect timeout: the request was lost and the worker marked down for every later request).
// The same for a burst of HTTP clients at the frontend (there a drop costs each of them a second).
import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { OpenAiServer } from '../src/frontend/openai-server.js';
import { StaticModelDirectory } from '../src/frontend/models.js';
import { parseHostPort } from '../src/runtime/request-plane/address.js';

/** Opens `count` connections to host:port in one synchronous burst; resolves with the slowest connect time. */
async function burst(t: Test, host: string, port: number, count: number): Promise<number> {
  const sockets: Socket[] = [];
  t.teardown(() => {
    for (const s of sockets) s.destroy();
  });
  const t0 = performance.now();
  // the server accepts none of them until this loop ends, like a busy process
  const connected = Array.from({ length: count }, () => {
    const socket = connect({ host, port });
    sockets.push(socket);
    return new Promise<number>((resolve, reject) => {
      socket.once('connect', () => resolve(performance.now() - t0));
      socket.once('error', reject);
    });
  });
  return Math.max(...(await Promise.all(connected)));
}

t.test('1000 simultaneous call-home connects are all accepted at once', async (t) => {
  const server = await ResponseServer.start({ host: '127.0.0.1' });
  t.teardown(() => server.close());
  const { host, port } = parseHostPort(server.address, 'response server');
  const slowest = await burst(t, host, port, 1000);
  t.ok(slowest < 900, `slowest connect took ${slowest.toFixed(0)} ms (a dropped SYN is retried only after 1 s)`);
});

t.test('1000 simultaneous HTTP clients are all accepted at once', async (t) => {
  const server = await OpenAiServer.listen({ models: new StaticModelDirectory([]), host: '127.0.0.1', port: 0 });
  t.teardown(() => server.close());
  const slowest = await burst(t, '127.0.0.1', server.port, 1000);
  t.ok(slowest < 900, `slowest connect took ${slowest.toFixed(0)} ms (a dropped SYN is retried only after 1 s)`);
});
