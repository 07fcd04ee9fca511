# tokenledger on the embedded store. Build: docker build -t tokenledger .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tokenledger

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/tokenledger tokenledger \
 && mkdir -p /var/lib/tokenledger && chown tokenledger /var/lib/tokenledger
COPY --from=build /src/target/release/tokenledger /usr/local/bin/tokenledger
USER tokenledger
VOLUME /var/lib/tokenledger
EXPOSE 8080
ENTRYPOINT ["tokenledger", "serve", "--data-dir", "/var/lib/tokenledger"]
