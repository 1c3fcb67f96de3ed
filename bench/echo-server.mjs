// A bare grpc-js server in its own process: the floor a sidecar is compared
// with. One unary method, /echo.Echo/Get, whose (de)serializers pass Buffers
// through and whose handler answers a fixed payload of the given size. No
// protobuf, no logic. Plain JavaScript run by node (no TypeScript loader), so
// its memory is grpc-js's and Node's own.
//
// Usage: node bench/echo-server.mjs <address> <payload bytes>
// stdout: "ready <address>"; stdin: "stats" -> one JSON line (memory, CPU).
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Server, ServerCredentials } = require('@grpc/grpc-js');

const [address, size] = process.argv.slice(2);
const payload = Buffer.alloc(Number(size ?? 1024), 'x');
const pass = (value) => value;
const server = new Server();
server.addService(
  { get: { path: '/echo.Echo/Get', requestStream: false, responseStream: false, requestSerialize: pass, requestDeserialize: pass, responseSerialize: pass, responseDeserialize: pass } },
  { get: (_call, callback) => callback(null, payload) },
);
server.bindAsync(address, ServerCredentials.createInsecure(), (error, port) => {
  if (error) throw error;
  console.log(`ready ${address.startsWith('unix:') ? address : address.replace(/:0$/, `:${port}`)}`);
});
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line !== 'stats') return;
  const memory = process.memoryUsage();
  const cpu = process.cpuUsage();
  console.log(JSON.stringify({ rss: memory.rss, heapUsed: memory.heapUsed, heapTotal: memory.heapTotal, cpuUs: cpu.user + cpu.system }));
});
process.stdin.on('end', () => server.forceShutdown());
