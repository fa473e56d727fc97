// A daemon's node warnings go to its JSON log (not stderr as plain text), each kind once, and
// grpc-js' IP-address TLS server name (DEP0123) at debug.
import { expect } from 'chai';
import { routeNodeWarnings } from '../../common/node-warnings';

describe('node warnings in the daemon log', () => {
  let saved: NodeJS.WarningListener[] = [];
  before(() => { saved = process.listeners('warning'); });
  after(() => {
    process.removeAllListeners('warning');
    for (const l of saved) process.on('warning', l);
  });

  it('logs each kind once, DEP0123 at debug, and leaves node\'s stderr printer out', async () => {
    const got: [string, Record<string, unknown>, string][] = [];
    routeNodeWarnings((level, fields, msg) => got.push([level, fields, msg]));
    expect(process.listenerCount('warning')).to.equal(1);
    process.emitWarning('Setting the TLS ServerName to an IP address is not permitted', 'DeprecationWarning', 'DEP0123');
    process.emitWarning('Setting the TLS ServerName to an IP address is not permitted', 'DeprecationWarning', 'DEP0123');
    process.emitWarning('Possible EventEmitter memory leak detected', 'MaxListenersExceededWarning');
    process.emitWarning('Possible EventEmitter memory leak detected', 'MaxListenersExceededWarning');
    await new Promise((r) => setImmediate(r));
    expect(got.map(([level, f]) => [level, f.warning, f.code])).to.deep.equal([
      ['debug', 'DeprecationWarning', 'DEP0123'],
      ['warn', 'MaxListenersExceededWarning', undefined],
    ]);
    expect(got[1][2]).to.equal('node warning: MaxListenersExceededWarning: Possible EventEmitter memory leak detected');
  });
});
