# Container image for pgtenant: compile in a build stage, run the pruned package as a non-root user.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Install scripts are skipped here because dev-only native addons (ssh2/cpu-features via testcontainers)
# would need a compiler; the runtime packages that need theirs are rebuilt after pruning below.
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev \
 && npm rebuild

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY examples ./examples
# The image's built-in `node` user (uid 1000): the proxy needs no privileges, and the code stays root-owned.
USER node
EXPOSE 6432 6480
ENTRYPOINT ["node", "bin/pgtenant.js"]
CMD ["proxy"]
