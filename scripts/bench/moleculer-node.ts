// One Moleculer node for the jobs benchmark's peer: one service per process, TCP transporter,
// static peers on 127.0.0.1, UDP discovery off.
//   node dist/scripts/bench/moleculer-node.js NODE_ID PORT SERVICE PEERS(id=port,...)
import { ServiceBroker } from 'moleculer';

const [nodeID, port, service, peers] = process.argv.slice(2);
const urls = peers.split(',').map((p) => { const [id, pt] = p.split('='); return `127.0.0.1:${pt}/${id}`; });
const broker = new ServiceBroker({
  nodeID, logger: false,
  transporter: { type: 'TCP', options: { udpDiscovery: false, port: Number(port), urls } },
});
broker.createService({ name: service, actions: { echo: (ctx) => ctx.params } });
void broker.start().then(() => process.send?.('ready'));
process.on('SIGTERM', () => void broker.stop().then(() => process.exit(0)));
