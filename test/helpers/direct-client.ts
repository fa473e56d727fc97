// A DirectJobs client in a process of its own, for tests that kill it: submits JOBS jobs of
// PIPELINE (each waited for) through the coordinators at ADDRESSES and says "submitted" on
// stdout once they are all on their way. It never ends on its own.
import { AdminClient } from '../../common/admin-client';

const admin = new AdminClient(String(process.env.ADDRESSES).split(','));
const direct = admin.directJobs();
const n = Number(process.env.JOBS ?? 4);
for (let i = 0; i < n; i++) {
  direct.submit({ pipeline: String(process.env.PIPELINE), payload: Buffer.from(`job ${i}`), wait: true, timeoutMs: 60_000 })
    .then((j) => console.log(`ended ${j.id} ${j.state}`), (err: Error) => console.log(`refused ${err.message}`));
}
console.log('submitted');
setInterval(() => {}, 60_000);
