// A worker stand-in for crash tests: registers one endpoint instance through the discovery store named by its
// JSON argument, prints "ready <instance id hex>", then idles until it is killed.
import { Discovery, type DiscoveryConfig } from '../../src/runtime/discovery/index.js';

const { config, namespace } = JSON.parse(process.argv[2] ?? '{}') as { config: DiscoveryConfig; namespace: string };
const discovery = await Discovery.open(config);
await discovery.registerEndpointInstance({
  namespace,
  component: 'backend',
  endpoint: 'generate',
  transport: { tcp: `127.0.0.1:1/${discovery.instanceId.toString(16)}/generate` },
});
process.stdout.write(`ready ${discovery.instanceId.toString(16)}\n`);
setInterval(() => undefined, 1 << 30);
