# PostgreSQL from Debian's packages, for CI and other places that cannot pull the
# official postgres image. It reads the same variables as the official image
# (POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB) and keeps its data in the same
# folder, so docker-compose.yml works with either image.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG POSTGRES_MAJOR=15

# The package would create a cluster under /var/lib/postgresql/15/main; the entrypoint
# creates its own in PGDATA instead.
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common; \
    sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "postgresql-${POSTGRES_MAJOR}"; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /var/lib/postgresql/data /run/postgresql; \
    chown postgres:postgres /var/lib/postgresql/data /run/postgresql; \
    chmod 700 /var/lib/postgresql/data

ENV PATH=/usr/lib/postgresql/${POSTGRES_MAJOR}/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    TZ=UTC \
    LANG=C.UTF-8

COPY postgres-debian-entrypoint.sh /usr/local/bin/postgres-debian-entrypoint.sh

USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-debian-entrypoint.sh"]
CMD ["postgres"]
