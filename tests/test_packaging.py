"""The installed package: importable as `ai_proxy` beside a host project's own `app`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.servers import clean_env

HOST = textwrap.dedent(
    """
    import json

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    import app  # the host project's own package, not the proxy
    from ai_proxy import create_app

    proxy = create_app({
        "models": [{"name": "echo", "provider": "echo"}],
        "default_model": None,
        "auth": {"tokens": [{"name": "host", "token": "sk-host-token-1"}]},
    })
    site = DispatcherMiddleware(app.host_app, {"/llm": proxy})
    client = Client(site)
    own = client.get("/")
    answer = client.post(
        "/llm/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "mounted"}]},
        headers={"Authorization": "Bearer sk-host-token-1"},
    )
    print(json.dumps({
        "own": own.get_data(as_text=True),
        "status": answer.status_code,
        "content": answer.get_json()["choices"][0]["message"]["content"],
        "app_file": app.__file__,
    }))
    """
)


def test_a_host_with_its_own_app_package_mounts_the_proxy(tmp_path: Path):
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text(
        "def host_app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'the host']\n"
    )
    (tmp_path / "host.py").write_text(HOST)
    result = subprocess.run(
        [sys.executable, "host.py"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["own"] == "the host"
    assert seen["status"] == 200 and seen["content"] == "mounted"
    # The host's `app` is its own; the proxy never imported itself under that name.
    assert seen["app_file"] == str(package / "__init__.py")


def test_every_import_inside_the_package_is_relative():
    root = Path(__file__).resolve().parent.parent / "app"
    offenders = [
        f"{path.relative_to(root.parent)}:{number}"
        for path in root.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(("from app.", "from app import", "import app"))
    ]
    assert offenders == []
