"""Run the provider simulators:  python -m simulators [--host H] [--port P] [--nice N]"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from werkzeug.serving import make_server

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
    args = parser.parse_args(argv)
    if args.nice:
        # first, so that every thread started later (one per connection) has it too
        try:
            os.nice(args.nice)
        except OSError as exc:
            print(f"simulators: CPU priority left as it is (nice {args.nice}: {exc})", file=sys.stderr, flush=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
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
    server = make_server(args.host, args.port, app, threaded=True)
    print(f"simulators listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
