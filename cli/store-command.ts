/**
 * egressd store status | accept [--lost ID]...: the store's identity, the
 * nodes whose agent lost its store, and the operator's accept after a lost
 * store (api/routes/store.ts). Accept only after the computers and policies
 * were PUT again: the agents then detach every computer the store lacks.
 */
import { EgressdError } from '../policy/errors.js';
import { type CommandContext, client } from './commands.js';

const USAGE = 'usage: egressd store status | accept [--lost STORE_ID]... [--json]';

export async function storeCommand(ctx: CommandContext, args: string[], flags: Record<string, unknown>) {
  const [action] = args;
  const lost = flags['lost'] as string[] | undefined;
  if (action !== 'status' && action !== 'accept') throw new EgressdError('USAGE', USAGE);
  if (action === 'status' && lost !== undefined)
    throw new EgressdError('USAGE', `--lost goes with store accept\n${USAGE}`);
  const api = client(ctx);
  if (action === 'status') {
    const s = await api.store.get();
    const lines = [
      `store:     ${s.id ?? '(no identity yet)'}${s.created_at ? ` (made ${s.created_at})` : ''}`,
      `replaces:  ${s.replaces.length === 0 ? '(none)' : s.replaces.join(' ')}`,
      ...(s.nodes_lost.length === 0
        ? ['lost:      no node reports its store lost']
        : [
            `lost:      ${s.nodes_lost.length} node${s.nodes_lost.length === 1 ? '' : 's'} keep what they enforce and follow nothing:`,
            ...s.nodes_lost.map(
              (n) =>
                `  ${n.node}: followed ${n.lost_id}, found ${n.found_id ?? 'no identity'}, since ${n.since}`,
            ),
            'PUT every computer and policy again from the control plane, then: egressd store accept',
          ]),
    ];
    if (ctx.json) ctx.out(JSON.stringify(s, null, 2));
    else for (const line of lines) ctx.out(line);
    return;
  }
  const accepted = await api.store.accept(lost);
  if (ctx.json) ctx.out(JSON.stringify(accepted, null, 2));
  else
    ctx.out(
      `store ${accepted.id} accepted in place of ${accepted.accepted.join(', ')}: their agents follow it now (versions start again; computers it lacks are detached)`,
    );
}
