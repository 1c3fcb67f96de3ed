/** The Redis Cluster hash slot of a key (CRC16 of its hash tag or the whole key, mod 16384): the library ioredis itself uses. */
declare module 'cluster-key-slot' {
  function calculateSlot(key: string | Buffer): number;
  export = calculateSlot;
}
