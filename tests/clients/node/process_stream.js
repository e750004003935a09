// AudioRouter/ProcessStream from Node.js, with nothing but protos/gamaserving/router/v1/router.proto.
// Usage: node process_stream.js ADDRESS AUDIO_FILE PROMPT REQUEST_ID; prints one JSON line.
const path = require("path");
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, audioFile, prompt, requestId] = process.argv.slice(2);
const root = path.resolve(__dirname, "../../../protos");
const definition = loader.loadSync(path.join(root, "gamaserving/router/v1/router.proto"), {
  includeDirs: [root],
  keepCase: true,
  enums: String,
  defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).gamaserving.router.v1;
const client = new v1.AudioRouter(address, grpc.credentials.createInsecure());
const request = {
  audio: fs.readFileSync(audioFile),
  task: "TASK_DESCRIBE",
  prompt: prompt,
  request_id: requestId,
};
const pieces = [];
let result = null;
const call = client.ProcessStream(request, { deadline: Date.now() + 60000 });
call.on("data", (message) => {
  if (message.result) {
    result = message.result;
  } else {
    pieces.push(message.text);
  }
});
call.on("error", (err) => {
  console.error(`stream failed: ${err.code} ${err.details}`);
  process.exit(2);
});
call.on("end", () => {
  console.log(
    JSON.stringify({
      pieces: pieces,
      text: result && result.text,
      model: result && result.route.model,
      quality_passed: result && result.quality.passed,
      finish_reason: result && result.usage && result.usage.finish_reason,
      output_tokens: result && result.usage && result.usage.output_tokens,
    })
  );
});
