# Snowflake emulator (fakesnow) for the `snowflake` profile of docker-compose.yml, pinned like
# dev/services. DuckDB's httpfs extension comes from PyPI, not from a download at run time.
FROM python:3.11-slim
RUN pip install --no-cache-dir 'fakesnow[server]==0.11.10' duckdb==1.5.5 duckdb-extension-httpfs==1.5.5 \
        'snowflake-connector-python<5' \
    && platform="$(python -c 'import duckdb; print(duckdb.execute("PRAGMA platform").fetchone()[0])')" \
    && dir="/root/.duckdb/extensions/v1.5.5/$platform" \
    && mkdir -p "$dir" \
    && find / -name httpfs.duckdb_extension -not -path "$dir/*" -exec cp {} "$dir/" \; -quit \
    && test -f "$dir/httpfs.duckdb_extension"
COPY dev/fakesnow_server.py /app/fakesnow_server.py
EXPOSE 8080
CMD ["python", "/app/fakesnow_server.py", "-s", "--host", "0.0.0.0", "-p", "8080"]
