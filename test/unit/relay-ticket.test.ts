import { expect } from 'chai';
import { idPrefixOf, issueTicket, newRelayKey, StreamTickets, TICKET_SKEW_MS, TicketKeys } from '../../common/relay-ticket';

describe('relay tickets (direct jobs under mTLS)', () => {
  const key = newRelayKey();
  const now = 1_800_000_000_000;
  const keys = () => {
    const k = new TicketKeys();
    k.add(key.id, key.key);
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
    for (const x of all) k.add(x.id, x.key);
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
    k.add(key.id, key.key);
    expect(s.check('j-abc-5c33fb71.1', undefined, now)).to.equal(undefined);
    expect(s.check('j-abc-5c33fb71.2', undefined, now + 1_000)).to.equal(undefined);
    expect(s.check('j-other.0', undefined, now)).to.match(/no lease ticket/);
    expect(s.check('nodot', t, now)).to.match(/carries no lease prefix/);
    expect(s.check('j-abc-5c33fb71.3', undefined, now + 3_000 + TICKET_SKEW_MS)).to.match(/expired/);
  });
});
