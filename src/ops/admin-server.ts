import { createServer, type Server } from 'node:http';
import type { Logger } from '../log';
import type { Metrics } from './metrics';

/**
 * The HTTP admin port: /metrics for Prometheus, /healthz and /readyz for
 * probes that speak HTTP. Both health paths mean what gRPC health means for
 * the whole service (""): 200 while it can answer — also L1-only or with
 * Redis down — and 503 during shutdown. The body lists every component.
 */
export class AdminServer {
  private readonly server: Server;
  private boundAddress: string | undefined;

  constructor(
    private readonly listen: string,
    metrics: Metrics,
    health: () => Record<string, string>,
    log: Logger,
  ) {
    this.server = createServer((request, response) => {
      const path = (request.url ?? '/').split('?')[0];
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        response.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path === '/metrics') {
        metrics.render().then(
          ({ contentType, body }) => response.writeHead(200, { 'content-type': contentType }).end(body),
          (error: unknown) => {
            log.error({ err: error }, 'metrics rendering failed');
            response.writeHead(500).end();
          },
        );
        return;
      }
      if (path === '/healthz' || path === '/readyz') {
        const statuses = health();
        const serving = statuses[''] === 'SERVING';
        response
          .writeHead(serving ? 200 : 503, { 'content-type': 'application/json' })
          .end(JSON.stringify({ status: serving ? 'SERVING' : 'NOT_SERVING', components: statuses }));
        return;
      }
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found; try /metrics, /healthz or /readyz\n');
    });
  }

  /** Binds; resolves with host:port (the real port for :0). */
  async start(): Promise<string> {
    const index = this.listen.lastIndexOf(':');
    const host = this.listen.slice(0, index).replace(/^\[(.*)\]$/, '$1');
    const port = Number(this.listen.slice(index + 1));
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const address = this.server.address() as { port: number };
    this.boundAddress = `${this.listen.slice(0, index)}:${address.port}`;
    return this.boundAddress;
  }

  get address(): string | undefined {
    return this.boundAddress;
  }

  /** Idempotent. */
  async close(): Promise<void> {
    if (!this.server.listening) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
