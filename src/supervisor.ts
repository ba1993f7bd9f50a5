// The programmatic API: `const sup = await Supervisor.start({ modelPath })`, `for await (const chunk of
// sup.generate(request, { signal }))`, `await sup.stop()`. The implementation lives with the actors it starts.
export { Supervisor, type GenerateOptions, type SupervisorLoad, type SupervisorOptions, type TextRequest, type TextChunk } from '../actors/supervisor.js';
export type { SupervisorConfig } from './config/supervisor.js';
export type { MetricsSnapshot } from '../actors/metrics.js';
export type { RadixEvent as KvCacheEvent } from './scheduler/radix.js';
