import { BinaryWriter } from '@bufbuild/protobuf/wire';
import type { NodeRecord } from '../context/node';
import { Node } from '../gen/contextcache/v1/context_cache';
import { nodeToProto } from './watch';

/**
 * Responses that carry many nodes (BuildContext, GetSessionNodes) are the
 * sidecar's hot path. A node's protobuf encoding is computed once, the first
 * time it is served, and kept for as long as the node object lives (it is
 * shared by every L1 state of its session); responses are then assembled by
 * concatenation. Protobuf allows it: an embedded message is a length-
 * delimited field, and fields may come in any order.
 */
const encodedNodes = new WeakMap<NodeRecord, Uint8Array>();

export function encodedNode(node: NodeRecord): Uint8Array {
  let bytes = encodedNodes.get(node);
  if (bytes === undefined) {
    bytes = Node.encode(nodeToProto(node)).finish();
    encodedNodes.set(node, bytes);
  }
  return bytes;
}

/** Appends `repeated Node` at `fieldNumber`. */
export function writeNodes(writer: BinaryWriter, fieldNumber: number, nodes: readonly NodeRecord[]): BinaryWriter {
  for (const node of nodes) writer.uint32((fieldNumber << 3) | 2).bytes(encodedNode(node));
  return writer;
}

/** The bytes of a response: `head` (the other fields, encoded as usual) followed by `tail` fields. */
export function joinEncoded(head: Uint8Array, tail: BinaryWriter): Buffer {
  const rest = tail.finish();
  return Buffer.concat([head, rest], head.length + rest.length);
}

export { BinaryWriter };

type MethodDefinitions = Record<string, { responseSerialize: (value: never) => Buffer }>;

/**
 * The service definition with the response serializer of `methods` passing
 * pre-encoded Buffers through (and encoding anything else as generated).
 */
export function acceptPreEncoded<S extends MethodDefinitions>(service: S, methods: readonly (keyof S)[]): S {
  const copy: Record<string, unknown> = { ...service };
  for (const method of methods) {
    const definition = service[method]!;
    const serialize = definition.responseSerialize as (value: unknown) => Buffer;
    copy[method as string] = { ...definition, responseSerialize: (value: unknown) => (Buffer.isBuffer(value) ? value : serialize(value)) };
  }
  return copy as S;
}
