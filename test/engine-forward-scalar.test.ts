// The same forward-pass check as engine-forward.test.ts, on the portable (non-AVX2) kernels: the build runs on
// any x86-64 or other CPU, so its fallback path must be as exact as the SIMD one.
process.env.DYNAMO_SGLANG_CPU_SCALAR = '1';
await import('./engine-forward.test.js');
