# The `starling` binary in a slim image. Build: docker build -t starling .
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin starling

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/starling /usr/local/bin/starling
ENTRYPOINT ["starling"]
