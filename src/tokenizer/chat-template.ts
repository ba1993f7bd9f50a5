// Chat templates (Jinja, as in tokenizer_config.json or GGUF tokenizer.chat_template) rendered with
// @huggingface/jinja, with the variables transformers' apply_chat_template provides.

import { Template } from '@huggingface/jinja';
import { LlmError } from '../errors.js';
import type { ChatMessage, ChatTemplateOptions } from './types.js';

function jsonOrText(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export class ChatTemplate {
  private readonly template: Template;

  constructor(
    source: string,
    private readonly specialTokens: { bos_token: string; eos_token: string },
    where: string,
  ) {
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new LlmError('LLM_ERR_TOKENIZER', `chat template of ${where} does not parse: ${(err as Error).message}`);
    }
  }

  render(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    try {
      return this.template.render({
        ...options.extraContext,
        messages: messages.map((m) => ({
          role: m.role,
          content: m.content,
          // templates render arguments as an object (`| tojson`), as transformers users pass them
          ...(m.tool_calls === undefined ? {} : { tool_calls: m.tool_calls.map((c) => ({ ...c, function: { name: c.function.name, arguments: jsonOrText(c.function.arguments) } })) }),
          ...(m.tool_call_id === undefined ? {} : { tool_call_id: m.tool_call_id }),
        })),
        add_generation_prompt: options.addGenerationPrompt ?? true,
        ...this.specialTokens,
      });
    } catch (err) {
      throw new LlmError('LLM_ERR_BAD_REQUEST', `chat template failed: ${(err as Error).message}`);
    }
  }
}
