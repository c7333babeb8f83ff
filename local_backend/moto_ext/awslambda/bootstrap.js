// The local Lambda runtime's Node.js bootstrap: loads the function's handler from
// LAMBDA_TASK_ROOT and calls it once with the event, as the managed nodejs runtime does.
// argv: <handler "file.export"> <event json file> <result json file>
// The handler's outcome goes to the result file: {"ok": true, "payload": ...} or
// {"ok": false, "errorType", "errorMessage", "trace"}.
"use strict";
const fs = require("fs");
const path = require("path");
const http = require("http");
const https = require("https");
const { pathToFileURL } = require("url");

const [handlerSpec, eventFile, resultFile] = process.argv.slice(2);
const taskRoot = process.env.LAMBDA_TASK_ROOT;
const deadline = Date.now() + Number(process.env.EK_LAMBDA_TIMEOUT_MS || 3000);

// CloudFormation's response URL: the providers PUT to it with `https.request({hostname, path})`
// (no port). Ours is a loopback HTTP collector; send those requests there, nothing else.
const responsePrefix = process.env.EK_CFN_RESPONSE_PREFIX || "";
const responsePort = Number(process.env.EK_CFN_RESPONSE_PORT || 0);
const originalRequest = https.request;
https.request = function request(options, ...rest) {
  let opts = options;
  if (typeof opts === "string" || opts instanceof URL) opts = new URL(String(opts));
  const host = opts.hostname || opts.host;
  const p = opts.pathname !== undefined ? opts.pathname + (opts.search || "") : opts.path;
  if (responsePort && host === "127.0.0.1" && String(p || "").startsWith(responsePrefix)) {
    const { protocol, agent, ...plain } = opts instanceof URL ? { hostname: host, path: p } : opts;
    return http.request({ ...plain, hostname: "127.0.0.1", port: responsePort, path: p }, ...rest);
  }
  return originalRequest.call(https, options, ...rest);
};

// `*.localhost` is loopback (RFC 6761); Node's resolver does not know it, and the SDK's S3
// client addresses buckets as `<bucket>.localhost:<port>` against the local endpoint.
const dns = require("dns");
const originalLookup = dns.lookup;
dns.lookup = function lookup(hostname, options, callback) {
  if (typeof hostname === "string" && hostname.endsWith(".localhost")) {
    const cb = typeof options === "function" ? options : callback;
    const opts = typeof options === "object" && options !== null ? options : {};
    if (opts.all) return process.nextTick(cb, null, [{ address: "127.0.0.1", family: 4 }]);
    return process.nextTick(cb, null, "127.0.0.1", 4);
  }
  return originalLookup.call(dns, hostname, options, callback);
};

function write(result) {
  fs.writeFileSync(resultFile, JSON.stringify(result));
}

function failure(err) {
  const e = err instanceof Error ? err : new Error(typeof err === "string" ? err : JSON.stringify(err));
  return {
    ok: false,
    errorType: e.name || "Error",
    errorMessage: e.message,
    trace: String(e.stack || "").split("\n"),
  };
}

async function load() {
  const dot = handlerSpec.lastIndexOf(".");
  if (dot < 1) throw new Error(`Bad handler ${handlerSpec}: expected FILE.EXPORT`);
  const modulePath = path.resolve(taskRoot, handlerSpec.slice(0, dot));
  const exportName = handlerSpec.slice(dot + 1);
  let mod;
  for (const ext of [".js", ".cjs", ".mjs", ""]) {
    if (fs.existsSync(modulePath + ext) && fs.statSync(modulePath + ext).isFile()) {
      mod = ext === ".mjs" ? await import(pathToFileURL(modulePath + ext).href) : require(modulePath + ext);
      break;
    }
  }
  if (mod === undefined) {
    const err = new Error(`Cannot find module '${handlerSpec.slice(0, dot)}'`);
    err.name = "Runtime.ImportModuleError";
    throw err;
  }
  const fn = mod[exportName] || (mod.default && mod.default[exportName]);
  if (typeof fn !== "function") {
    const err = new Error(`${handlerSpec} is undefined or not exported`);
    err.name = "Runtime.HandlerNotFound";
    throw err;
  }
  return fn;
}

async function main() {
  const event = JSON.parse(fs.readFileSync(eventFile, "utf8"));
  const context = {
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: process.env.EK_LAMBDA_FUNCTION_ARN,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: process.env.EK_LAMBDA_REQUEST_ID,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
  let handler;
  try {
    handler = await load();
  } catch (err) {
    write(failure(err));
    return;
  }
  let viaPromise = false;
  const outcome = await new Promise((resolve) => {
    const done = (err, payload) =>
      resolve(err ? failure(err) : { ok: true, payload: payload === undefined ? null : payload });
    context.done = done;
    context.succeed = (payload) => done(null, payload);
    context.fail = (err) => done(err || new Error("handled"));
    try {
      const ret = handler(event, context, done);
      if (ret && typeof ret.then === "function") {
        viaPromise = true;
        ret.then((p) => done(null, p), (e) => done(e));
      }
    } catch (err) {
      done(err);
    }
  });
  write(outcome);
  // An async handler's invocation ends when its promise settles (Lambda freezes the rest); a
  // callback handler's when the event loop is empty, unless it said not to wait.
  if (viaPromise || !context.callbackWaitsForEmptyEventLoop) process.exit(0);
}

main().catch((err) => {
  write(failure(err));
  process.exit(0);
});
