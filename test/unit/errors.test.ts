import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { FencedError, fromServiceError, InternalError, InvalidArgumentError, NotFoundError, NotLeaderError, toServiceError } from '../../common/errors';

function roundTrip(err: unknown) {
  return fromServiceError(toServiceError(err) as grpc.ServiceError);
}

describe('error taxonomy', () => {
  it('maps each class to its status and back', () => {
    const cases: [Error, grpc.status, Function][] = [
      [InvalidArgumentError.field('a.b', 'bad'), grpc.status.INVALID_ARGUMENT, InvalidArgumentError],
      [new NotFoundError('node', 'x'), grpc.status.NOT_FOUND, NotFoundError],
      [new NotLeaderError('c2', '127.0.0.1:9'), grpc.status.UNAVAILABLE, NotLeaderError],
      [new FencedError(), grpc.status.UNAVAILABLE, FencedError],
    ];
    for (const [err, code, cls] of cases) {
      expect(toServiceError(err).code).to.equal(code);
      expect(roundTrip(err)).to.be.instanceOf(cls);
    }
  });
  it('keeps field violations across the wire', () => {
    const back = roundTrip(new InvalidArgumentError([{ field: 'x[0].y', message: 'must be > 0' }, { field: 'z', message: 'required' }])) as InvalidArgumentError;
    expect(back.violations).to.deep.equal([{ field: 'x[0].y', message: 'must be > 0' }, { field: 'z', message: 'required' }]);
    expect(back.message).to.equal('x[0].y: must be > 0; z: required');
  });
  it('keeps the leader address of a NotLeaderError', () => {
    const back = roundTrip(new NotLeaderError('c2', '127.0.0.1:9')) as NotLeaderError;
    expect(back.leaderAddress).to.equal('127.0.0.1:9');
    expect(back.leaderId).to.equal('c2');
  });
  it('turns an unknown exception into INTERNAL', () => {
    expect(toServiceError(new TypeError('boom')).code).to.equal(grpc.status.INTERNAL);
    expect(roundTrip('weird')).to.be.instanceOf(InternalError);
  });
});
