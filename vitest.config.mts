import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The image tests need podman and a built image: `npm run test:image` (vitest.image.config.mts).
    exclude: [...configDefaults.exclude, 'test/image/**'],
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores: run two test files at a time; each starts its own Redis and sidecars.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
