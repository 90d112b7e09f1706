/** The client's part for the store's identity (api/routes/store.ts): `Client.store`. */
import type { Client } from './client.js';

/** GET /api/v1/store's data. */
export interface StoreView {
  id: string | null;
  created_at: string | null;
  replaces: string[];
  nodes_lost: { node: string; lost_id: string; found_id: string | null; since: string }[];
}

/** The store's identity and the operator's accept after a lost store (admin only). */
export class StoreApi {
  constructor(private readonly client: Client) {}

  async get(): Promise<StoreView> {
    return (await this.client.request<{ data: StoreView }>('GET', '/api/v1/store')).body.data;
  }

  /** Accepts this store in place of `lost` (default: every lost store the nodes report). */
  async accept(
    lost?: string[],
  ): Promise<{ id: string; created_at: string; replaces: string[]; accepted: string[] }> {
    return (
      await this.client.request<{
        data: { id: string; created_at: string; replaces: string[]; accepted: string[] };
      }>('POST', '/api/v1/store/accept', { body: lost === undefined ? {} : { lost } })
    ).body.data;
  }
}
