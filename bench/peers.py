"""The peers `bench/run.py --peers` runs beside the proxy: a pinned LiteLLM proxy and a pinned
Portkey gateway, installed into the git-ignored .peers/ folder and pointed at the same fake
upstream, with the same model, request and (where the peer has one) client token.

    .venv/bin/python bench/run.py --peers            # installs on first use, then reuses
    .venv/bin/python bench/peers.py --install        # only install (or check) both

* LiteLLM: `litellm[proxy]` from PyPI at LITELLM_VERSION in a venv of its own
  (.peers/litellm-<version>), run as `litellm --config ... --num_workers <workers>` (uvicorn
  workers), one `openai/` model on the fake upstream, the benchmark's client token as its
  master key, its model cost map read from the package (no network).
* Portkey: the npm package `@portkey-ai/gateway` at PORTKEY_VERSION (.peers/portkey-<version>),
  run with the machine's node as `node build/start-server.js --port=N --headless` (one
  process: the gateway is single-threaded). The open-source gateway has no client tokens: each
  request names its provider and upstream in `x-portkey-*` headers and carries the upstream's
  key, which the load generator sends for it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import processes  # noqa: E402
from common import CLIENT_TOKEN, MODEL, ROOT, UPSTREAM_KEY, log  # noqa: E402

# The newest LiteLLM whose `proxy` extra installs from the registry this runs against (later
# ones pin `litellm-proxy` / `litellm-proxy-extras` releases it lacks).
LITELLM_VERSION = "1.108.0"
PORTKEY_VERSION = "1.15.2"
PEERS_DIR = ROOT / ".peers"
NODE = "/usr/bin/node"
PEERS = ("litellm", "portkey")
INSTALL_TIMEOUT_S = 1800


@dataclass
class Peer:
    """A peer up and answering: its chat URL, process and the headers each request carries."""

    name: str
    url: str
    proc: subprocess.Popen
    headers: dict[str, str] = field(default_factory=dict)
    version: str = ""


def litellm_dir() -> Path:
    return PEERS_DIR / f"litellm-{LITELLM_VERSION}"


def portkey_dir() -> Path:
    return PEERS_DIR / f"portkey-{PORTKEY_VERSION}"


def _installed_litellm() -> bool:
    python = litellm_dir() / "bin" / "python"
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.stdout.strip() == LITELLM_VERSION and (litellm_dir() / "bin" / "litellm").exists()


def install_litellm() -> Path:
    """LiteLLM's proxy in its own venv (pip, the ordinary client): the `litellm` command."""
    venv = litellm_dir()
    if not _installed_litellm():
        log(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv.relative_to(ROOT)}")
        PEERS_DIR.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
            check=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    return venv / "bin" / "litellm"


def portkey_entry() -> Path:
    return portkey_dir() / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def _installed_portkey() -> bool:
    manifest = portkey_entry().parent.parent / "package.json"
    try:
        return json.loads(manifest.read_text())["version"] == PORTKEY_VERSION
    except (OSError, ValueError, KeyError):
        return False


def install_portkey() -> Path:
    """The Portkey gateway from npm (no install scripts run): its start-server.js."""
    if not _installed_portkey():
        where = portkey_dir()
        log(f"installing @portkey-ai/gateway@{PORTKEY_VERSION} into {where.relative_to(ROOT)}")
        where.mkdir(parents=True, exist_ok=True)
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed (apt-get install -y npm)")
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(where),
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                f"@portkey-ai/gateway@{PORTKEY_VERSION}",
            ],
            check=True,
            timeout=INSTALL_TIMEOUT_S,
            stdout=subprocess.DEVNULL,
        )
    return portkey_entry()


def litellm_config(upstream_url: str) -> str:
    """One OpenAI-compatible model on the fake upstream, the client token as the master key."""
    return json.dumps(
        {
            "model_list": [
                {
                    "model_name": MODEL,
                    "litellm_params": {
                        "model": "openai/bench-upstream",
                        "api_base": f"{upstream_url}/v1",
                        "api_key": UPSTREAM_KEY,
                    },
                }
            ],
            "general_settings": {"master_key": CLIENT_TOKEN},
            "litellm_settings": {"telemetry": False, "drop_params": True},
        },
        indent=2,
    )


def start_litellm(
    children: processes.Children, workdir: Path, upstream_url: str, workers: int, name: str
) -> Peer:
    binary = install_litellm()
    port = processes.free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(litellm_config(upstream_url))  # JSON is YAML
    env = processes.child_env(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
    )
    cmd = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", str(workers)]
    log_path = workdir / f"{name}.log"
    proc = children.start(name, cmd, env, log_path)
    base = f"http://127.0.0.1:{port}"
    processes.wait_healthy(name, base + "/health/liveliness", proc, log_path, timeout=180)
    _wait_workers(proc.pid, workers)
    return Peer(name, base + "/v1/chat/completions", proc, {}, LITELLM_VERSION)


def start_portkey(
    children: processes.Children, workdir: Path, upstream_url: str, name: str
) -> Peer:
    entry = install_portkey()
    if not Path(NODE).exists():
        raise RuntimeError(f"{NODE} not found: the Portkey gateway needs node")
    port = processes.free_port()
    env = processes.child_env(NODE_ENV="production", ENVIRONMENT="production")
    cmd = [NODE, str(entry), f"--port={port}", "--headless"]
    log_path = workdir / f"{name}.log"
    proc = children.start(name, cmd, env, log_path)
    base = f"http://127.0.0.1:{port}"
    processes.wait_healthy(name, base + "/", proc, log_path, timeout=60)
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"{upstream_url}/v1",
        # Portkey has no client tokens of its own: the upstream's key goes in Authorization.
        "Authorization": f"Bearer {UPSTREAM_KEY}",
    }
    return Peer(name, base + "/v1/chat/completions", proc, headers, PORTKEY_VERSION)


def _wait_workers(master: int, workers: int) -> None:
    """LiteLLM's uvicorn answers health from its first worker: wait for the others to appear."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(processes.worker_pids(master)) >= workers:
            break
        time.sleep(0.2)
    time.sleep(2.0)


def start(
    which: str, children: processes.Children, workdir: Path, upstream_url: str, workers: int
) -> Peer:
    if which == "litellm":
        return start_litellm(children, workdir, upstream_url, workers, which)
    return start_portkey(children, workdir, upstream_url, which)


def versions() -> dict[str, str]:
    return {"litellm": LITELLM_VERSION, "portkey": PORTKEY_VERSION, "node": _node_version()}


def _node_version() -> str:
    try:
        return subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install (or check) the benchmark's peers.")
    parser.add_argument("--install", action="store_true", help="install both into .peers/")
    args = parser.parse_args(argv)
    if args.install:
        install_litellm()
        install_portkey()
    print(
        json.dumps(
            {
                "installed": {"litellm": _installed_litellm(), "portkey": _installed_portkey()},
                **versions(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
