export * from './errors.js';
export type * from './engine/types.js';
export { Supervisor, type SupervisorConfig, type GenerateOptions } from './supervisor.js';
