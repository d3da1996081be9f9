"""One HTTP app serving every simulated provider, plus ``/_sim/*`` control endpoints.

- ``POST /`` (``X-Amz-Target: PinpointSMSVoiceV2.SendTextMessage``) → End User Messaging SMS
- ``GET  /_sim/health``          → 200 when serving
- ``GET  /_sim/stats``           → counters per provider (what tests and benchmarks read)
- ``POST /_sim/config``          → ``{"bitly": {"latency_ms": 50, "error_rate": 0.2, ...}, "sms": {...}}``
- ``GET  /_sim/sms/sales/<id>``  → SMS accepted, recipients and duplicates for one sale
- ``GET  /_sim/sms/recipients/<phone>`` → distinct messages accepted for one number
- ``GET  /_sim/eum/messages/<id>`` → what End User Messaging was asked to send (context, TTL...)
- ``POST /_sim/reset``           → forget calls, links and faults
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request

from simulators.bitly import BitlySimulator
from simulators.eum import EumSimulator
from simulators.sms import EventEmitter, SmsSimulator, StatusEmitter
from simulators.tm import AccountsSimulator, DiscoverySimulator


def create_app(
    *,
    bitly_token: str,
    sms_api_key: str,
    discovery_api_key: str,
    accounts_client_id: str,
    accounts_client_secret: str,
    status_emitter: StatusEmitter | None = None,
    eum_emitter: EventEmitter | None = None,
) -> Flask:
    app = Flask("dmd-simulators")
    sms = SmsSimulator(sms_api_key, status_emitter)
    providers: dict[str, Any] = {
        "bitly": BitlySimulator(bitly_token),
        "sms": sms,
        "eum": EumSimulator(sms, eum_emitter),
        "discovery": DiscoverySimulator(discovery_api_key),
        "accounts": AccountsSimulator(accounts_client_id, accounts_client_secret),
    }
    for provider in providers.values():
        app.register_blueprint(provider.blueprint())
    _control_routes(app, providers, sms)
    _stats_route(app, providers, status_emitter, eum_emitter)
    return app


def _control_routes(app: Flask, providers: dict[str, Any], sms: SmsSimulator) -> None:
    """What tests and benchmarks ask the simulators: a sale's sends, a message, health, faults, reset."""

    @app.get("/_sim/sms/sales/<sale_id>")
    def sms_sale(sale_id: str) -> Any:
        return jsonify(sms.sale_stats(sale_id, times=request.args.get("times") == "1"))

    @app.get("/_sim/eum/messages/<message_id>")
    def eum_message(message_id: str) -> Any:
        found = providers["eum"].message(message_id)
        return (jsonify(found), 200) if found is not None else (jsonify(error="no such message"), 404)

    @app.get("/_sim/sms/recipients/<phone>")
    def sms_recipient(phone: str) -> Any:
        return jsonify(messages=sms.recipient_count(phone))

    @app.get("/_sim/health")
    def health() -> Any:
        return jsonify(ok=True, providers=sorted(providers), nice=os.nice(0))

    @app.post("/_sim/config")
    def configure() -> Any:
        body = request.get_json(silent=True) or {}
        unknown = sorted(set(body) - set(providers))
        if unknown:
            return jsonify(error=f"unknown providers: {unknown}"), 400
        for name, values in body.items():
            providers[name].configure(values)
        return jsonify({name: p.public_config() for name, p in providers.items()})

    @app.post("/_sim/reset")
    def reset() -> Any:
        for provider in providers.values():
            provider.reset()
        return jsonify(ok=True)


def _stats_route(
    app: Flask, providers: dict[str, Any], status_emitter: StatusEmitter | None, eum_emitter: EventEmitter | None
) -> None:
    @app.get("/_sim/stats")
    def stats() -> Any:
        out = {name: p.stats() for name, p in providers.items()}
        if status_emitter is not None:
            out["sms"]["statuses_emitted"] = dict(status_emitter.emitted)
        if eum_emitter is not None:
            out["eum"]["events_emitted"] = dict(eum_emitter.emitted)
        return jsonify(out)
