/**
 * One inspector-protocol command to a Node process started with --inspect,
 * over its WebSocket (the URL it prints: "Debugger listening on ws://...").
 * Used to ask a sidecar process for a full GC before reading its memory.
 */
export async function inspectorCall(url: string, method: string): Promise<void> {
  const socket = new WebSocket(url);
  await new Promise<void>((resolve, reject) => {
    socket.onopen = () => socket.send(JSON.stringify({ id: 1, method }));
    socket.onmessage = (message) => {
      const reply = JSON.parse(String(message.data)) as { id?: number; error?: { message: string } };
      if (reply.id !== 1) return;
      socket.close();
      if (reply.error) reject(new Error(`${method}: ${reply.error.message}`));
      else resolve();
    };
    socket.onerror = () => reject(new Error(`the inspector at ${url} did not answer`));
  });
}
