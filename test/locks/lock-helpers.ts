import type { StatusObject } from '@grpc/grpc-js';
import type { AcquireLockResponse, ContextCacheClient, EventStream, HoldLockResponse } from '../../src/client';
import { rejectionOf } from '../helpers/wait';

/** A protobuf Duration from milliseconds. */
export function ms(milliseconds: number): { seconds: number; nanos: number } {
  return { seconds: Math.floor(milliseconds / 1000), nanos: (milliseconds % 1000) * 1e6 };
}

/** The gRPC status code a call fails with (and its message), failing the test when it succeeds. */
export async function failure(call: Promise<unknown>): Promise<{ code: number | undefined; details: string | undefined }> {
  const error = await rejectionOf(call);
  return { code: error.code, details: error.details };
}

/** One AcquireLock that resolves undefined instead of failing when the lock is busy (ABORTED). */
export async function tryAcquire(client: ContextCacheClient, resource: string, ttlMs: number): Promise<AcquireLockResponse | undefined> {
  try {
    return await client.acquireLock({ resource, ttl: ms(ttlMs) });
  } catch (error) {
    if ((error as { code?: number }).code === 10) return undefined;
    throw error;
  }
}

/** Acquire (waiting), run `body`, release: the lock-guarded critical section of the contention tests. */
export async function withLock<T>(client: ContextCacheClient, resource: string, body: (lock: AcquireLockResponse) => Promise<T>): Promise<T> {
  const lock = await client.acquireLock({ resource, ttl: ms(10_000), waitTimeout: ms(20_000) });
  try {
    return await body(lock);
  } finally {
    await client.releaseLock({ resource, token: lock.token });
  }
}

/** Records a HoldLock stream: every message, and the final status once it ends. */
export class HoldRecorder {
  readonly messages: HoldLockResponse[] = [];
  status: StatusObject | undefined;

  constructor(readonly stream: EventStream<HoldLockResponse>) {
    stream.call.on('data', (message: HoldLockResponse) => this.messages.push(message));
    // A stream ending with a non-OK status also emits 'error'; 'status' reports it.
    stream.call.on('error', () => undefined);
    stream.call.on('status', (status: StatusObject) => (this.status = status));
  }

  get first(): HoldLockResponse | undefined {
    return this.messages[0];
  }

  get last(): HoldLockResponse | undefined {
    return this.messages[this.messages.length - 1];
  }

  cancel(): void {
    this.stream.cancel();
  }
}

/** Whether the lock is free right now: takes it once (no wait) and gives it straight back. */
export async function isFree(client: ContextCacheClient, resource: string): Promise<boolean> {
  const lock = await tryAcquire(client, resource, 1000);
  if (lock === undefined) return false;
  await client.releaseLock({ resource, token: lock.token });
  return true;
}
