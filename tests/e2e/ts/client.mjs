// The official TypeScript SDK client, driven by the end-to-end tests.
// Usage: node client.mjs '<scenario JSON>'; prints one JSON line with what it observed.
//
// scenario.target: {url, token?} for Streamable HTTP, or {command: [...]} for stdio.
// scenario.run:    "list_and_echo" | "progress" | "held" | "task" | "cancel"
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const scenario = JSON.parse(process.argv[2]);

function transportFor(target) {
  if (target.command) {
    const [command, ...args] = target.command;
    return new StdioClientTransport({ command, args, stderr: "ignore" });
  }
  const headers = target.token ? { Authorization: `Bearer ${target.token}` } : {};
  return new StreamableHTTPClientTransport(new URL(target.url), { requestInit: { headers } });
}

const client = new Client({ name: "tollgate-e2e-ts", version: "1.0.0" }, { capabilities: scenario.capabilities ?? {} });
const transport = transportFor(scenario.target);
await client.connect(transport);
const out = { protocolVersion: transport.protocolVersion ?? null };

try {
  if (scenario.run === "list_and_echo") {
    const tools = await client.listTools();
    out.tools = tools.tools.map((t) => ({ name: t.name, inputSchema: t.inputSchema, annotations: t.annotations ?? null }));
    out.echo = await client.callTool({ name: "echo", arguments: { message: scenario.message ?? "hello" } });
  } else if (scenario.run === "progress") {
    const progress = [];
    out.result = await client.callTool(
      { name: scenario.tool, arguments: scenario.arguments },
      undefined,
      { onprogress: (p) => progress.push(p.progress), timeout: 30000 },
    );
    out.progress = progress;
  } else if (scenario.run === "held") {
    // A call held for approval longer than the request timeout: progress keeps it alive.
    const progress = [];
    const started = Date.now();
    try {
      out.result = await client.callTool({ name: scenario.tool, arguments: scenario.arguments }, undefined, {
        timeout: scenario.timeoutMs,
        resetTimeoutOnProgress: scenario.resetTimeoutOnProgress ?? true,
        onprogress: (p) => progress.push(p.progress),
      });
    } catch (e) {
      out.error = String(e);
    }
    out.waitedMs = Date.now() - started;
    out.progress = progress;
  } else if (scenario.run === "task") {
    // A task-augmented call: the SDK creates a task, polls tasks/get, then fetches tasks/result.
    const tools = await client.listTools();
    out.taskSupport = Object.fromEntries(tools.tools.map((t) => [t.name, t.execution?.taskSupport ?? null]));
    out.messages = [];
    const stream = client.experimental.tasks.callToolStream(
      { name: scenario.tool, arguments: scenario.arguments },
      undefined,
      { timeout: scenario.timeoutMs ?? 60000 },
    );
    for await (const m of stream) {
      out.messages.push({ type: m.type, status: m.task?.status ?? null, statusMessage: m.task?.statusMessage ?? null });
      if (m.type === "result") out.result = m.result;
      if (m.type === "error") out.error = String(m.error);
      if (m.type === "taskCreated") out.taskId = m.task.taskId;
    }
  } else if (scenario.run === "cancel") {
    const controller = new AbortController();
    const call = client.callTool({ name: scenario.tool, arguments: scenario.arguments }, undefined, { signal: controller.signal });
    await new Promise((r) => setTimeout(r, scenario.cancelAfterMs ?? 500));
    controller.abort("test cancels the call");
    try {
      await call;
      out.cancelled = false;
    } catch (e) {
      out.cancelled = true;
      out.error = String(e);
    }
    // Give the cancellation notification time to reach the upstream before closing.
    await new Promise((r) => setTimeout(r, 500));
  } else {
    throw new Error(`unknown scenario ${scenario.run}`);
  }
} finally {
  await client.close();
}
console.log(JSON.stringify(out));
