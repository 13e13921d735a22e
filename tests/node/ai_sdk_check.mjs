// The Vercel AI SDK against a live server, as its users point it at one: the OpenAI-compatible
// provider, and the OpenAI provider's chat model. Prints one JSON object of what each call gave
// (or the error it threw); tests/e2e/test_ai_sdk.py asserts on it. Greedy throughout, so a run's
// answers are the same each time.
//   node ai_sdk_check.mjs BASE_URL MODEL
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateObject, generateText, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, modelId] = process.argv.slice(2);
const providers = {
  compatible: createOpenAICompatible({ name: "atenea", baseURL, apiKey: "unused", includeUsage: true, supportsStructuredOutputs: true })(modelId),
  openai_chat: createOpenAI({ baseURL, apiKey: "unused" }).chat(modelId),
};
const prompt = "Name three colors.";
const weather = tool({ description: "The weather in a city", inputSchema: z.object({ city: z.string() }) });
const person = z.object({ name: z.string(), age: z.number().int() });

const checks = {
  text: async (model) => {
    const r = await generateText({ model, prompt, maxOutputTokens: 8, temperature: 0, maxRetries: 0 });
    return { text: r.text, finish: r.finishReason, input: r.usage.inputTokens, output: r.usage.outputTokens };
  },
  stream: async (model) => {
    const r = streamText({ model, prompt, maxOutputTokens: 8, temperature: 0, maxRetries: 0 });
    let text = "";
    let chunks = 0;
    for await (const piece of r.textStream) (text += piece), (chunks += 1);
    const usage = await r.usage;
    return { text, chunks, finish: await r.finishReason, output: usage.outputTokens };
  },
  object: async (model) => {
    const r = await generateObject({ model, schema: person, prompt: "Ann is 30.", maxOutputTokens: 64, temperature: 0, maxRetries: 0 });
    return { object: r.object, finish: r.finishReason };
  },
  tool_call: async (model) => {
    const r = await generateText({
      model,
      prompt: "What is the weather in Paris?",
      tools: { weather },
      toolChoice: { type: "tool", toolName: "weather" },
      maxOutputTokens: 64,
      temperature: 0,
      maxRetries: 0,
    });
    return { calls: r.toolCalls.map((c) => ({ name: c.toolName, input: c.input })), finish: r.finishReason };
  },
  streamed_tool_call: async (model) => {
    const r = streamText({
      model,
      prompt: "What is the weather in Rome?",
      tools: { weather },
      toolChoice: "required",
      maxOutputTokens: 64,
      temperature: 0,
      maxRetries: 0,
    });
    const parts = new Set();
    for await (const part of r.fullStream) parts.add(part.type);
    const calls = await r.toolCalls;
    return { calls: calls.map((c) => ({ name: c.toolName, input: c.input })), parts: [...parts], finish: await r.finishReason };
  },
};

const results = {};
for (const [name, model] of Object.entries(providers)) {
  results[name] = {};
  for (const [check, run] of Object.entries(checks)) {
    try {
      results[name][check] = await run(model);
    } catch (error) {
      results[name][check] = { error: String(error?.message ?? error), body: error?.responseBody ?? null };
    }
  }
}
console.log(JSON.stringify(results));
