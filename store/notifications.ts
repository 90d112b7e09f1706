/**
 * The store's pub/sub subscriber: one connection of its own, subscribed to
 * every channel that a handler was registered for, calling each handler
 * with its channel's messages.
 */
import type { Redis } from 'ioredis';
import type { Connection } from './connection.js';

interface Handler {
  message: (message: string) => void;
  /** Called when messages may have been lost (the subscriber reconnected). */
  lost: (() => void) | undefined;
}

export class Notifications {
  private readonly handlers = new Map<string, Handler>();
  private client: Redis | undefined;
  private subscribed: Promise<unknown> | undefined;

  constructor(private readonly conn: Connection) {}

  /** Registers the handler of `channel`; all of them before start(). */
  on(channel: string, message: (message: string) => void, lost?: () => void): void {
    this.handlers.set(channel, { message, lost });
  }

  /** Subscribes (once); resolves when Redis confirmed, which waits for Redis to be reachable. */
  start(): Promise<unknown> {
    if (this.subscribed) return this.subscribed;
    const client = this.conn.open({
      // Subscriptions are not request-bound: queue them until connected, and resubscribe after reconnects.
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
      commandTimeout: undefined,
      enableAutoPipelining: false,
      lazyConnect: false,
    });
    // Notifications published while the subscriber was away are lost: each handler catches up.
    client.on('ready', () => {
      for (const h of this.handlers.values()) h.lost?.();
    });
    client.on('message', (channel: string, message: string) => {
      this.handlers.get(channel)?.message(message);
    });
    this.client = client;
    this.subscribed = client.subscribe(...this.handlers.keys());
    return this.subscribed;
  }

  close(): void {
    if (this.client && this.client.status !== 'end') this.client.disconnect();
  }
}
