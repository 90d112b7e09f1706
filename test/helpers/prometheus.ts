/** Parses Prometheus text exposition strictly enough to catch a malformed line; name{labels} → value. */
export function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '' || /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* /.test(line)) continue;
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})?) (-?[0-9.eE+-]+|NaN|[+-]Inf)( -?[0-9]+)?$/.exec(
        line,
      );
    if (!m) throw new Error(`line ${i + 1} is not Prometheus text: ${line}`);
    samples.set(m[1] ?? '', Number(m[2]));
  }
  return samples;
}
