# The image deploy/trellis.yaml runs: trellis (one self-contained executable: the agent, the CLI
# and the standalone CNI plugin), the native plugin and the agent's helpers, and the kernel tools
# the agent drives. Build from the repository root: docker build -t trellis:0.1.0 .
# The build stage runs the Node.js release package.json pins (engines); the build refuses any other.
FROM node:26.12.1-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev binutils && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 nftables conntrack util-linux && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/dist/trellis /src/dist/trellis-cni /src/dist/trellis-spawn /src/dist/trellis-nft-batch /opt/trellis/bin/
ENTRYPOINT ["/opt/trellis/bin/trellis"]
