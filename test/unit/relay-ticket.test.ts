import { expect } from 'chai';
import { idPrefixOf, issueTicket, KEY_RETIRE_MS, newRelayKey, RelayKeyRing, StreamTickets, TICKET_AHEAD_MS, TICKET_SKEW_MS, TicketKeys } from '../../common/relay-ticket';

describe('relay tickets (direct jobs under mTLS)', () => {
  const key = newRelayKey();
  const now = 1_800_000_000_000;
  const keys = () => {
    const k = new TicketKeys();
    k.add(key.id, key.key, now);
    return k;
  };

  it('holds for its lease id prefix until its expiry plus the clock skew allowed, and for nothing else', () => {
    const t = issueTicket(key, 'j-abc-5c33fb71', now + 2_000);
    expect(keys().verify(t, 'j-abc-5c33fb71', now)).to.deep.equal({ expiresAtMs: now + 2_000 });
    expect(keys().verify(t, 'j-abc-5c33fb71', now + 2_000 + TICKET_SKEW_MS)).to.deep.equal({ expiresAtMs: now + 2_000 });
    expect(keys().verify(t, 'j-abc-5c33fb71', now + 2_001 + TICKET_SKEW_MS)).to.have.property('error').that.matches(/expired/);
    expect(keys().verify(t, 'j-abc-5c33fb72', now)).to.have.property('error').that.matches(/not valid for job ids j-abc-5c33fb72\.\*/);
    // Its expiry changed: the signature no longer matches.
    const later = t.replace(/\.[0-9a-z]+\./, `.${(now + 3_600_000).toString(36)}.`);
    expect(keys().verify(later, 'j-abc-5c33fb71', now)).to.have.property('error').that.matches(/not valid/);
    // Signed by a key this agent was not given, or not a ticket at all.
    expect(new TicketKeys().verify(t, 'j-abc-5c33fb71', now)).to.have.property('error').that.matches(new RegExp(`key ${key.id}.*not been given`));
    expect(keys().verify(issueTicket(newRelayKey(), 'j-abc-5c33fb71', now + 2_000), 'j-abc-5c33fb71', now)).to.have.property('error');
    expect(keys().verify('garbage', 'j-abc-5c33fb71', now)).to.deep.equal({ error: 'malformed lease ticket' });
  });

  it('an agent keeps the last 8 keys', () => {
    const k = new TicketKeys();
    const all = Array.from({ length: 9 }, () => newRelayKey());
    for (const x of all) k.add(x.id, x.key, now);
    expect(k.size).to.equal(8);
    expect(k.verify(issueTicket(all[0], 'p', now), 'p', now)).to.have.property('error');
    expect(k.verify(issueTicket(all[8], 'p', now), 'p', now)).to.deep.equal({ expiresAtMs: now });
  });

  it('on a stream, a ticket brought once covers its prefix; checked again until the key has come', () => {
    expect(idPrefixOf('j-abc-5c33fb71.1f')).to.equal('j-abc-5c33fb71');
    expect(idPrefixOf('nodot')).to.equal('');
    const k = new TicketKeys();
    const s = new StreamTickets(k);
    const t = issueTicket(key, 'j-abc-5c33fb71', now + 2_000);
    expect(s.check('j-abc-5c33fb71.0', undefined, now)).to.match(/no lease ticket for job ids j-abc-5c33fb71/);
    // The ticket before the key (an agent that has just attached to a new leader): refused, then taken once the key is there.
    expect(s.check('j-abc-5c33fb71.0', t, now)).to.match(/not been given/);
    k.add(key.id, key.key, now);
    expect(s.check('j-abc-5c33fb71.1', undefined, now)).to.equal(undefined);
    expect(s.check('j-abc-5c33fb71.2', undefined, now + 1_000)).to.equal(undefined);
    expect(s.check('j-other.0', undefined, now)).to.match(/no lease ticket/);
    expect(s.check('nodot', t, now)).to.match(/carries no lease prefix/);
    expect(s.check('j-abc-5c33fb71.3', undefined, now + 3_000 + TICKET_SKEW_MS)).to.match(/expired/);
  });

  it('refuses a ticket whose expiry lies further ahead than any lease lives (one signed with a leaked key to outlive it)', () => {
    const ok = issueTicket(key, 'p', now + TICKET_AHEAD_MS);
    expect(keys().verify(ok, 'p', now)).to.deep.equal({ expiresAtMs: now + TICKET_AHEAD_MS });
    const far = issueTicket(key, 'p', now + TICKET_AHEAD_MS + 1);
    expect(keys().verify(far, 'p', now)).to.have.property('error').that.matches(/too far ahead/);
  });

  it('a key that comes retires the others KEY_RETIRE_MS later; one that comes again is taken back', () => {
    const k = new TicketKeys();
    const [k0, k1] = [newRelayKey(), newRelayKey()];
    expect(k.add(k0.id, k0.key, now), 'a key it did not hold').to.equal(true);
    expect(k.add(k1.id, k1.key, now + 1_000), 'the leader rotated').to.equal(true);
    expect(k.add(k1.id, k1.key, now + 1_000), 'the same key again (a Welcome after a reconnect)').to.equal(false);
    expect(k.held()).to.deep.equal([{ id: k0.id, retiresAtMs: now + 1_000 + KEY_RETIRE_MS }, { id: k1.id, retiresAtMs: 0 }]);
    const t0 = (at: number) => issueTicket(k0, 'p', at + 2_000);
    // The old key's tickets hold until it retires (its last leases are still out), then not.
    expect(k.verify(t0(now + 1_000 + KEY_RETIRE_MS), 'p', now + 1_000 + KEY_RETIRE_MS)).to.have.property('expiresAtMs');
    expect(k.verify(t0(now + 1_001 + KEY_RETIRE_MS), 'p', now + 1_001 + KEY_RETIRE_MS)).to.have.property('error').that.matches(new RegExp(`key ${k0.id}, which this agent has retired`));
    expect(k.size, 'a retired key is dropped').to.equal(1);
    expect(k.verify(issueTicket(k1, 'p', now + 60_000), 'p', now + 60_000)).to.have.property('expiresAtMs');
    // Back to a leader whose key it had (a Welcome after a leader change and back): that key holds again, the other retires.
    expect(k.add(k0.id, k0.key, now + 70_000), 'dropped once retired: new again').to.equal(true);
    expect(k.held()).to.deep.equal([{ id: k1.id, retiresAtMs: now + 70_000 + KEY_RETIRE_MS }, { id: k0.id, retiresAtMs: 0 }]);
    expect(k.verify(t0(now + 200_000), 'p', now + 200_000)).to.have.property('expiresAtMs');
  });

  it('a ticket a stream has checked stops counting once its key retires', () => {
    const k = new TicketKeys();
    const [k0, k1] = [newRelayKey(), newRelayKey()];
    k.add(k0.id, k0.key, now);
    const s = new StreamTickets(k);
    expect(s.check('j-x.0', issueTicket(k0, 'j-x', now + 2_000), now)).to.equal(undefined);
    k.add(k1.id, k1.key, now + 1_000);
    expect(s.check('j-x.1', undefined, now + 1_000 + KEY_RETIRE_MS)).to.equal(undefined);
    expect(s.check('j-x.2', undefined, now + 1_001 + KEY_RETIRE_MS)).to.match(/retired/);
  });

  it('a coordinator\'s key ring gives a rotation\'s key out at once and signs with it only after the activation delay; a rotation under way is not restarted (its key is given out again)', async () => {
    const ring = new RelayKeyRing(50);
    const pushed: string[] = [];
    ring.onRotate((k) => pushed.push(k.id));
    const first = ring.current;
    const next = ring.rotate();
    expect([ring.current.id, ring.pending?.id, pushed]).to.deep.equal([first.id, next.id, [next.id]]);
    expect(ring.rotate().id, 'asked again while under way').to.equal(next.id);
    expect(pushed, 'its key given out again').to.deep.equal([next.id, next.id]);
    await new Promise((r) => setTimeout(r, 80));
    expect([ring.current.id, ring.pending, ring.rotations]).to.deep.equal([next.id, undefined, 1]);
    const third = ring.rotate();
    expect(third.id).to.not.equal(next.id);
    ring.stop();
    expect(ring.current.id, 'stopped before it signs').to.equal(next.id);
  });
});
