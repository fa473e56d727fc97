// The database's parser: SQL text in, the syntax tree out (JSON). Errors point at the token.
import { serveComponent } from '../../../common/component';
import { parse } from '../sql';
import { asStatus } from './remote';

void serveComponent({
  kind: 'sql-parser',
  version: '1.0.0',
  operations: {
    parse: async (input) => {
      try {
        return JSON.stringify(parse(input.toString('utf8')));
      } catch (e) {
        return asStatus(e);
      }
    },
  },
});
