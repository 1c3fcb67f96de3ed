import { ConfigError, loadConfig } from './config';
import { createLogger } from './log';
import { Sidecar } from './sidecar';

/** Entry point: configuration, start, and a clean exit on SIGTERM or SIGINT. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    createLogger('info').fatal({ variable: error.variable }, `invalid configuration: ${error.message}`);
    process.exitCode = 2;
    return;
  }
  const log = createLogger(config.logLevel);
  const sidecar = await Sidecar.start(config, log);

  let signalled = false;
  const stop = (signal: NodeJS.Signals) => {
    if (signalled) {
      log.warn({ signal }, 'second signal: exiting without waiting');
      process.exit(1);
    }
    signalled = true;
    log.info({ signal }, 'signal received');
    sidecar.close().then(
      () => process.exit(0),
      (error: unknown) => {
        log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error: unknown) => {
  createLogger('info').fatal({ err: error }, 'start-up failed');
  process.exit(1);
});
