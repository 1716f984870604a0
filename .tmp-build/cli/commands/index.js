import { demoCommand } from './demo.js';
import { proxyCommand } from './proxy.js';
export const commands = [demoCommand, proxyCommand];
//# sourceMappingURL=index.js.map