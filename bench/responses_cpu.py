"""What a translated Responses request costs in proxy CPU over the same chat request.

    .venv/bin/python bench/responses_cpu.py [--requests 3000]

In-process (Flask's test client, no sockets), against the offline `echo` model, so the numbers
are the proxy's own work: validation, translation, routing, the answer or its events. Each form
is run whole and streamed, alternating rounds so drift hits both alike; prints the CPU time per
request of each and the difference (the issue's goal: at most 0.1 ms more than chat).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402

TEXT = "tell me a short story about a proxy in ten words or so please"
CHAT = {"model": "echo", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": TEXT}]}  # fmt: skip
RESPONSES = {"model": "echo", "instructions": "Be brief.", "input": TEXT, "store": False}
ROUNDS = 5


def cpu_per_request(client, path: str, body: dict, count: int) -> float:
    """Process CPU seconds per request, the whole answer read."""
    started = time.process_time()
    for _ in range(count):
        response = client.post(path, json=body)
        response.get_data()
        response.close()
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    app = create_app({"env": {}, "config_path": None, "default_model": None,
                      "models": [{"name": "echo", "provider": "echo"}]})  # fmt: skip
    client = app.test_client()
    per_round = max(1, args.requests // ROUNDS)
    for stream in (False, True):
        times = {"chat": [], "responses": []}
        for _ in range(ROUNDS):
            times["chat"].append(
                cpu_per_request(
                    client, "/v1/chat/completions", {**CHAT, "stream": stream}, per_round
                )
            )
            times["responses"].append(
                cpu_per_request(client, "/v1/responses", {**RESPONSES, "stream": stream}, per_round)
            )
        chat, responses = min(times["chat"]), min(times["responses"])
        form = "streamed" if stream else "whole"
        print(
            f"{form:8} chat {chat * 1e3:.3f} ms  responses {responses * 1e3:.3f} ms  "
            f"added {(responses - chat) * 1e3:+.3f} ms CPU per request"
        )


if __name__ == "__main__":
    main()
