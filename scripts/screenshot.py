"""Make docs/status-page.png: a proxy with the echo models and a failing stub deployment, some
traffic, and the status page signed in, in headless Chromium (Debian's chromium-driver).

    .venv/bin/python scripts/screenshot.py [--out docs/status-page.png]
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import chromium, missing  # noqa: E402
from tests.servers import ProxyServer, wait_until  # noqa: E402
from tests.stub_upstream import Reply, StubUpstream, chat_completion  # noqa: E402

ADMIN = "admin-token-for-the-screenshot"
TOKENS = {"team-a": "sk-team-a-screenshot", "team-b": "sk-team-b-screenshot"}


def config(upstream: StubUpstream) -> dict:
    return {
        "auth": {
            "tokens": [
                {
                    "name": "team-a",
                    "token": TOKENS["team-a"],
                    "requests_per_minute": 60,
                    "budget_per_day": 5,
                },
                {"name": "team-b", "token": TOKENS["team-b"], "tokens_per_day": 20000},
            ],
            "admin_token": ADMIN,
        },
        "models": [
            {"name": "echo", "provider": "echo", "model_size": "SMALL"},
            {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
            {
                "name": "stub-gpt",
                "provider": "openai",
                "base_url": upstream.url + "/v1",
                "token": "sk-stub-upstream-key",
                "model": "gpt-stub",
                "input_cost_per_mtok": 2.5,
                "output_cost_per_mtok": 10,
            },
        ],
        "retry": {"max_retries": 0},
        "routing": {"cooldown_seconds": 300},
    }


def traffic(proxy: ProxyServer, upstream: StubUpstream) -> None:
    def chat(model: str, token: str) -> None:
        requests.post(
            proxy.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "status page demo"}]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    for i in range(9):
        chat("echo", TOKENS["team-a"] if i % 3 else TOKENS["team-b"])
    for _ in range(4):
        chat("echo-large", TOKENS["team-b"])
    upstream.default = Reply(
        body=chat_completion(
            usage={"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
        )
    )
    for _ in range(3):
        chat("stub-gpt", TOKENS["team-a"])
    # Then its upstream fails: the deployment cools down.
    upstream.default = Reply(status=503, body={"error": {"message": "overloaded"}})
    chat("stub-gpt", TOKENS["team-a"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/status-page.png"))
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"screenshot: {reason}", file=sys.stderr)
        return 1
    from selenium.webdriver.common.by import By

    upstream = StubUpstream()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config(upstream)))
        proxy = ProxyServer(path).start()
        driver = chromium(width=1280, height=900)
        try:
            traffic(proxy, upstream)
            driver.get(proxy.url + "/admin")
            driver.find_element(By.ID, "token").send_keys(ADMIN)
            driver.find_element(By.ID, "sign-in").click()
            wait_until(lambda: driver.find_elements(By.ID, "deployments"), timeout=10)
            # Let the page's script refresh once, so the "live" mark shows.
            wait_until(lambda: driver.find_element(By.ID, "live").text == "live", timeout=10)
            # The whole page, not only the window's height.
            shot = driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
            )
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_bytes(base64.b64decode(shot["data"]))
            print(f"screenshot: wrote {args.out}")
        finally:
            driver.quit()
            proxy.stop()
            upstream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
