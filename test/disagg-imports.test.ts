// Dependency rules of the disaggregation code (issue 16): src/disagg knows no actor and the actors know no
// src/disagg; the topology connects them through typed ports (src/disagg/port.ts). Read from the sources, so that a
// new import that breaks a rule fails here.
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(dir, f));
}

/** The repository paths a source file imports or re-exports (static and dynamic, relative specifiers only). */
function importedPaths(file: string, text: string): string[] {
  const specs = [
    ...text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s*['"]([^'"]+)['"]/gm),
    ...text.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm),
    ...text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => m[1]);
  return specs.filter((s) => s.startsWith('.')).map((s) => relative(ROOT, resolve(ROOT, dirname(file), s)));
}

function violations(fromDir: string, forbidden: string): string[] {
  return sources(fromDir).flatMap((file) =>
    importedPaths(file, readFileSync(join(ROOT, file), 'utf8'))
      .filter((p) => p === forbidden || p.startsWith(`${forbidden}/`))
      .map((p) => `${file} imports ${p}`),
  );
}

t.test('the import scan sees static, re-export, side-effect and dynamic imports', async (t) => {
  const text = [
    "import type { A } from '../../actors/a.js';",
    "import {\n  B,\n  C,\n} from '../../actors/b.js';",
    "export { D } from '../../actors/d.js';",
    "import '../../actors/e.js';",
    "const f = await import('../../actors/f.js');",
    "import { G } from 'node:fs';",
  ].join('\n');
  t.same(importedPaths('src/disagg/x.ts', text), ['actors/a.js', 'actors/b.js', 'actors/d.js', 'actors/e.js', 'actors/f.js']);
});

t.test('src/disagg imports nothing from actors/', async (t) => {
  t.ok(sources('src/disagg').length > 0, 'src/disagg has sources');
  t.same(violations('src/disagg', 'actors'), []);
});

t.test('actors/ imports nothing from src/disagg', async (t) => {
  t.ok(sources('actors').length > 0, 'actors/ has sources');
  t.same(violations('actors', 'src/disagg'), []);
});
