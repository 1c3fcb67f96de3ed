import { MAX_LEASE_TTL_MS } from '../cache/leases';

/**
 * The stored tag field of an entry: the tags between separators,
 * `\x1f<tag>\x1f<tag>\x1f` (so a script finds a tag with one plain search),
 * or '' for none. Tags may not contain the separator (validated at the edge).
 */
export const TAG_SEPARATOR = '\x1f';

/** Reads a tag field as entry-set.ts writes it. */
export function parseTagField(field: string): string[] {
  return field === '' ? [] : field.slice(1, -1).split(TAG_SEPARATOR);
}

/** Tag invalidation stamps outlive every lease granted before them. */
export const TAG_STAMP_TTL_MS = MAX_LEASE_TTL_MS;
