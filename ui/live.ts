/**
 * A computer's deny events as they happen: an EventSource on
 * GET .../events/stream (same origin, so the session cookie goes with it;
 * a GET needs no CSRF token). The browser reconnects by itself after a
 * dropped connection; a refusal (429 too many streams, 401, 404) closes it
 * for good, and then this hook tries again after RETRY_MS, through an
 * ordinary request first, so that a 401 shows the sign-in. Each event
 * arriving sets the performance mark `egressd:live-event` (the browser test
 * reads it to time an event from the kernel to the page).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { call, computerPath, type DenyEvent, policyPath } from './api.js';

const RETRY_MS = 5000;

export type StreamState = 'connecting' | 'live' | 'retrying' | 'gone';

export function useEventStream(id: string, onEvent: (e: DenyEvent) => void): StreamState {
  const [state, setState] = useState<StreamState>('connecting');
  const handler = useRef(onEvent);
  handler.current = onEvent;
  useEffect(() => {
    let source: EventSource | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let stopped = false;
    const open = () => {
      source = new EventSource(`${policyPath(id)}/events/stream`);
      source.onopen = () => setState('live');
      source.onmessage = (m: MessageEvent<string>) => {
        let event: DenyEvent;
        try {
          event = JSON.parse(m.data);
        } catch {
          return;
        }
        performance.mark('egressd:live-event');
        handler.current(event);
      };
      source.onerror = () => {
        if (source?.readyState !== EventSource.CLOSED) {
          setState('connecting');
          return;
        }
        setState('retrying');
        timer = setTimeout(retry, RETRY_MS);
      };
    };
    const retry = async () => {
      if (stopped) return;
      const r = await call('GET', computerPath(id));
      if (stopped) return;
      if (r.status === 404 || r.status === 401) {
        setState('gone');
        return;
      }
      open();
    };
    open();
    return () => {
      stopped = true;
      clearTimeout(timer);
      source?.close();
    };
  }, [id]);
  return state;
}
