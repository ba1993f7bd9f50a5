/** Runs fn and returns the `.code` and message of what it threw ('none' when the error has no code), or 'no error'. */
export function codeOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (err) {
    const e = err as { code?: string; message: string };
    return { code: e.code ?? 'none', message: e.message };
  }
  return { code: 'no error', message: '' };
}
