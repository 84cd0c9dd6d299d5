"""The benchmark's report (bench/goals.py, bench/report.py) rendered from a small fixed results
dict: a section for each part that ran, goals judged, unmeasured figures as dashes, the plot."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import goals  # noqa: E402
import processes  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

HEADINGS = [
    "# ai-proxy benchmark results",
    "## Goals",
    "## Non-streaming throughput and latency",
    "## Added latency at concurrency 1 (median)",
    "## Streaming",
    "## Open streams",
    "## Memory under a soak",
    "## Quota cost",
]


def load_row(target: str, conc: int, rps: float, p50: float) -> dict:
    server = None if target == "direct" else 90.0
    return {
        "target": target,
        "concurrency": conc,
        "tool": "python",
        "rounds": 1,
        "rps": rps,
        "rps_min": rps,
        "rps_max": rps,
        "p50_ms": p50,
        "p90_ms": p50 * 1.5,
        "p99_ms": p50 * 3,
        "max_ms": p50 * 5,
        "server_cpu_pct": server,
        "server_cpu_ms_per_req": None if server is None else 1.5,
        "busiest_worker_pct": None if server is None else 55.0,
        "upstream_cpu_pct": 10.0,
        "loadgen_cpu_pct": 20.0,
        "other_cpu_pct": 3.0,
        "steal_pct": 0.0,
        "requests": int(rps),
        "errors": 0,
        "non_2xx": 0,
    }


def stream_summary(delay_max: float, streams: int = 8, ttfb: float = 2.0) -> dict:
    return {
        "streams": streams,
        "failed": 0,
        "peak_open": streams,
        "chunks": streams * 20,
        "expected_chunks": streams * 20,
        "ttfb_p50_ms": ttfb,
        "ttfb_p99_ms": ttfb * 2,
        "delay_p50_ms": 0.3,
        "delay_p99_ms": delay_max,
        "delay_max_ms": delay_max,
        "first_delay_p50_ms": 0.5,
        "first_delay_max_ms": delay_max,
        "later_delay_p99_ms": 0.4,
        "later_delay_max_ms": 0.4,
        "other_cpu_pct": 1.0,
        "problems": [],
    }


@pytest.fixture
def results() -> dict:
    """Every part's results, as small as the report allows."""
    # At concurrency 16 each target is twice as fast as at 1, and 8 times as slow per request.
    base = {"direct": (9000.0, 0.1), "bare": (500.0, 1.6), "proxy": (480.0, 1.7)}
    base["proxy-redis"] = (470.0, 1.8)
    load = [
        load_row(target, conc, rps * (2 if conc == 16 else 1), p50 * (8 if conc == 16 else 1))
        for conc in (1, 16)
        for target, (rps, p50) in base.items()
    ]
    runs = {
        pattern: {
            target: stream_summary(1.0, 20, ttfb)
            for target, ttfb in zip(("direct", "bare", "proxy"), (1.0, 3.0, 3.2), strict=True)
        }
        for pattern in ("held", "burst")
    }
    memory = {
        target: {key: [40.0, 41.0] for key in ("rest", "peak_held", "after_held")}
        for target in ("bare", "proxy")
    }
    return {
        "date": "2026-01-02 03:04 UTC",
        "info": {
            "revision": "abc1234",
            "nproc": 2,
            "cpu_model": "Test CPU",
            "kernel": "6.0",
            "python": "3.11.7",
            "python_impl": "CPython",
            "versions": {"Flask": "3.1", "gunicorn": "23.0"},
            "loadgen": "Python asyncio load generator",
        },
        "proxy_log": "proxy log: 10 lines for about 9 measured requests",
        "settings": {
            "duration_s": 1.0,
            "rounds": 1,
            "warmup_s": 0.5,
            "workers": 2,
            "threads": 64,
            "streams": 8,
            "stream_rounds": 1,
            "chunks": 20,
            "interval_ms": 50.0,
            "upstream_procs": 1,
            "log_level": "INFO",
            "quiet_threshold": 20.0,
            "nice": 0,
            "retries": 0,
            "quiet_budget_s": 0.0,
            "quiet_spent_s": 0.0,
        },
        "load": load,
        "streams": {"bare": stream_summary(0.9), "proxy": stream_summary(1.2)},
        "open_streams": {
            "streams": 20,
            "seconds": 3,
            "threads": 60,
            "workers": 2,
            "spreads": {"held": 1.5, "burst": 1.0},
            "runs": runs,
            "memory": memory,
        },
        "soak": {
            "requests": 1000,
            "errors": 0,
            "seconds": 2.0,
            "threads": 64,
            "samples": [
                {"requests": 0, "rss": [40.0, 40.5]},
                {"requests": 500, "rss": [42.0, 42.5]},
                {"requests": 1000, "rss": [42.1, 42.6]},
            ],
        },
        "quotas": [
            {
                "storage": "memory",
                "limits": "typical",
                "strategy": "fixed-window",
                "admit_p50_ms": 0.02,
                "admit_p99_ms": 0.07,
                "charge_p50_ms": 0.001,
                "charge_p99_ms": 0.004,
            }
        ],
    }


def headings(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("#")]


def render(results: dict) -> str:
    return report.render(results, goals.evaluate(results), ".venv/bin/python bench/run.py")


def test_full_report_has_every_section_in_order(results):
    markdown = render(results)
    assert headings(markdown) == HEADINGS
    assert "- **Command:** `.venv/bin/python bench/run.py`" in markdown
    # The quota section compares proxy-redis with proxy end to end: 1.8 - 1.7 ms at c=1.
    assert "**+0.100 ms** for Redis" in markdown
    assert "| memory | typical | fixed-window | 0.020 | 0.070 | 0.001 | 0.004 |" in markdown
    assert "proxy = `gunicorn -c conf/gunicorn.conf.py wsgi:app`" in markdown


def test_the_proxy_s_own_environment_is_in_its_command(results):
    results["settings"]["proxy_env"] = {"PYTHONMALLOC": "malloc", "ODD": "a b"}
    markdown = render(results)
    assert "proxy = `PYTHONMALLOC=malloc ODD='a b' gunicorn -c conf/gunicorn.conf.py" in markdown


@pytest.mark.parametrize(
    ("given", "env"),
    [
        ([], {}),
        (["--proxy-env", "PYTHONMALLOC=malloc"], {"PYTHONMALLOC": "malloc"}),
        (
            ["--proxy-env", "A=1", "--proxy-env", "B=x=y", "--proxy-env", "C="],
            {"A": "1", "B": "x=y", "C": ""},
        ),
    ],
)
def test_proxy_env_takes_name_value_pairs(given, env):
    assert run.parse_args(given).proxy_env == env


@pytest.mark.parametrize("pair", ["PYTHONMALLOC", "=x", "1A=x", "A B=x", "A-B=x"])
def test_proxy_env_refuses_anything_else(pair, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--proxy-env", pair])
    assert "--proxy-env takes NAME=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("missing", "gone"),
    [
        (("streams",), {"## Streaming"}),
        (("open_streams",), {"## Open streams"}),
        (("soak",), {"## Memory under a soak"}),
        # Without the in-process figures the end-to-end Redis comparison still makes a section.
        (("quotas",), set()),
        (("quotas", "proxy-redis"), {"## Quota cost"}),
    ],
)
def test_a_part_that_did_not_run_has_no_section(results, missing, gone):
    for part in missing:
        if part == "streams":
            results["streams"] = {}
        elif part == "proxy-redis":
            results["load"] = [r for r in results["load"] if r["target"] != "proxy-redis"]
        else:
            del results[part]
    assert headings(render(results)) == [h for h in HEADINGS if h not in gone]


def goal_results(results: dict) -> list[str]:
    return [
        line.rsplit("|", 2)[1].strip()
        for line in render(results).split("## Goals", 1)[1].split("\n## ", 1)[0].splitlines()
        if line.startswith("| ") and not line.startswith(("| goal", "| ---"))
    ]


def test_goals_pass(results):
    assert goal_results(results) == ["**PASS**"] * 9


@pytest.mark.parametrize(
    ("change", "missed"),
    [
        # proxy at 16 below 90% of bare's throughput
        (lambda r: goals.find(r["load"], "proxy", 16).update(rps=890.0), 0),
        # proxy's CPU per request at 16 over 1.15x bare's
        (lambda r: goals.find(r["load"], "proxy", 16).update(server_cpu_ms_per_req=1.8), 1),
        # c=1 p50 0.2 ms over bare's
        (lambda r: goals.find(r["load"], "proxy", 1).update(p50_ms=1.8), 2),
        # a streamed chunk 6 ms late
        (lambda r: r["streams"]["proxy"].update(delay_max_ms=6.0), 3),
        # the burst's added TTFB p99 1.5x the bare forwarder's
        (lambda r: r["open_streams"]["runs"]["burst"]["proxy"].update(ttfb_p99_ms=8.0), 5),
        # a worker over 60 MB after the soak
        (lambda r: r["soak"]["samples"][-1].update(rss=[61.0, 42.6]), 6),
        # quotas in Redis 0.26 ms over memory quotas at c=1 (the goal is under 0.25)
        (lambda r: goals.find(r["load"], "proxy-redis", 1).update(p50_ms=1.96), 7),
        # quotas in Redis at 16 under 90% of memory quotas' 960 req/s
        (lambda r: goals.find(r["load"], "proxy-redis", 16).update(rps=863.0), 8),
    ],
)
def test_a_goal_out_of_reach_is_missed(results, change, missed):
    changed = copy.deepcopy(results)
    change(changed)
    verdicts = goal_results(changed)
    assert verdicts[missed] == "**MISS**"
    assert verdicts.count("**MISS**") == 1


def with_peers(results: dict, portkey_rps: float, litellm_rps: float) -> dict:
    """The results of a run with --peers: both peers' load rows and every server's RSS."""
    changed = copy.deepcopy(results)
    for conc, scale in ((1, 1), (16, 2)):
        changed["load"].append(load_row("portkey", conc, portkey_rps * scale, 1.8))
        changed["load"].append(load_row("litellm", conc, litellm_rps * scale, 12.0))
    changed["rss_mb"] = {"bare": 110.0, "proxy": 120.0, "portkey": 190.0, "litellm": 990.0}
    changed["peers"] = {
        "versions": {"litellm": "1.2.3", "portkey": "4.5.6", "node": "v20"},
        "ran": ["portkey", "litellm"],
        "skipped": {},
    }
    return changed


def test_peers_get_rows_and_goals(results):
    markdown = render(with_peers(results, 300.0, 40.0))
    assert "## Side by side" in headings(markdown)
    assert "| Portkey gateway 4.5.6 (node v20, 1 process) | 300 | 1.800 |" in markdown
    assert "| LiteLLM proxy 1.2.3 (2 uvicorn workers) | 40 | 12.000 |" in markdown
    assert "| ai-proxy | 480 | 1.700 |" in markdown
    # 960 req/s at 16 is 1.6x portkey's 600 and 12x litellm's 80; p50 1.7 under 1.8; RSS lower.
    assert goal_results(with_peers(results, 300.0, 40.0))[9:] == ["**PASS**"] * 4


def test_a_faster_peer_misses_its_goal(results):
    # Portkey at 800 req/s at 16: the proxy's 960 is 1.2x, under 1.3x.
    verdicts = goal_results(with_peers(results, 400.0, 40.0))
    assert verdicts[9] == "**MISS**" and verdicts.count("**MISS**") == 1


def test_pss_is_shown_beside_rss_and_the_goal_stays_on_rss(results):
    changed = with_peers(results, 300.0, 40.0)
    # RSS over Portkey's (the goal misses) while PSS, shared pages counted once, is under it.
    changed["rss_mb"]["proxy"] = 200.0
    changed["pss_mb"] = {"bare": 80.0, "proxy": 95.0, "portkey": 188.0, "litellm": 900.0}
    markdown = render(changed)
    assert "| RSS MB | PSS MB |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| ai-proxy |"))
    assert row.endswith(" | 200 | 95 |"), row
    goal_line = next(line for line in markdown.splitlines() if "proxy RSS (all" in line)
    assert "(PSS: proxy 95, portkey 188, litellm 900 MB)" in goal_line
    assert goal_line.endswith("**MISS** |")
    # A run without PSS (an older results.json) has the RSS column alone.
    del changed["pss_mb"]
    markdown = render(changed)
    assert "| RSS MB |" in markdown and "PSS" not in markdown


def test_pss_counts_pages_shared_after_fork_once():
    """Two processes sharing 64 MB written before a fork: each one's RSS holds all of it, their
    PSS together holds it once."""
    import os
    import signal

    ballast = bytearray(os.urandom(1 << 20)) * 64
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        os.write(write, b"x")
        signal.pause()
        os._exit(0)
    try:
        os.close(write)
        assert os.read(read, 1) == b"x"
        parent, forked = os.getpid(), child
        rss = processes.rss_mb(parent) + processes.rss_mb(forked)
        pss = processes.pss_mb(parent) + processes.pss_mb(forked)
        assert rss - pss > 50, (rss, pss)
        assert processes.pss_mb(parent) > 32
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read)
    assert len(ballast) == 64 << 20
    # Gone: no figure at all rather than a wrong one.
    assert processes.pss_mb(child) != processes.pss_mb(child)


def test_figures_not_measured_are_dashes(results):
    direct = next(
        line for line in render(results).splitlines() if line.startswith("| 1 | direct |")
    )
    cells = [cell.strip() for cell in direct.strip("|").split("|")]
    # server CPU, CPU/req and busiest worker: the direct target has no server of its own.
    assert cells[8:11] == ["–", "–", "–"]


def test_plot_writes_a_png(results, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "results.png"
    assert report.plot(results, path)
    assert path.read_bytes().startswith(b"\x89PNG")
