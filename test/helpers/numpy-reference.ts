// The float64 numpy references (test/reference/*.py) need the native addon for our side and python3 with numpy for
// theirs; a test that compares the two skips, saying which is missing, where either is not there.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { addonPath } from '../../src/engine/addon.js';

function hasNumpy(): boolean {
  try {
    execFileSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** tap's `skip` for a test against a numpy reference: false when it can run, else why not. */
export function numpyReferenceSkip(): string | false {
  return !existsSync(addonPath()) ? 'native addon not built' : !hasNumpy() ? 'python3 with numpy not available' : false;
}
