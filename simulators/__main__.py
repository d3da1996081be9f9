"""Run the provider simulators:  python -m simulators [--host H] [--port P] [--nice N]"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from waitress.server import create_server

from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import get_settings
from simulators.app import create_app
from simulators.eum import SnsEmitter
from simulators.sms import StatusEmitter


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(description="dmd provider simulators")
    parser.add_argument("--host", default=settings.simulator_host)
    parser.add_argument("--port", type=int, default=settings.simulator_port)
    parser.add_argument(
        "--nice", type=int, default=settings.simulator_nice, help="CPU priority increment (below 0: raised)"
    )
    parser.add_argument("--threads", type=int, default=128, help="requests answered at once")
    args = parser.parse_args(argv)
    if args.nice:
        # first, so that every thread started later (the server's) has it too
        try:
            os.nice(args.nice)
        except OSError as exc:
            print(f"simulators: CPU priority left as it is (nice {args.nice}: {exc})", file=sys.stderr, flush=True)
    # "task queue depth" when every thread is busy: the provider is slow on purpose here
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    emitter = StatusEmitter(aws.client("kinesis", settings), settings.sms_status_stream_name)
    app = create_app(
        bitly_token=settings.bitly_token.get_secret_value(),
        sms_api_key=settings.sms_api_key.get_secret_value(),
        discovery_api_key=settings.discovery_api_key.get_secret_value(),
        accounts_client_id=settings.accounts_client_id,
        accounts_client_secret=settings.accounts_client_secret.get_secret_value(),
        status_emitter=emitter,
        eum_emitter=SnsEmitter(aws.client("sns", settings)),
    )
    # waitress, not werkzeug's development server: that one closes every connection after its
    # request, so each call paid a new connection and a new thread (up to 45 ms on a loaded
    # machine, after the sender's rate limit had let it go), which a provider keeping
    # connections alive does not. Threads: enough for every caller to wait out a slow answer.
    server = create_server(
        app, host=args.host, port=args.port, threads=args.threads, connection_limit=1000, ident="dmd-simulators"
    )
    print(f"simulators listening on http://{args.host}:{args.port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
