// Stage 3 of examples/pipeline: word counts in, the top words as text out.
import { serveComponent } from '../../../common/component';
import { delay } from './delay';

void serveComponent({
  kind: 'formatter',
  version: process.env.COMPONENT_VERSION || '1.0.0',
  operations: {
    top: async (input, step) => {
      await delay();
      const n = Number(step.headers.top || 5);
      const counts = JSON.parse(input.toString('utf8')) as Record<string, number>;
      const top = Object.entries(counts).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, n);
      return `${step.headers.words ?? '?'} words; top ${top.length}: ${top.map(([w, c]) => `${w}=${c}`).join(' ')}`;
    },
  },
});
