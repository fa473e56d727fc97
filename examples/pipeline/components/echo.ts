// A trivial component for benchmarks and tests: returns its input. KIND names the kind it
// registers as (default "echo"); DELAY_MS makes it slow.
import { serveComponent } from '../../../common/component';
import { delay } from './delay';

void serveComponent({
  kind: process.env.KIND || 'echo',
  version: process.env.COMPONENT_VERSION || '1.0.0',
  concurrency: Number(process.env.CONCURRENCY || 64),
  operations: {
    echo: async (input) => {
      await delay();
      return input;
    },
  },
});
