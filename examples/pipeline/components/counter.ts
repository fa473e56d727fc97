// Stage 2 of examples/pipeline: a JSON list of words in, word counts out (JSON object).
import { serveComponent } from '../../../common/component';
import { delay } from './delay';

void serveComponent({
  kind: 'counter',
  version: process.env.COMPONENT_VERSION || '1.0.0',
  operations: {
    count: async (input) => {
      await delay();
      const counts: Record<string, number> = {};
      for (const w of JSON.parse(input.toString('utf8')) as string[]) counts[w] = (counts[w] ?? 0) + 1;
      return { payload: JSON.stringify(counts), headers: { words: String(Object.values(counts).reduce((a, b) => a + b, 0)) } };
    },
  },
});
