// How each tool-call format writes its calls, turned into (name, JSON arguments) pairs. These read one complete
// section of text (what the streaming parser in parser.ts cut out between the format's markers); a section that does
// not read as calls returns null and goes to the client as plain text.

export interface ParsedToolCall {
  name: string;
  /** The arguments as JSON text (OpenAI's `function.arguments`). */
  arguments: string;
}

/** What the request's `tools` say about one function's parameters, for formats that write values untyped. */
export type ParameterTypes = ReadonlyMap<string, ReadonlyMap<string, string>>; // function -> parameter -> JSON type

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** {"name": ..., "arguments" | "parameters": {...}} as most JSON formats write one call. */
function jsonCall(v: unknown): ParsedToolCall | null {
  if (!isRecord(v) || typeof v.name !== 'string' || v.name === '') return null;
  const args = v.arguments ?? v.parameters ?? {};
  if (typeof args === 'string') return parseJson(args) === undefined ? null : { name: v.name, arguments: args };
  if (!isRecord(args)) return null;
  return { name: v.name, arguments: JSON.stringify(args) };
}

function jsonCalls(v: unknown): ParsedToolCall[] | null {
  const list = Array.isArray(v) ? v : [v];
  if (list.length === 0) return null;
  const calls = list.map(jsonCall);
  return calls.every((c): c is ParsedToolCall => c !== null) ? calls : null;
}

/** One JSON call object, or an array of them. */
export function parseJsonSection(body: string): ParsedToolCall[] | null {
  const v = parseJson(body.trim());
  return v === undefined ? null : jsonCalls(v);
}

/** Llama 3: one JSON object, or several separated by ";". */
export function parseLlama3Section(body: string): ParsedToolCall[] | null {
  const whole = parseJsonSection(body);
  if (whole !== null) return whole;
  const calls: ParsedToolCall[] = [];
  for (const part of body.split(';')) {
    if (part.trim() === '') continue;
    const one = parseJsonSection(part);
    if (one === null) return null;
    calls.push(...one);
  }
  return calls.length > 0 ? calls : null;
}

/** Mistral after [TOOL_CALLS]: a JSON array of calls, or (v11 tokenizers) `name[ARGS]{...}` / `name{...}` per
 * [TOOL_CALLS] marker (the parser hands over the text after the first marker, later markers included). */
export function parseMistralSection(body: string): ParsedToolCall[] | null {
  const whole = parseJsonSection(body);
  if (whole !== null) return whole;
  const calls: ParsedToolCall[] = [];
  for (const part of body.split('[TOOL_CALLS]')) {
    if (part.trim() === '') continue;
    const m = /^\s*([A-Za-z_][\w.-]*)\s*(?:\[ARGS\])?\s*(\{[\s\S]*\})\s*$/.exec(part);
    const args = m === null ? undefined : parseJson(m[2] as string);
    if (m === null || !isRecord(args)) return null;
    calls.push({ name: m[1] as string, arguments: JSON.stringify(args) });
  }
  return calls.length > 0 ? calls : null;
}

/** Qwen3-Coder XML: <function=NAME><parameter=P>value</parameter>...</function>, one or more. A value is JSON when the
 * tool declares the parameter other than a string and the value parses, else the text itself. */
export function parseQwen3CoderSection(body: string, types: ParameterTypes): ParsedToolCall[] | null {
  const calls: ParsedToolCall[] = [];
  const fn = /<function=([^>\s]+)>([\s\S]*?)<\/function>/g;
  let m: RegExpExecArray | null;
  let rest = body;
  while ((m = fn.exec(body)) !== null) {
    const name = m[1] as string;
    calls.push({ name, arguments: JSON.stringify(Object.fromEntries(qwen3CoderParameters(m[2] as string, types.get(name)))) });
    rest = rest.replace(m[0], '');
  }
  return calls.length > 0 && rest.trim() === '' ? calls : null;
}

/** The closed <parameter=P>value</parameter> pairs of one function's text, in order, values typed as declared. */
export function qwen3CoderParameters(text: string, declared: ReadonlyMap<string, string> | undefined): [string, unknown][] {
  const out: [string, unknown][] = [];
  const param = /<parameter=([^>\s]+)>([\s\S]*?)<\/parameter>/g;
  let p: RegExpExecArray | null;
  while ((p = param.exec(text)) !== null) {
    // the format puts each value on its own lines: one newline either side is layout, not value
    const raw = (p[2] as string).replace(/^\n/, '').replace(/\n$/, '');
    const type = declared?.get(p[1] as string);
    const json = type === 'string' ? undefined : parseJson(raw);
    out.push([p[1] as string, json === undefined ? raw : json]);
  }
  return out;
}

/** Pythonic: [get_weather(city="Paris", days=3), other()] with Python literals as values. */
export function parsePythonicSection(body: string): ParsedToolCall[] | null {
  try {
    const reader = new PythonLiteralReader(body.trim());
    const calls = reader.callList();
    reader.expectEnd();
    return calls.length > 0 ? calls : null;
  } catch {
    return null;
  }
}

class PythonLiteralReader {
  private at = 0;

  constructor(private readonly s: string) {}

  callList(): ParsedToolCall[] {
    this.expect('[');
    const calls: ParsedToolCall[] = [];
    if (this.peek() === ']') {
      this.at++;
      return calls;
    }
    for (;;) {
      calls.push(this.call());
      if (this.peek() === ',') {
        this.at++;
        continue;
      }
      this.expect(']');
      return calls;
    }
  }

  expectEnd(): void {
    this.space();
    if (this.at !== this.s.length) throw new Error('trailing text');
  }

  private call(): ParsedToolCall {
    const name = this.identifier(true);
    this.expect('(');
    const args: Record<string, unknown> = {};
    if (this.peek() !== ')') {
      for (;;) {
        const key = this.identifier(false);
        this.expect('=');
        args[key] = this.value();
        if (this.peek() === ',') {
          this.at++;
          if (this.peek() === ')') break;
          continue;
        }
        break;
      }
    }
    this.expect(')');
    return { name, arguments: JSON.stringify(args) };
  }

  private value(): unknown {
    const c = this.peek();
    if (c === '"' || c === "'") return this.string();
    if (c === '[' || c === '(') {
      const close = c === '[' ? ']' : ')';
      this.at++;
      const list: unknown[] = [];
      while (this.peek() !== close) {
        list.push(this.value());
        if (this.peek() === ',') this.at++;
        else break;
      }
      this.expect(close);
      return list;
    }
    if (c === '{') {
      this.at++;
      const obj: Record<string, unknown> = {};
      while (this.peek() !== '}') {
        const key = this.value();
        if (typeof key !== 'string') throw new Error('dict key');
        this.expect(':');
        obj[key] = this.value();
        if (this.peek() === ',') this.at++;
        else break;
      }
      this.expect('}');
      return obj;
    }
    const m = /^(?:-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|True|False|None)/.exec(this.s.slice(this.at));
    if (m === null) throw new Error('value');
    this.at += m[0].length;
    return m[0] === 'True' ? true : m[0] === 'False' ? false : m[0] === 'None' ? null : Number(m[0]);
  }

  private string(): string {
    const quote = this.s[this.at] as string;
    this.at++;
    let out = '';
    const escapes: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"' };
    while (this.at < this.s.length && this.s[this.at] !== quote) {
      const ch = this.s[this.at] as string;
      if (ch === '\\') {
        const next = this.s[this.at + 1] ?? '';
        out += escapes[next] ?? next;
        this.at += 2;
      } else {
        out += ch;
        this.at++;
      }
    }
    this.expect(quote);
    return out;
  }

  private identifier(dotted: boolean): string {
    this.space();
    const m = (dotted ? /^[A-Za-z_][\w.]*/ : /^[A-Za-z_]\w*/).exec(this.s.slice(this.at));
    if (m === null) throw new Error('identifier');
    this.at += m[0].length;
    return m[0];
  }

  private peek(): string {
    this.space();
    return this.s[this.at] ?? '';
  }

  private space(): void {
    while (this.at < this.s.length && /\s/.test(this.s[this.at] as string)) this.at++;
  }

  private expect(ch: string): void {
    if (this.peek() !== ch) throw new Error(`expected ${ch}`);
    this.at++;
  }
}
