/**
 * The dashboard's entry point (bundled by scripts/build-ui.mjs into
 * dist/ui/app-<hash>.js): renders the app into the page's #app and marks
 * the time of its first render (`egressd:first-render`, read by the browser
 * test with the page's navigation timings).
 */
import { render } from 'preact';
import { App } from './app.js';

const root = document.getElementById('app');
if (!root) throw new Error('the page has no #app');
render(<App />, root);
performance.mark('egressd:first-render');
