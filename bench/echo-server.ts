/**
 * The bare grpc-js echo in a process of its own: the cross-process floor of
 * the sidecar benchmarks (bench/echo.ts starts it).
 *
 * Usage: tsx bench/echo-server.ts <address> <payload bytes>
 * stdout: "ready" once listening; it stops when its stdin closes.
 */
import { startEcho } from './echo';

const [address, bytes] = process.argv.slice(2);
void startEcho(Buffer.alloc(Number(bytes), 0x5a), address!).then((server) => {
  console.log('ready');
  process.stdin.resume();
  process.stdin.on('end', () => void server.stop().then(() => process.exit(0)));
});
