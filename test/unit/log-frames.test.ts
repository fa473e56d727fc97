import { expect } from 'chai';
import { LogFrames } from '../../agent/docker-runtime';

// Docker's multiplexed log framing: [stream, 0, 0, 0, size32 BE] then size bytes.
const frame = (stream: 1 | 2, text: string) => {
  const body = Buffer.from(text);
  const h = Buffer.alloc(8);
  h[0] = stream;
  h.writeUInt32BE(body.length, 4);
  return Buffer.concat([h, body]);
};

describe('log frames (docker logs demultiplexing)', () => {
  const collect = (ok = true) => {
    const out: [string, string][] = [];
    return { out, frames: new LogFrames((s, d) => { out.push([s, d.toString()]); return ok; }) };
  };

  it('splits stdout and stderr frames', () => {
    const { out, frames } = collect();
    expect(frames.push(Buffer.concat([frame(1, 'a\n'), frame(2, 'oops\n'), frame(1, 'b\n')]))).to.equal(true);
    expect(out).to.deep.equal([['stdout', 'a\n'], ['stderr', 'oops\n'], ['stdout', 'b\n']]);
  });

  it('waits for the rest of a frame split over reads, header included', () => {
    const { out, frames } = collect();
    const all = Buffer.concat([frame(1, 'hello world\n'), frame(2, 'e\n')]);
    // Byte by byte: nothing is emitted until a frame is whole.
    for (let i = 0; i < all.length; i++) frames.push(all.subarray(i, i + 1));
    expect(out).to.deep.equal([['stdout', 'hello world\n'], ['stderr', 'e\n']]);
  });

  it('skips empty frames and says when a write asked to wait', () => {
    const { out, frames } = collect(false);
    expect(frames.push(frame(1, ''))).to.equal(true);
    expect(frames.push(frame(1, 'x'))).to.equal(false);
    expect(out).to.deep.equal([['stdout', 'x']]);
  });
});
