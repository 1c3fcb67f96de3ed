import { describe, expect, it } from 'vitest';
import { CONFIG_VARIABLES, ConfigError, loadConfig } from '../../src/config';

function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('CONTEXT_CACHE_LOCK_REDIS_URLS', () => {
  it('is documented, and unset means "the main Redis" (lockRedis undefined)', () => {
    expect(CONFIG_VARIABLES.CONTEXT_CACHE_LOCK_REDIS_URLS.default).toBe('(the main Redis)');
    expect(loadConfig({}).lockRedis).toBeUndefined();
    expect(loadConfig({ REDIS_URL: 'redis://cache:6379' }).lockRedis).toBeUndefined();
    expect(loadConfig({ CONTEXT_CACHE_LOCK_REDIS_URLS: '  ' }).lockRedis).toBeUndefined();
  });

  it('parses each URL like REDIS_URL, with REDIS_PASSWORD and REDIS_DB as fallbacks', () => {
    const { lockRedis } = loadConfig({
      CONTEXT_CACHE_LOCK_REDIS_URLS: 'redis://lock-a:6379, rediss://user:p%40ss@lock-b:6380/2 ,redis://[::1]:6381',
      REDIS_PASSWORD: 'shared',
      REDIS_DB: '1',
    });
    expect(lockRedis).toHaveLength(3);
    expect(lockRedis![0]).toMatchObject({ host: 'lock-a', port: 6379, password: 'shared', db: 1, tls: false });
    expect(lockRedis![1]).toMatchObject({ host: 'lock-b', port: 6380, username: 'user', password: 'p@ss', db: 2, tls: true });
    expect(lockRedis![2]).toMatchObject({ host: '::1', port: 6381 });
    expect(lockRedis!.map((m) => m.describe).join(' ')).not.toContain('p@ss');
  });

  it.each([
    ['redis://a:1,not a url', /entry 2 of 2: is not a URL/],
    ['redis://a:1,http://b:2', /entry 2 of 2: scheme "http:" is not supported/],
    ['redis://a:1/zero', /entry 1 of 1: database "zero" is not a number/],
    ['redis://a:1,,redis://b:2', /entry 2 of 3: is empty/],
    ['redis://a:1,redis://b:2,redis://A:1/0', /entries 1 and 3 name the same Redis/],
  ])('refuses %j naming the variable', (value, message) => {
    const error = configError({ CONTEXT_CACHE_LOCK_REDIS_URLS: value });
    expect(error.variable).toBe('CONTEXT_CACHE_LOCK_REDIS_URLS');
    expect(error.message).toMatch(message);
  });

  it('never repeats a URL (which may carry a password) in its errors', () => {
    const error = configError({ CONTEXT_CACHE_LOCK_REDIS_URLS: 'redis://u:hunter2@a:1,ftp://u:hunter2@b:2' });
    expect(error.message).not.toContain('hunter2');
  });

  it('keeps the REDIS_URL messages as they were', () => {
    const error = configError({ REDIS_URL: 'http://redis:6379' });
    expect(error.variable).toBe('REDIS_URL');
    expect(error.message).toBe('REDIS_URL: scheme "http:" is not supported; use redis:// or rediss:// (TLS)');
  });
});
