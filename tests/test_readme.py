"""The README's examples work as written: mounting, the SDK example, Claude Code's names."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest
import yaml

from app import create_app
from tests.servers import ROOT, ProxyServer, clean_env

README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def code_block(language: str, marker: str) -> str:
    """The one README block in `language` that contains `marker`."""
    blocks = [body for lang, body in FENCE.findall(README) if lang == language and marker in body]
    assert len(blocks) == 1, f"{len(blocks)} {language} blocks contain {marker!r}"
    return blocks[0]


def test_the_top_says_how_to_change_the_port():
    top = README.split("---", 1)[0]
    assert "PORT=9000 .venv/bin/ai-proxy serve" in top
    assert "--addr" in top and "already in use" in top


MOUNT_CHECK = """
import json

chat = {"model": "echo", "messages": [{"role": "user", "content": "mounted"}]}
client = host.test_client()
answer = client.post("/llm/v1/chat/completions", json=chat)
other_client = other.test_client()
print(json.dumps({
    "index": client.get("/").get_data(as_text=True),
    "status": answer.status_code,
    "content": (answer.json or {}).get("choices", [{}])[0].get("message", {}).get("content"),
    "models": client.get("/llm/v1/models").status_code,
    "other": other_client.post("/llm/v1/chat/completions", json=chat).status_code,
    "elsewhere": other_client.get("/elsewhere").status_code,
}))
"""


def test_the_mounting_example_runs_as_written(tmp_path):
    # Run as a user's own host.py, in its own folder and process, importing the installed
    # package by the name the README gives (not as __main__, so it does not start a server).
    path = tmp_path / "host.py"
    path.write_text(code_block("python", "DispatcherMiddleware") + MOUNT_CHECK)
    result = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('host.py', run_name='host')"],
        cwd=tmp_path,
        env=clean_env(AI_PROXY_CONFIG=str(ROOT / "conf/config.yaml")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["index"] == "the host app"
    assert seen["status"] == 200 and seen["content"] == "mounted"
    assert seen["models"] == 200 and seen["other"] == 200
    # The app's own 404 is untouched outside the prefix.
    assert seen["elsewhere"] == 404


def test_the_openai_example_prints_no_none(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "default_model": "SMALL",
                "models": [
                    {"name": "echo", "provider": "echo", "model_size": "SMALL"},
                    {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
                ],
            }
        )
    )
    proxy = ProxyServer(config, threads=4).start()
    try:
        code = code_block("python", "from openai import OpenAI")
        assert "http://127.0.0.1:8080/v1" in code
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code.replace("http://127.0.0.1:8080", proxy.url), "README", "exec"), {})
    finally:
        proxy.stop()
    printed = out.getvalue()
    assert printed == "hi\none word at a time\n"
    assert "None" not in printed


CLAUDE_CODE_IDS = ("claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001")


def _example_app(aliases: dict | None = None):
    """conf/config.example.yaml with every key variable set, as a user with all keys has it."""
    text = (ROOT / "conf/config.example.yaml").read_text()
    env = {name: "sk-test-key" for name in re.findall(r"\$\{([A-Z0-9_]+)\}", text)}
    overrides = {"config_path": str(ROOT / "conf/config.example.yaml"), "env": env}
    if aliases:
        overrides["aliases"] = aliases
    return create_app(overrides), env


@pytest.mark.parametrize("source", ["conf/config.example.yaml", "README"])
def test_claude_code_model_ids_resolve(source):
    readme_aliases = yaml.safe_load(code_block("yaml", "claude-sonnet-4-5"))["aliases"]
    app, env = _example_app(readme_aliases if source == "README" else None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {env['TEAM_A_TOKEN']}"}
    shell = code_block("sh", "ANTHROPIC_BASE_URL")
    exported = dict(re.findall(r"export (ANTHROPIC_DEFAULT_\w+_MODEL)=(\S+)", shell))
    assert set(exported) == {"ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL"}
    for model in (*CLAUDE_CODE_IDS, *exported.values()):
        response = client.get(f"/v1/models/{model}", headers=headers)
        assert response.status_code == 200, (model, response.get_data(as_text=True))


def test_claude_code_example_uses_the_variables_claude_code_reads():
    shell = code_block("sh", "ANTHROPIC_BASE_URL")
    assert "export ANTHROPIC_BASE_URL=http://127.0.0.1:8080 " in shell
    assert "export ANTHROPIC_AUTH_TOKEN=" in shell
    # ANTHROPIC_SMALL_FAST_MODEL is what old versions read; current ones read the DEFAULT_* names.
    assert "ANTHROPIC_SMALL_FAST_MODEL" not in shell


def test_the_gemini_example_runs_as_written(tmp_path):
    config = tmp_path / "config.yaml"
    models = [
        {"name": "echo", "provider": "echo", "model_size": "SMALL"},
        {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
    ]
    token = "sk-readme-gemini"
    config.write_text(
        yaml.safe_dump({"models": models, "auth": {"tokens": [{"name": "readme", "token": token}]}})
    )
    proxy = ProxyServer(config, threads=4).start()
    try:
        code = code_block("python", "from google import genai")
        assert 'base_url="http://127.0.0.1:8080"' in code
        code = code.replace("http://127.0.0.1:8080", proxy.url).replace("<client token>", token)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README", "exec"), {})
    finally:
        proxy.stop()
    assert out.getvalue() == "hi\none word at a time\n"


def test_the_gemini_cli_example_sets_the_variables_the_cli_reads():
    block = code_block("sh", "GOOGLE_GEMINI_BASE_URL")
    assert "export GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8080\n" in block
    assert "export GEMINI_API_KEY=" in block
