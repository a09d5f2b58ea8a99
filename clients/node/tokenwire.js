// @ts-check
/**
 * A small tokenwire client for Node.js on @grpc/grpc-js. The contract is
 * loaded at run time from the .proto with @grpc/proto-loader: no generated
 * code, field names in lowerCamelCase (`maxTokens`), enums as their names.
 *
 *   import { connect, generate } from "./tokenwire.js";
 *
 *   const client = connect("127.0.0.1:50051");
 *   const { call, done } = generate(client, { prompt: "Tell me about rivers",
 *     stopping: { maxTokens: 64 } }, { deadlineMs: 10_000, onText: (t) => process.stdout.write(t) });
 *   // call.cancel() stops it at any time: the server aborts the engine request.
 *   const result = await done;   // { finishReasons, usage } or throws a grpc error
 *   client.close();
 */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** The contract, as checked in: protos/tokenwire/v1/generation.proto. */
export const PROTO_ROOT = fileURLToPath(new URL("../../protos", import.meta.url));

/** @type {grpc.ServiceClientConstructor | undefined} */
let serviceClient;

/** The GenerationService client constructor, loaded from the .proto once. */
export function loadGenerationService() {
  if (serviceClient === undefined) {
    const definition = protoLoader.loadSync("tokenwire/v1/generation.proto", {
      includeDirs: [PROTO_ROOT],
      longs: String, // uint64 seeds: strings, not lossy JS numbers
      enums: String, // finishReason: "FINISH_REASON_LENGTH"
      defaults: true, // unset fields read as their zero values (index 0)
      oneofs: true,
    });
    const pkg = /** @type {any} */ (grpc.loadPackageDefinition(definition));
    serviceClient = /** @type {grpc.ServiceClientConstructor} */ (pkg.tokenwire.v1.GenerationService);
  }
  return serviceClient;
}

/**
 * @typedef {object} ConnectOptions
 * @property {string} [caFile] use TLS: PEM CA that signed the server certificate
 * @property {string} [certFile] mutual TLS: this client's PEM certificate
 * @property {string} [keyFile] mutual TLS: its PEM key
 * @property {Record<string, string | number>} [channelOptions] e.g. a round_robin service config
 */

/**
 * A GenerationService client for `target` ("host:port", or "dns:///name:port"
 * to resolve every address of a headless Service).
 * @param {string} target
 * @param {ConnectOptions} [options]
 * @returns {grpc.Client & Record<string, Function>}
 */
export function connect(target, options = {}) {
  const Service = loadGenerationService();
  const credentials = options.caFile
    ? grpc.credentials.createSsl(
        readFileSync(options.caFile),
        options.keyFile ? readFileSync(options.keyFile) : null,
        options.certFile ? readFileSync(options.certFile) : null,
      )
    : grpc.credentials.createInsecure();
  return /** @type {any} */ (new Service(target, credentials, options.channelOptions ?? {}));
}

/**
 * @typedef {object} GenerateOptions
 * @property {number} [deadlineMs] give up after this long: DEADLINE_EXCEEDED, and the
 *   server aborts the engine request
 * @property {string} [apiKey] sent as `authorization: Bearer <key>`
 * @property {(text: string, message: any) => void} [onText] called with each new text
 */

/**
 * Start a streamed Generate.
 * @param {grpc.Client & Record<string, Function>} client from connect()
 * @param {object} request a GenerateRequest, e.g. `{ prompt, sampling: { seed: "7" },
 *   stopping: { maxTokens: 64 } }`
 * @param {GenerateOptions} [options]
 * @returns {{ call: grpc.ClientReadableStream<any>, done: Promise<{finishReasons: string[], usage: any}> }}
 *   `call.cancel()` ends it early; `done` then rejects with code grpc.status.CANCELLED.
 */
export function generate(client, request, options = {}) {
  const metadata = new grpc.Metadata();
  if (options.apiKey) metadata.set("authorization", `Bearer ${options.apiKey}`);
  /** @type {grpc.CallOptions} */
  const callOptions = {};
  if (options.deadlineMs !== undefined) callOptions.deadline = Date.now() + options.deadlineMs;
  const call = client.Generate(request, metadata, callOptions);
  const done = new Promise((resolve, reject) => {
    /** @type {string[]} */
    const finishReasons = [];
    /** @type {any} */
    let usage = null;
    call.on("data", (/** @type {any} */ message) => {
      if (message.text) options.onText?.(message.text, message);
      if (message.finishReason !== "FINISH_REASON_UNSPECIFIED") {
        finishReasons[message.index] = message.finishReason;
      }
      if (message.usage) usage = message.usage;
    });
    call.on("error", reject);
    call.on("end", () => resolve({ finishReasons, usage }));
  });
  return { call, done };
}

/** The status code's name: `statusName(err.code)` is "DEADLINE_EXCEEDED". */
export function statusName(/** @type {number} */ code) {
  return grpc.status[code] ?? String(code);
}

export { grpc };
