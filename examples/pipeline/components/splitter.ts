// Stage 1 of examples/pipeline: text in, the list of lower-case words out (JSON).
import { serveComponent } from '../../../common/component';
import { delay } from './delay';

void serveComponent({
  kind: 'splitter',
  version: process.env.COMPONENT_VERSION || '1.0.0',
  operations: {
    split: async (input) => {
      await delay();
      const words = input.toString('utf8').toLowerCase().match(/[\p{L}\p{N}']+/gu) ?? [];
      return JSON.stringify(words);
    },
  },
});
