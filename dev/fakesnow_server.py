"""Start fakesnow's server with DuckDB's S3 client pointed at the local moto server.

Used by `dev/services up --with-snowflake`; run with the fakesnow venv's python and the
same arguments as `fakesnow` (for example `-s --host 127.0.0.1 -p 28080`).

DuckDB's httpfs reads the endpoint, SSL flag and credentials from DUCKDB_S3_* / AWS_* variables
but has no variable for the URL style, and its default (virtual host: `bucket.127.0.0.1:port`)
cannot resolve. Every fakesnow instance (the shared one and each `:isolated:` session) gets
path-style S3 settings right after its DuckDB database opens. The httpfs extension must already
be installed under $HOME/.duckdb (dev/services copies it there; nothing is downloaded).
"""

import os
import sys

import fakesnow.instance
from fakesnow.cli import main


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_original_init = fakesnow.instance.FakeSnow.__init__


def _init_with_local_s3(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    conn = self.duck_conn
    conn.execute("LOAD httpfs")
    settings = {
        "s3_url_style": "path",
        "s3_endpoint": os.environ.get("DUCKDB_S3_ENDPOINT", "127.0.0.1:25000"),
        "s3_region": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
        "s3_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        "s3_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    }
    for name, value in settings.items():
        conn.execute(f"SET GLOBAL {name} = {_quote(value)}")
    use_ssl = os.environ.get("DUCKDB_S3_USE_SSL", "false").lower() == "true"
    conn.execute(f"SET GLOBAL s3_use_ssl = {'true' if use_ssl else 'false'}")


fakesnow.instance.FakeSnow.__init__ = _init_with_local_s3

if __name__ == "__main__":
    sys.exit(main())
