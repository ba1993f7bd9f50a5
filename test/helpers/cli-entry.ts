// Runs the CLI from the TypeScript sources (tests spawn this under tsx), exactly as bin/dynamo-sglang.js runs the
// compiled one.
import { main } from '../../src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
