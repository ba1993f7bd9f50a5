// Finding markers ("<think>", "<tool_call>", "[TOOL_CALLS]") in text that arrives in pieces: the parsers of reasoning
// and tool calls hand out text as soon as it cannot be the start of a marker, and hold back only a tail that is a
// proper prefix of one, so a marker split across chunks is still found and no other text waits.

/** The earliest marker in `text` at or after `from` (the longest one where several start at the same place). */
export function findMarker(text: string, markers: readonly string[], from = 0): { index: number; marker: string } | null {
  let best: { index: number; marker: string } | null = null;
  for (const marker of markers) {
    const index = text.indexOf(marker, from);
    if (index === -1) continue;
    if (best === null || index < best.index || (index === best.index && marker.length > best.marker.length)) best = { index, marker };
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper prefix of one of the markers. */
export function heldBackLength(text: string, markers: readonly string[]): number {
  let hold = 0;
  for (const marker of markers) {
    for (let k = Math.min(marker.length - 1, text.length); k > hold; k--) {
      if (text.endsWith(marker.slice(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}
