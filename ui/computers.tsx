/**
 * The computers the session may see: filter, sort by any column, pages of
 * PAGE_SIZE rows (thousands of computers stay responsive: they are filtered
 * and sorted in memory, and only a page is in the DOM). The list is read
 * whole (up to MAX_PAGES of 1,000) on opening and every LIST_EVERY_MS, each
 * computer with its denials of the last minute (GET /api/v1/computers
 * ?include=denials_1m, counted by the API up to its cap): sorting by them
 * covers every row read, not only the page shown.
 */
import { useMemo, useState } from 'preact/hooks';
import { type ComputerItem, errorText, listAllComputers, type SessionView } from './api.js';
import { filterComputers, type Sort, type SortKey, sortComputers } from './model.js';
import { href, Notice, StateBadge, usePoll, ViewTitle, versionText } from './parts.js';

const PAGE_SIZE = 50;
const MAX_PAGES = 20;
const LIST_EVERY_MS = 10_000;

const COLUMNS: Array<{ key: SortKey; label: string }> = [
  { key: 'id', label: 'Id' },
  { key: 'node', label: 'Node' },
  { key: 'tenant', label: 'Tenant' },
  { key: 'mode', label: 'Mode' },
  { key: 'version', label: 'Version' },
  { key: 'state', label: 'Enforcement' },
  { key: 'denials', label: 'Denials (1 min)' },
];

export function ComputersView({ session }: { session: SessionView }) {
  const [items, setItems] = useState<ComputerItem[] | undefined>(undefined);
  const [complete, setComplete] = useState(true);
  const [problem, setProblem] = useState('');
  const [filter, setFilter] = useState('');
  const [sort, setSort] = useState<Sort>({ key: 'id', descending: false });
  const [page, setPage] = useState(0);

  usePoll(async () => {
    const got = await listAllComputers(MAX_PAGES);
    if ('computers' in got) {
      setItems(got.computers);
      setComplete(got.complete);
      setProblem('');
    } else if (got.status !== 401) {
      setProblem(`Could not list the computers: ${errorText(got)}`);
    }
  }, LIST_EVERY_MS);

  const filtered = useMemo(() => filterComputers(items ?? [], filter), [items, filter]);
  const sorted = useMemo(() => sortComputers(filtered, sort), [filtered, sort]);
  const pages = Math.max(1, Math.ceil(sorted.length / PAGE_SIZE));
  const shownPage = Math.min(page, pages - 1);
  const rows = sorted.slice(shownPage * PAGE_SIZE, (shownPage + 1) * PAGE_SIZE);

  const sortBy = (key: SortKey) =>
    setSort((s) => ({ key, descending: s.key === key ? !s.descending : key === 'denials' }));

  const total = items?.length ?? 0;
  const first = sorted.length === 0 ? 0 : shownPage * PAGE_SIZE + 1;
  const summary =
    items === undefined
      ? 'Loading…'
      : `${first}–${shownPage * PAGE_SIZE + rows.length} of ${sorted.length} computer${sorted.length === 1 ? '' : 's'}` +
        (sorted.length === total ? '' : ` (filtered from ${total})`) +
        (complete ? '' : ` — only the first ${MAX_PAGES * 1000} were read`);

  return (
    <section id="computers" aria-labelledby="view-title">
      <ViewTitle>Computers</ViewTitle>
      {session.kind === 'tenant' ? <p class="muted">Tenant {session.tenant}'s computers.</p> : null}
      <div class="toolbar">
        <label for="filter">Filter</label>
        <input
          id="filter"
          type="search"
          value={filter}
          placeholder="id, node, tenant, mode, state…"
          onInput={(e) => {
            setFilter((e.currentTarget as HTMLInputElement).value);
            setPage(0);
          }}
        />
      </div>
      <Notice text={summary} />
      {problem ? <Notice kind="error" text={problem} /> : null}
      <table class="stack computers">
        <thead>
          <tr>
            {COLUMNS.map((c) => (
              <th
                key={c.key}
                scope="col"
                aria-sort={sort.key === c.key ? (sort.descending ? 'descending' : 'ascending') : 'none'}
              >
                <button type="button" class="sort" onClick={() => sortBy(c.key)}>
                  {c.label}
                  <span aria-hidden="true">{sort.key === c.key ? (sort.descending ? ' ▼' : ' ▲') : ''}</span>
                </button>
              </th>
            ))}
          </tr>
        </thead>
        <tbody id="computer-rows">
          {rows.map((c) => (
            <Row key={c.id} c={c} />
          ))}
        </tbody>
      </table>
      {pages > 1 ? (
        <nav class="pager" aria-label="Pages">
          <button type="button" disabled={shownPage === 0} onClick={() => setPage(shownPage - 1)}>
            Previous
          </button>
          <span>
            Page {shownPage + 1} of {pages}
          </span>
          <button type="button" disabled={shownPage >= pages - 1} onClick={() => setPage(shownPage + 1)}>
            Next
          </button>
        </nav>
      ) : null}
    </section>
  );
}

function Row({ c }: { c: ComputerItem }) {
  const p = c.policy;
  const d = c.denials_1m;
  return (
    <tr data-id={c.id}>
      <td data-label="Id">
        <a href={href.computer(c.id)}>{c.id}</a>
      </td>
      <td data-label="Node">{c.node}</td>
      <td data-label="Tenant">{c.tenant ?? '—'}</td>
      <td data-label="Mode">
        {p.mode}
        {p.audit ? <span class="badge wait">audit</span> : null}
      </td>
      <td data-label="Version">{versionText(p.version, p.enforcement)}</td>
      <td data-label="Enforcement">
        <StateBadge enforcement={p.enforcement} />
      </td>
      <td data-label="Denials (1 min)" class="num">
        {d === undefined ? '…' : d.capped ? `${d.count}+` : d.count}
      </td>
    </tr>
  );
}
