"""The benchmark's report: results.md (its set-up, the goals, then a section a part) and the
results.png plot, both from the results dict of a run."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import quotas
import streams as open_streams
from common import TARGETS, log, ms, pct
from goals import GOAL_WORKER_RSS_MB, find


def render(results: dict, goals: list[dict], command: str) -> str:
    """results.md: every section whose part ran, in a fixed order."""
    lines = [
        *_setup(results, command),
        *_goals(results, goals),
        *_load(results),
        *_side_by_side(results),
        *_added_latency(results["load"]),
        *_streaming(results),
        "",
        *open_streams.render(results.get("open_streams"), results.get("soak")),
        *_quota_cost(results),
    ]
    if results.get("plot"):
        lines += ["", f"![throughput, latency and memory]({results['plot']})"]
    lines.append("")
    return "\n".join(lines)


def _setup(results: dict, command: str) -> list[str]:
    info, settings = results["info"], results["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    # Set by --proxy-env for the proxy's processes alone (reports from before it have none).
    proxy_env = "".join(
        f"{name}={shlex.quote(value)} " for name, value in settings.get("proxy_env", {}).items()
    )
    return [
        "# ai-proxy benchmark results",
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {results['date']}; proxy code at git {info['revision']}",
        f"- **Machine:** nproc={info['nproc']} ({info['cpu_model']}), Linux {info['kernel']}, "
        f"{info['python_impl']} {info['python']}; {versions}",
        f"- **Load generator:** {info['loadgen']}. It, the fake upstream, the bare forwarder and "
        f"the proxy all share the same {info['nproc']} cores, so absolute numbers are low and "
        "the comparison between rows is what counts.",
        f"- **Servers:** proxy = `{proxy_env}gunicorn -c conf/gunicorn.conf.py wsgi:app` (gthread, "
        f"WEB_CONCURRENCY={settings['workers']}, THREADS={settings['threads']}, auth on, "
        "quotas on for the client token and the deployment (`requests_per_minute`, "
        "`tokens_per_minute`: counted on every request, never reached), metrics on, "
        f"LOG_LEVEL={settings['log_level']}, {results['proxy_log']}); proxy-redis = the same "
        "with its quotas in a local redis-server; bare = `bench/bare.py` "
        "(Flask + one requests.Session) under the same gunicorn options; direct = the client "
        f"straight to the fake upstream (`bench/upstream.py`, asyncio, "
        f"{settings['upstream_procs']} process).",
        f"- **Per point:** {settings['rounds']} round(s), interleaved across targets, of "
        f"{settings['warmup_s']:g} s warm-up + {settings['duration_s']:g} s measured; the tables "
        "give the median over rounds. Every process of the run has niceness "
        f"{settings['nice']}, to be disturbed less by other work on a shared machine. "
        "Before each measurement the run waits for other processes "
        f"to use under {settings['quiet_threshold']:.0f}% of a core, and measures again (up to "
        f"{settings['retries']} times) when they took more meanwhile (this run spent "
        f"{settings['quiet_spent_s']:.0f} s so). POST /v1/chat/completions, "
        "non-streaming, keep-alive connections.",
        "",
    ]


def _goals(results: dict, goals: list[dict]) -> list[str]:
    """The goals table, and a note when other processes still disturbed a measurement."""
    lines = ["## Goals", "", "| goal | measured | result |", "| --- | --- | --- |"]
    for goal in goals:
        lines.append(
            f"| {goal['goal']} | {goal['measured']} | "
            f"{'–' if goal['pass'] is None else '**PASS**' if goal['pass'] else '**MISS**'} |"
        )
    settings = results["settings"]
    limit = settings["quiet_threshold"]
    busy = [r for r in results["load"] if (r["other_cpu_pct"] or 0) > limit]
    busy += [s for s in results["streams"].values() if (s.get("other_cpu_pct") or 0) > limit]
    if busy:
        lines += [
            "",
            f"> **Note:** even after waiting and {settings['retries']} retries, processes outside "
            f"this benchmark took more than {limit:.0f}% of a core during {len(busy)} "
            "measurement(s) (see the *other CPU* columns): those numbers are noisier.",
        ]
    return lines


def _load(results: dict) -> list[str]:
    info, settings, load = results["info"], results["settings"], results["load"]
    lines = [
        "",
        "## Non-streaming throughput and latency",
        "",
        "CPU columns are percent of one core over the measured interval (the machine has "
        f"{info['nproc'] * 100}%); *CPU/req* is the server's (all its gunicorn processes') CPU "
        "time per request; *busiest worker* is the share of that CPU spent by the busiest "
        f"process of the server (with {settings['workers']} workers, "
        f"{100 / settings['workers']:.0f}% is an even spread; gunicorn does not balance "
        "keep-alive connections, so one worker can end up with most of them); *other* is CPU "
        "used meanwhile by processes outside this benchmark.",
        "",
        "| concurrency | target | req/s | req/s range | p50 ms | p90 ms | p99 ms | errors | "
        "server CPU | CPU/req ms | busiest worker | upstream CPU | load-gen CPU | other CPU | "
        "vs bare |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for row in load:
        bare = find(load, "bare", row["concurrency"])
        rel = f"{row['rps'] / bare['rps']:.0%}" if bare and bare["rps"] else "–"
        lines.append(
            f"| {row['concurrency']} | {row['target']} | {row['rps']:.0f} | "
            f"{row['rps_min']:.0f}–{row['rps_max']:.0f} | {ms(row['p50_ms'], 3)}"
            f" | {ms(row['p90_ms'], 3)} | {ms(row['p99_ms'], 3)} | "
            f"{row['errors'] + row['non_2xx']} | {pct(row['server_cpu_pct'])} | "
            f"{ms(row['server_cpu_ms_per_req'], 2)} | {pct(row['busiest_worker_pct'])} | "
            f"{pct(row['upstream_cpu_pct'])} | "
            f"{pct(row['loadgen_cpu_pct'])} | {pct(row['other_cpu_pct'])} | {rel} |"
        )
    return lines


SIDE_BY_SIDE = ("bare", "proxy", "proxy-redis", "portkey", "litellm")
SERVER_NAMES = {
    "bare": "bare forwarder (Flask + requests)",
    "proxy": "ai-proxy",
    "proxy-redis": "ai-proxy, quotas in Redis",
    "portkey": "Portkey gateway {portkey} (node {node}, 1 process)",
    "litellm": "LiteLLM proxy {litellm} ({workers} uvicorn workers)",
}


def _side_by_side(results: dict) -> list[str]:
    """One row a server: req/s, p50 and p99 at each concurrency, and its memory after the load
    (every process of the server summed)."""
    rss, load = results.get("rss_mb"), results["load"]
    if not rss:
        return []
    pss = results.get("pss_mb") or {}
    concs = sorted({r["concurrency"] for r in load})
    versions = {**results.get("peers", {}).get("versions", {}), **results["settings"]}
    lines = [
        "",
        "## Side by side",
        "",
        "Each server as measured above (same request, same fake upstream, same run); RSS is the "
        "resident memory of all of the server's processes after the load"
        + (
            ", and PSS the same with each page that processes share (gunicorn's master and "
            "workers share what was loaded before the fork) counted once, split among them"
            if pss
            else ""
        )
        + ". The peers: the Portkey gateway has no client tokens (each request carries the "
        "upstream key and `x-portkey-*` routing headers); LiteLLM checks its master key; "
        "neither has quotas set.",
        "",
        "| server | "
        + " | ".join(f"c={c} req/s | c={c} p50 ms | c={c} p99 ms" for c in concs)
        + " | RSS MB |"
        + (" PSS MB |" if pss else ""),
        "| --- | "
        + " | ".join("---: | ---: | ---:" for _ in concs)
        + " | ---: |"
        + (" ---: |" if pss else ""),
    ]
    for target in SIDE_BY_SIDE:
        rows = [find(load, target, c) for c in concs]
        if not any(rows):
            continue
        cells = []
        for row in rows:
            if row is None:
                cells += ["–", "–", "–"]
            else:
                cells += [f"{row['rps']:.0f}", ms(row["p50_ms"], 3), ms(row["p99_ms"], 3)]
        name = SERVER_NAMES[target].format(**versions)
        memory = f" | {rss.get(target, 0):.0f} |"
        if pss:
            memory += f" {pss[target]:.0f} |" if target in pss else " – |"
        lines.append(f"| {name} | " + " | ".join(cells) + memory)
    for peer, why in results.get("peers", {}).get("skipped", {}).items():
        lines.append(f"\n{peer} could not run here: {why}")
    return lines


def _added_latency(load: list[dict]) -> list[str]:
    direct1, bare1, proxy1 = (find(load, t, 1) for t in ("direct", "bare", "proxy"))
    lines = ["", "## Added latency at concurrency 1 (median)", ""]
    if bare1 and direct1:
        lines.append(
            f"- bare − direct: **{bare1['p50_ms'] - direct1['p50_ms']:+.3f} ms** "
            "(what a minimal Flask + requests hop costs)"
        )
    if proxy1 and bare1:
        lines.append(
            f"- proxy − bare: **{proxy1['p50_ms'] - bare1['p50_ms']:+.3f} ms** "
            "(what the proxy's own work costs per request)"
        )
    if proxy1 and direct1:
        lines.append(f"- proxy − direct: {proxy1['p50_ms'] - direct1['p50_ms']:+.3f} ms")
    return lines


def _streaming(results: dict) -> list[str]:
    settings, streams = results["settings"], results["streams"]
    if not streams:
        return []
    lines = [
        "",
        "## Streaming",
        "",
        f"{settings['streams']} concurrent streams (starts spread over one chunk interval) "
        f"× {settings['stream_rounds']} round(s); the upstream sends {settings['chunks']} "
        f"content chunks {settings['interval_ms']:.0f} ms apart, each stamped with its send "
        "time. TTFB = request sent → first SSE event received. Chunk delay = client receive "
        "time − upstream send time, for every content chunk (the direct row is the "
        "measuring floor). The first chunk's delay also holds the server's set-up of the "
        "answer (routing headers, after-request hooks, the response start), so it is shown "
        "apart from the later chunks', which are the relay alone.",
        "",
        "| target | streams | TTFB p50 ms | TTFB p99 ms | delay p50 ms | delay p99 ms | "
        "delay max ms | 1st chunk p50 / max ms | later chunks p99 / max ms | chunks | failed | "
        "other CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, s in streams.items():
        lines.append(
            f"| {target} | {s['streams']} | {ms(s['ttfb_p50_ms'])} | {ms(s['ttfb_p99_ms'])} | "
            f"{ms(s['delay_p50_ms'], 3)} | {ms(s['delay_p99_ms'], 3)} | "
            f"{ms(s['delay_max_ms'], 3)} | {ms(s['first_delay_p50_ms'])} / "
            f"{ms(s['first_delay_max_ms'])} | {ms(s['later_delay_p99_ms'])} / "
            f"{ms(s['later_delay_max_ms'])} | {s['chunks']}/{s['expected_chunks']} | "
            f"{s['failed']} | {pct(s.get('other_cpu_pct'))} |"
        )
    return lines


def _quota_cost(results: dict) -> list[str]:
    """Redis against memory:// end to end (from the load part), and bench/quotas.py in process."""
    load = results["load"]
    proxy_mem, proxy_redis = (find(load, t, 1) for t in ("proxy", "proxy-redis"))
    lines = []
    if results.get("quotas") or (proxy_mem and proxy_redis):
        lines += ["## Quota cost", ""]
    if proxy_mem and proxy_redis:
        lines += [
            "End to end, concurrency 1 (the same proxy and quotas; only the storage differs): "
            f"p50 {proxy_mem['p50_ms']:.3f} ms with memory://, {proxy_redis['p50_ms']:.3f} ms "
            f"with a local redis-server: **{proxy_redis['p50_ms'] - proxy_mem['p50_ms']:+.3f} "
            "ms** for Redis.",
            "",
        ]
    if results.get("quotas"):
        lines += [
            "In process (`bench/quotas.py`): *typical* = `requests_per_minute` on the client "
            "token and on the deployment; *full* = request, token and budget limits on the "
            "token, request and token limits on the deployment. Admission runs before the "
            "upstream call (client and deployment checks and the `x-ratelimit-*` window); the "
            "charge runs after the answer has been sent, so it adds nothing to the latency a "
            "client sees.",
            "",
            *quotas.render(results["quotas"]),
            "",
        ]
    return lines


def _grouped_bars(
    ax, labels: list[str], shown: list[str], value: Callable[[str, int], float], title: str
) -> None:
    """One group of bars per label, a bar per shown target in its fixed colour."""
    width = 0.8 / max(1, len(shown))
    for i, target in enumerate(shown):
        xs = [k + i * width for k in range(len(labels))]
        values = [value(target, k) for k in range(len(labels))]
        ax.bar(xs, values, width, label=target, color=f"C{TARGETS.index(target)}")
    ax.set_xticks([k + width * (len(shown) - 1) / 2 for k in range(len(labels))])
    ax.set_xticklabels(labels)
    ax.set_title(title)
    ax.legend()


def plot(results: dict, path: Path) -> bool:
    """A PNG of req/s and p50 per concurrency, open-stream TTFB and soak memory, if matplotlib is
    installed (bench/requirements)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -r bench/requirements.txt): no plot")
        return False
    load = results["load"]
    concs = sorted({r["concurrency"] for r in load})
    targets = [t for t in TARGETS if any(r["target"] == t for r in load)]
    opened, soaked = results.get("open_streams"), results.get("soak")
    panels = 2 + bool(opened) + bool(soaked)
    rows = 1 if panels <= 2 else 2
    fig, grid = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for unused in axes[panels:]:
        unused.set_visible(False)
    # direct is 10-50x faster than either server: it would flatten the throughput bars.
    bar_panels = (
        ("throughput (req/s; direct left out)", "rps", [t for t in targets if t != "direct"]),
        ("p50 latency (ms, log scale)", "p50_ms", targets),
    )
    for ax, (title, key, shown) in zip(axes[:2], bar_panels, strict=True):
        _grouped_bars(
            ax,
            [f"c={c}" for c in concs],
            shown,
            lambda target, k, key=key: (find(load, target, concs[k]) or {}).get(key) or 0,
            title,
        )
    axes[1].set_yscale("log")
    rest = axes[2:]
    if opened:
        ax = rest.pop(0)
        patterns = list(opened["runs"])
        _grouped_bars(
            ax,
            patterns,
            ["direct", "bare", "proxy"],
            lambda target, k: opened["runs"][patterns[k]][target]["ttfb_p99_ms"],
            f"{opened['streams']} open streams: TTFB p99 (ms, log)",
        )
        ax.set_yscale("log")
    if soaked:
        ax = rest.pop(0)
        xs = [sample["requests"] / 1000 for sample in soaked["samples"]]
        for worker in range(len(soaked["samples"][0]["rss"])):
            ax.plot(
                xs,
                [sample["rss"][worker] for sample in soaked["samples"]],
                marker="o",
                label=f"worker {worker + 1}",
            )
        ax.axhline(GOAL_WORKER_RSS_MB, color="grey", linestyle="--", label="goal")
        ax.set_ylim(0, GOAL_WORKER_RSS_MB * 1.2)
        ax.set_xlabel("thousands of requests")
        ax.set_title("proxy RSS per worker under a soak (MB)")
        ax.legend()
    fig.suptitle(f"ai-proxy vs bare forwarder vs direct — {results['date']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
