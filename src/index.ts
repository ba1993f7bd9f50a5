// The package's programmatic API: the supervisor (engine + scheduler behind generate()), the worker and the
// configuration that drives it, the wire schemas, and the coded errors.
export * from './errors.js';
export type * from './engine/types.js';
export { Supervisor, type SupervisorConfig, type GenerateOptions, type SupervisorOptions, type TextRequest, type TextChunk } from './supervisor.js';
export { loadTokenizer, type Tokenizer, type ChatMessage } from './tokenizer/index.js';
export { configureLogging, createLogger, logger, parseLogSpec, type Logger, type LogDestination, type LoggingOptions, type LogLevel } from './runtime/log.js';
export { buildTopology, startCore, type TopologyConfig, type TopologyGraph, type CoreGraph, type RunningCore, type SchedulerKvPort } from './topology/topology.js';
export { startTopology, type RunningTopology } from './topology/start.js';
export { resolveConfig, finalizeConfig } from './config/resolve.js';
export { WorkerConfigSchema, type WorkerConfig } from './config/schema.js';
export { startWorker, runWorker, type WorkerHandle, type WorkerOptions } from './worker/worker.js';
export { OpenAiServer } from './frontend/openai-server.js';
export type { ServedModel, ModelDirectory } from './frontend/models.js';
export * as protocol from './protocol/index.js';
