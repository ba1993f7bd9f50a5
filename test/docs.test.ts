// The project's documents stand on their own: the README links the architecture document in docs/, and neither
// points outside the repository (no web links but the local server's; every relative link names a file that exists).
import t from 'tap';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const documents = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

t.test('the README links docs/architecture.md', async (t) => {
  t.match(readFileSync(join(root, 'README.md'), 'utf8'), /\]\(docs\/architecture\.md\)/);
  t.match(readFileSync(join(root, 'docs/architecture.md'), 'utf8'), /^# Architecture/);
});

for (const doc of documents) {
  t.test(`${doc} points only inside the repository`, async (t) => {
    const text = readFileSync(join(root, doc), 'utf8');
    const web = [...text.matchAll(/https?:\/\/[^\s)`'"]+/g)].map((m) => m[0]).filter((u) => !/^https?:\/\/(127\.0\.0\.1|localhost)[:/]/.test(u));
    t.same(web, [], 'no web links');
    for (const m of text.matchAll(/\]\(([^)#]+)(#[^)]*)?\)/g)) {
      const target = m[1]!;
      t.ok(existsSync(join(root, dirname(doc), target)), `link target ${target} exists`);
    }
    t.notMatch(text, /\/work\/shared/, 'no paths of the build machine');
  });
}
