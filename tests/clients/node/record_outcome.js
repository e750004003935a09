// AudioRouter/RecordOutcome from Node.js: report what came of an answer, by its request id.
// Usage: node record_outcome.js ADDRESS REQUEST_ID METRIC VALUE
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, requestId, metric, value] = process.argv.slice(2);
const root = path.resolve(__dirname, "../../../protos");
const definition = loader.loadSync(path.join(root, "gamaserving/router/v1/router.proto"), {
  includeDirs: [root],
  keepCase: true,
});
const v1 = grpc.loadPackageDefinition(definition).gamaserving.router.v1;
const client = new v1.AudioRouter(address, grpc.credentials.createInsecure());
client.RecordOutcome(
  { request_id: requestId, metric: metric, value: Number(value) },
  { deadline: Date.now() + 5000 },
  (err) => {
    if (err) {
      console.error(`RecordOutcome failed: ${grpc.status[err.code]}: ${err.details}`);
      process.exit(2);
    }
    console.log(JSON.stringify({ recorded: { request_id: requestId, metric, value: Number(value) } }));
  }
);
