// Placeholder CLI entry; replaced by the config/CLI work.
export async function main(argv: string[]): Promise<number> {
  console.log('dynamo-sglang', argv.join(' '));
  return 0;
}
