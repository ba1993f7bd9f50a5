#!/usr/bin/env node
// Entry point of the `dynamo-sglang` command: runs the compiled CLI (built by `npm ci` through `prepare`).
import { main } from '../dist/src/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  (err) => { console.error(`dynamo-sglang: ${err && err.message ? err.message : err}`); process.exitCode = 1; },
);
