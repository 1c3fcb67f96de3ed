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
      redact: { paths: ['password', '*.password', 'redis.password', 'config.redis.password'], censor: '[redacted]' },
    },
    destination,
  );
}
