/** Relayed authentication binds a backend to one client's login, so nothing can be shared yet. */
export class DedicatedPool {
    counts = new Map();
    async acquire(key, open) {
        const backend = await open();
        this.counts.set(key.tenant, (this.counts.get(key.tenant) ?? 0) + 1);
        return backend;
    }
    release(key, backend) {
        backend.close();
        const n = (this.counts.get(key.tenant) ?? 1) - 1;
        if (n > 0)
            this.counts.set(key.tenant, n);
        else
            this.counts.delete(key.tenant);
    }
    active() {
        return this.counts;
    }
}
//# sourceMappingURL=pool.js.map