#!/usr/bin/env node
// @ts-check
/**
 * Stream a generation to stdout as it arrives.
 *
 *   node generate.js "Tell me about rivers" --target 127.0.0.1:50051 --max-tokens 64 --deadline 10
 *
 * Ctrl-C, or --cancel-after N (messages), cancels the call mid-stream: the
 * server aborts the engine request at once. Exit status: 0 finished or
 * cancelled by us, 4 deadline exceeded, 1 any other error (its gRPC status on stderr).
 * --target and --api-key default to $TOKENWIRE_TARGET and $TOKENWIRE_API_KEY, as in
 * the Python `tokenwire` CLI.
 */

import { parseArgs } from "node:util";

import { connect, generate, grpc, statusName } from "./tokenwire.js";

const USAGE = `usage: node generate.js PROMPT [--target HOST:PORT] [--max-tokens N] [--seed N]
  [--ignore-eos] [--deadline SECONDS] [--cancel-after MESSAGES]
  [--ca-file PEM [--cert-file PEM --key-file PEM]] [--api-key KEY]`;

function parse() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      target: { type: "string", default: process.env.TOKENWIRE_TARGET ?? "127.0.0.1:50051" },
      "max-tokens": { type: "string" },
      seed: { type: "string" },
      "ignore-eos": { type: "boolean", default: false },
      deadline: { type: "string" },
      "cancel-after": { type: "string" },
      "ca-file": { type: "string" },
      "cert-file": { type: "string" },
      "key-file": { type: "string" },
      "api-key": { type: "string", default: process.env.TOKENWIRE_API_KEY },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help || positionals.length !== 1) {
    console.error(USAGE);
    process.exit(values.help ? 0 : 2);
  }
  return { values, prompt: positionals[0] };
}

async function main() {
  const { values, prompt } = parse();
  const client = connect(values.target, {
    caFile: values["ca-file"],
    certFile: values["cert-file"],
    keyFile: values["key-file"],
  });
  /** @type {Record<string, any>} */
  const request = { prompt, stopping: { ignoreEos: values["ignore-eos"] } };
  if (values["max-tokens"]) request.stopping.maxTokens = Number(values["max-tokens"]);
  if (values.seed) request.sampling = { seed: values.seed };

  const cancelAfter = values["cancel-after"] ? Number(values["cancel-after"]) : Infinity;
  let messages = 0;
  let cancelledByUs = false;
  const { call, done } = generate(client, request, {
    deadlineMs: values.deadline ? Number(values.deadline) * 1000 : undefined,
    apiKey: values["api-key"],
    onText: (text) => process.stdout.write(text),
  });
  const cancel = () => {
    cancelledByUs = true;
    call.cancel();
  };
  call.on("data", () => {
    messages += 1;
    if (messages >= cancelAfter) cancel();
  });
  process.once("SIGINT", cancel);

  try {
    const { finishReasons, usage } = await done;
    process.stdout.write("\n");
    console.error(`[finished: ${finishReasons.join(",")}; ${usage?.completionTokens ?? 0} tokens]`);
    return 0;
  } catch (error) {
    const err = /** @type {grpc.ServiceError} */ (error);
    process.stdout.write("\n");
    if (err.code === grpc.status.CANCELLED && cancelledByUs) {
      console.error(`[cancelled after ${messages} messages]`);
      return 0;
    }
    console.error(`[${statusName(err.code)}: ${err.details}]`);
    return err.code === grpc.status.DEADLINE_EXCEEDED ? 4 : 1;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
