"""Mounting the proxy: as a Flask extension under a prefix, and under DispatcherMiddleware."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from app import AIProxy, create_app
from app.config import load_config
from tests.conftest import TOKEN

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "mounted fine"}]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = {
    "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
    "models": [{"name": "echo", "provider": "echo"}],
    "default_model": None,
}


def test_extension_under_a_prefix_leaves_the_host_app_alone():
    host = Flask("host")

    @host.get("/")
    def index():
        return "host home"

    AIProxy(host, url_prefix="/ai", overrides=CONFIG, env={})
    client = host.test_client()
    assert client.get("/").get_data(as_text=True) == "host home"
    response = client.post("/ai/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "mounted fine"
    assert client.get("/ai/ping").status_code == 200
    # The proxy's JSON errors cover its own paths only; the host keeps its own pages.
    assert client.get("/ai/nothing").json["error"]["code"] == "not_found"
    host_404 = client.get("/nothing")
    assert host_404.status_code == 404 and "x-request-id" not in host_404.headers
    assert not host_404.is_json


def test_init_app_later_with_a_config_object():
    proxy = AIProxy(config=load_config(env={}, overrides=CONFIG))
    host = Flask("host")
    proxy.init_app(host, url_prefix="/llm")
    response = host.test_client().post("/llm/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200


def test_create_app_under_dispatcher_middleware():
    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(
        outer.wsgi_app, {"/proxy": create_app({**CONFIG, "env": {}})}
    )
    client = Client(outer)
    response = client.post("/proxy/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "mounted fine"
