import { Server, ServerCredentials, type ServerOptions } from '@grpc/grpc-js';
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { authInterceptor, type CallAuthenticator } from './auth';
import { HealthStatuses, type ServingStatus } from './health-service';

/** Health service names: "" is the whole server; components report under their own name. */
export const HEALTH_SERVICE_OVERALL = '';
export const HEALTH_SERVICE_CACHE = 'contextcache.v1.ContextCache';

export interface GrpcServerOptions {
  listen: string;
  /** A second address that serves only grpc.health.v1. */
  healthListen: string | undefined;
  maxMessageBytes: number;
  /**
   * When set, every call on the main address except grpc.health.v1 must
   * authenticate (server/auth.ts); the health-only address stays open.
   */
  auth?: CallAuthenticator | undefined;
  /** Told of each call refused UNAUTHENTICATED, by method name (metrics). */
  onAuthRefused?: ((method: string) => void) | undefined;
}

/**
 * Keepalive: the server pings idle connections so that Watch streams behind
 * proxies and NATs live for hours, and accepts client pings every 10 s.
 * No max connection age: it would cut long-lived streams.
 */
function serverOptions(maxMessageBytes: number): ServerOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 10_000,
  };
}

/** Removes a Unix socket file left by a process that died, but never one that still answers. */
async function removeStaleSocket(path: string): Promise<void> {
  if (!existsSync(path) || !lstatSync(path).isSocket()) return;
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (!alive) unlinkSync(path);
}

async function bind(server: Server, listen: string): Promise<string> {
  if (listen.startsWith('unix:')) await removeStaleSocket(listen.slice('unix:'.length).replace(/^\/\/(?=\/)/, ''));
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(listen, ServerCredentials.createInsecure(), (error, boundPort) => (error ? reject(error) : resolve(boundPort)));
  });
  return listen.startsWith('unix:') ? listen : `${listen.slice(0, listen.lastIndexOf(':'))}:${port}`;
}

/**
 * The gRPC server with the health service; callers add their services before
 * start. Optionally a second, health-only server: kubelet gRPC probes dial
 * the pod IP, while the API itself stays on loopback or a Unix socket.
 */
export class GrpcServer {
  readonly server: Server;
  readonly health = new HealthStatuses({ [HEALTH_SERVICE_OVERALL]: 'NOT_SERVING', [HEALTH_SERVICE_CACHE]: 'NOT_SERVING' });
  private readonly healthServer: Server | undefined;
  private boundAddress: string | undefined;
  private boundHealthAddress: string | undefined;
  private stopped = false;

  constructor(private readonly options: GrpcServerOptions) {
    const interceptors = options.auth === undefined ? [] : [authInterceptor(options.auth, options.onAuthRefused)];
    this.server = new Server({ ...serverOptions(options.maxMessageBytes), interceptors });
    this.health.addToServer(this.server);
    if (options.healthListen !== undefined) {
      this.healthServer = new Server(serverOptions(64 * 1024));
      this.health.addToServer(this.healthServer);
    }
  }

  /** Binds the addresses; resolves with the address clients dial (with the real port for :0). */
  async start(): Promise<string> {
    if (this.boundAddress !== undefined) throw new Error('GrpcServer.start called twice');
    this.boundAddress = await bind(this.server, this.options.listen);
    if (this.healthServer !== undefined) this.boundHealthAddress = await bind(this.healthServer, this.options.healthListen!);
    return this.boundAddress;
  }

  /** The health-only address with its real port, when configured. */
  get healthAddress(): string | undefined {
    return this.boundHealthAddress;
  }

  setHealth(service: string, status: ServingStatus): void {
    this.health.set(service, status);
  }

  /** Every health service name and its status, for /healthz and metrics. */
  healthStatuses(): Record<string, ServingStatus> {
    return this.health.all();
  }

  /** Stops accepting, lets calls finish within graceMs, then cuts what is left. Idempotent. */
  async stop(graceMs: number): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.healthServer?.forceShutdown();
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      force.unref();
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }
}
