export * from './errors.js';
export type * from './engine/types.js';
