/**
 * Denials per second by reason over the last minute, drawn by uPlot (a
 * canvas; its few inline styles are set through the CSSOM, which the
 * Content-Security-Policy allows) and said in text beside it for those who
 * do not see the canvas. Redrawn every second; made anew when a reason
 * appears (a series each), resized with its box.
 */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import type { DenialCounts } from './model.js';
import { useNow } from './parts.js';

const HEIGHT = 200;

/** A colour per reason (the Okabe–Ito palette and three more), the same on every page. */
const COLOURS: Record<string, string> = {
  mode: '#d55e00',
  rule: '#0072b2',
  socket: '#cc79a7',
  dns: '#009e73',
  proxy_port: '#56b4e9',
  ungoverned: '#e69f00',
  name_mismatch: '#8b5cf6',
  quic: '#999933',
  dns_unlisted: '#44aa99',
  dns_refused: '#aa4499',
  revoked: '#b8860b',
};
const OTHER = '#888888';

function cssVar(name: string, fallback: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

export function DenialChart({ counts, version }: { counts: DenialCounts; version: number }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const now = useNow(1000);
  const reasons = counts.reasonList();
  const reasonsKey = reasons.join(',');

  useEffect(() => {
    const target = box.current;
    if (!target) return;
    const fg = cssVar('--muted', '#4d5661');
    const line = cssVar('--line', '#c9d1d9');
    const axis = { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    const chart = new uPlot(
      {
        width: Math.max(200, target.clientWidth),
        height: HEIGHT,
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(2, max)] } },
        axes: [axis, { ...axis, label: 'denials / s', size: 50 }],
        series: [
          { label: 'time' },
          ...reasons.map((r) => ({
            label: r,
            stroke: COLOURS[r] ?? OTHER,
            width: 2,
            paths: uPlot.paths.stepped?.({ align: 1 }),
            points: { show: false },
          })),
        ],
        cursor: { drag: { x: false, y: false } },
        legend: { show: reasons.length > 0, live: false },
      },
      counts.columns(Date.now()) as uPlot.AlignedData,
      target,
    );
    plot.current = chart;
    const resized = new ResizeObserver(() =>
      chart.setSize({ width: Math.max(200, target.clientWidth), height: HEIGHT }),
    );
    resized.observe(target);
    return () => {
      resized.disconnect();
      chart.destroy();
      plot.current = null;
    };
  }, [reasonsKey]);

  const columns = counts.columns(now);
  useEffect(() => {
    plot.current?.setData(columns as uPlot.AlignedData);
  }, [now, version]);

  const totals = reasons.map((r, i) => [r, (columns[i + 1] ?? []).reduce((a, b) => a + b, 0)] as const);
  const said = totals.filter(([, n]) => n > 0).map(([r, n]) => `${n} ${r}`);
  return (
    <figure class="chart">
      <div ref={box} class="chart-box" aria-hidden="true" />
      <figcaption id="chart-summary">
        Last minute: {said.length === 0 ? 'no denials' : `${said.join(', ')}`}
      </figcaption>
    </figure>
  );
}
