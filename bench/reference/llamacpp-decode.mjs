// llama.cpp (node-llama-cpp 3.21.1, CPU) greedy decode speed on a GGUF file: the peer side of bench/cpu-decode.
// Setup (bench-only, never in the root package.json): cd bench/reference && npm i -E node-llama-cpp@3.21.1
// Run: node bench/reference/llamacpp-decode.mjs MODEL.gguf THREADS NEW_TOKENS PROMPT_TOKENS
// Prints one JSON line: decode tok/s (first generated token excluded), ms and CPU ms per token.
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const [modelPath, threadsArg, newArg, promptArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const newTokens = Number(newArg);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: 1024, threads, batchSize: 256 });
const sequence = context.getSequence();
const prompt = Array.from({ length: Number(promptArg) }, (_, i) => 100 + i);
let generated = 0;
let tFirst = 0;
let cpuFirst;
for await (const _token of sequence.evaluate(prompt, { temperature: 0 })) {
  generated++;
  if (generated === 1) {
    tFirst = performance.now();
    cpuFirst = process.cpuUsage();
  }
  if (generated > newTokens) break;
}
const ms = performance.now() - tFirst;
const cpu = process.cpuUsage(cpuFirst);
console.log(JSON.stringify({ tokS: (newTokens / ms) * 1000, msPerToken: ms / newTokens, cpuMsPerToken: (cpu.user + cpu.system) / 1000 / newTokens }));
await context.dispose();
await model.dispose();
await llama.dispose();
process.exit(0);
