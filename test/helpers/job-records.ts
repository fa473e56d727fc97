// Where a finished job's record is in etcd: its start batch's shared end record
// (<prefix>jobs/ended/<batch>, the batch named in the job's id) or a key of its own
// (<prefix>jobs/done/<id>).
import type { Etcd3 } from 'etcd3';
import { endBatchOf, findEnd, JobRecord } from '../../coordinator/jobs/record';

export async function endRecordOf(client: Etcd3, prefix: string, id: string): Promise<JobRecord | undefined> {
  const name = endBatchOf(id);
  const own = await client.get(`${prefix}jobs/done/${id}`).string();
  const shared = name ? await client.get(`${prefix}jobs/ended/${name}`).string() : null;
  return findEnd(own, shared, id);
}
