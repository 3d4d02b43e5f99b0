"""moto_server, with DynamoDB requests handled one at a time.

moto 5.2.5 serves requests on concurrent threads, and its TransactWriteItems is
not isolated: it snapshots every table the transaction touches, applies the
items one by one, and on a failed condition restores the snapshot. A
transaction cancelled while another request runs on the same table therefore
undoes that request's writes — including a concurrent transaction that
succeeded — and two transactions can both pass their conditions. DynamoDB
isolates transactions; the `lablake-checkpoint` conformance suite (two writers
racing with one generation) checks exactly that and fails against plain
`moto_server` when its writes are lost this way.

This launcher is `moto_server -H HOST -p PORT` with one lock around DynamoDB
requests (header `X-Amz-Target: DynamoDB_*`). S3 and every other service stay
concurrent. Run it with the Python of the moto virtualenv:

    $MOTO_VENV/bin/python moto_server_serialized.py -H 127.0.0.1 -p 25000
"""

import argparse
import os
import signal
import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(0))

    moto_app = DomainDispatcherApplication(create_backend_app)
    moto_app.debug = True
    dynamodb_lock = threading.Lock()

    def app(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            with dynamodb_lock:
                # Produce the whole response while holding the lock.
                return list(moto_app(environ, start_response))
        return moto_app(environ, start_response)

    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
