import pino from 'pino';
import type { LogLevel } from './config';

export type Logger = pino.Logger;

/**
 * Structured JSON logs on stdout. One line per state change, never per
 * request at info; secrets are redacted by path in case a caller logs a
 * configuration object.
 */
export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'context-cache' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: ['password', '*.password', 'redis.password', 'config.redis.password', 'token', '*.token', 'auth.token', 'config.auth.token'], censor: '[redacted]' },
    },
    // Synchronous writes: the sidecar logs state changes, not requests, so they are rare; and an
    // asynchronous write still in flight at process.exit can land after (or without) later lines.
    destination ?? pino.destination({ fd: 1, sync: true }),
  );
}
