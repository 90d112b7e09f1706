/**
 * Parses Prometheus text exposition strictly enough to catch a malformed
 * line; name{labels} → value. NaN and Inf are read as Prometheus reads them
 * (Go's ParseFloat: any case), since prom-client writes `Nan` (the event-loop
 * delay when two scrapes come close together).
 */
export function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '' || /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* /.test(line)) continue;
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})?) (-?[0-9.eE+-]+|[nN][aA][nN]|[+-][iI][nN][fF])( -?[0-9]+)?$/.exec(
        line,
      );
    if (!m) throw new Error(`line ${i + 1} is not Prometheus text: ${line}`);
    samples.set(m[1] ?? '', promFloat(m[2] ?? ''));
  }
  return samples;
}

function promFloat(text: string): number {
  if (/^[+-]inf$/i.test(text)) return text.startsWith('-') ? -Infinity : Infinity;
  if (/^nan$/i.test(text)) return Number.NaN;
  return Number(text);
}
