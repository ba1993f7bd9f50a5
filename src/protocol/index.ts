// Wire vocabulary of the worker: every message, record and payload the reference puts on a wire, as typebox
// schemas (the single source of truth; config/schemas/*.schema.json are generated from them).
export * from './common.js';
export * from './json.js';
export * from './validate.js';
export * from './discovery.js';
export * from './events.js';
export * from './transport.js';
export * from './request.js';
export * from './response.js';
export * from './health.js';
export * from './mdc.js';
export * from './openai.js';
export * from './kv-query.js';
export * from './wire-profile.js';
export * from './events-0.8.js';
