import { defineConfig } from 'vitest/config';

/**
 * `npm run test:image` (scripts/image/test-image.sh): the image tests, which
 * need podman and the built image. Kept out of `npm test`.
 */
export default defineConfig({
  test: {
    include: ['test/image/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    maxWorkers: 1,
    reporters: ['default'],
  },
});
