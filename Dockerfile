# Builds penwarden and pensim; the runtime image holds only the binaries.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/penwarden /src/target/release/pensim /usr/local/bin/
RUN useradd --system --home /var/lib/penwarden penwarden && mkdir -p /var/lib/penwarden && chown penwarden /var/lib/penwarden
USER penwarden
WORKDIR /var/lib/penwarden
EXPOSE 50051
ENTRYPOINT ["penwarden"]
CMD ["serve"]
