"""The benchmark's goals, each judged from the results of a run: a row of the report's Goals
table (passed, missed, or shown for comparison only)."""

from __future__ import annotations

GOAL_THROUGHPUT_RATIO = 0.90
GOAL_CPU_RATIO = 1.15
GOAL_ADDED_LATENCY_MS = 0.15
GOAL_CHUNK_DELAY_MS = 5.0
GOAL_OPEN_ADDED_TTFB_MS = 50.0
GOAL_BURST_TTFB_RATIO = 1.2
GOAL_WORKER_RSS_MB = 60.0
GOAL_SETTLE_SECONDS = 60.0
GOAL_RSS_NOISE_MB = 2.0
# Quotas in Redis against the same proxy with memory quotas, in the same run.
GOAL_REDIS_ADDED_MS = 0.25
GOAL_REDIS_THROUGHPUT_RATIO = 0.90
# Against the peers in the same run: the proxy's c=16 throughput over each one's.
GOAL_PEER_THROUGHPUT = {"portkey": 1.3, "litellm": 8.0}


def find(load: list[dict], target: str, conc: int) -> dict | None:
    """The load row of a target at a concurrency, if it was measured."""
    return next((r for r in load if r["target"] == target and r["concurrency"] == conc), None)


def evaluate(results: dict) -> list[dict]:
    """The goals the run's parts measured, in the report's order: goal, measured, pass."""
    load, streams = results["load"], results["streams"]
    workers = results["settings"]["workers"]
    goals = []

    def goal(text: str, measured: str, passed: bool | None) -> None:
        goals.append({"goal": text, "measured": measured, "pass": passed})

    _throughput_goal(
        goal,
        load,
        "bare",
        "proxy",
        f"proxy throughput >= {GOAL_THROUGHPUT_RATIO:.0%} of bare at concurrency 16 "
        f"({workers} workers)",
        GOAL_THROUGHPUT_RATIO,
    )
    bare16, proxy16 = find(load, "bare", 16), find(load, "proxy", 16)
    if bare16 and proxy16 and bare16.get("server_cpu_ms_per_req"):
        ratio = (proxy16["server_cpu_ms_per_req"] or 0) / bare16["server_cpu_ms_per_req"]
        goal(
            f"proxy server CPU per request at concurrency 16 <= {GOAL_CPU_RATIO:.2f}x bare's",
            f"{ratio:.2f}x ({proxy16['server_cpu_ms_per_req']:.2f} vs "
            f"{bare16['server_cpu_ms_per_req']:.2f} ms)",
            ratio <= GOAL_CPU_RATIO,
        )
    _latency_goal(
        goal,
        load,
        "bare",
        "proxy",
        f"median added latency at concurrency 1 within {GOAL_ADDED_LATENCY_MS} ms of bare",
        lambda added: added <= GOAL_ADDED_LATENCY_MS,
    )
    if "proxy" in streams:
        s = streams["proxy"]
        complete = s["failed"] == 0 and s["chunks"] == s["expected_chunks"]
        context = (
            f"; first chunks max {s['first_delay_max_ms']:.2f} ms, later chunks max "
            f"{s['later_delay_max_ms']:.2f} ms"
        )
        if "bare" in streams:
            context += f"; bare: max {streams['bare']['delay_max_ms']:.2f} ms"
        goal(
            f"each stream chunk reaches the client within {GOAL_CHUNK_DELAY_MS:.0f} ms of "
            "leaving the upstream",
            f"max {s['delay_max_ms']:.2f} ms, p99 {s['delay_p99_ms']:.2f} ms "
            f"({s['chunks']}/{s['expected_chunks']} chunks, {s['failed']} failed{context})",
            complete and s["delay_max_ms"] <= GOAL_CHUNK_DELAY_MS,
        )
    opened = results.get("open_streams")
    if opened and "held" in opened["runs"]:
        held = opened["runs"]["held"]
        direct, proxy = held["direct"], held["proxy"]
        added = proxy["ttfb_p99_ms"] - direct["ttfb_p99_ms"]
        complete = proxy["failed"] == 0 and proxy["chunks"] == proxy["expected_chunks"]
        goal(
            f"{opened['streams']} concurrent streams of {opened['seconds']} s held on one host "
            f"({opened['workers']} workers), all completed, added p99 time to first byte under "
            f"{GOAL_OPEN_ADDED_TTFB_MS:.0f} ms",
            f"{proxy['streams'] - proxy['failed']}/{proxy['streams']} completed, peak "
            f"{proxy['peak_open']} open, {proxy['chunks']}/{proxy['expected_chunks']} chunks; "
            f"TTFB p99 {proxy['ttfb_p99_ms']:.1f} vs {direct['ttfb_p99_ms']:.1f} ms direct: "
            f"{added:+.1f} ms",
            complete
            and proxy["peak_open"] >= opened["streams"]
            and added < GOAL_OPEN_ADDED_TTFB_MS,
        )
    if opened and "burst" in opened["runs"]:
        burst = opened["runs"]["burst"]
        direct, bare, proxy = burst["direct"], burst["bare"], burst["proxy"]
        added = proxy["ttfb_p99_ms"] - direct["ttfb_p99_ms"]
        bare_added = bare["ttfb_p99_ms"] - direct["ttfb_p99_ms"]
        complete = proxy["failed"] == 0
        goal(
            f"the same {opened['streams']} streams opened within "
            f"{opened['spreads']['burst']:g} s: added TTFB p99 at most "
            f"{GOAL_BURST_TTFB_RATIO:g}x the bare forwarder's",
            f"proxy {added:+.1f} ms, bare forwarder {bare_added:+.1f} ms"
            + (f" ({added / bare_added:.2f}x)" if bare_added > 0 else "")
            + f"; {proxy['streams'] - proxy['failed']}/{proxy['streams']} completed",
            complete and added <= GOAL_BURST_TTFB_RATIO * max(bare_added, 0.0),
        )
    settled = (opened or {}).get("memory", {}).get("proxy", {}).get("settled_burst")
    if settled:
        goal(
            f"RSS per worker back under {GOAL_WORKER_RSS_MB:.0f} MB within "
            f"{GOAL_SETTLE_SECONDS:.0f} s after the burst",
            f"{', '.join(f'{v:.1f}' for v in settled['rss'])} MB after {settled['seconds']:.0f} s "
            f"(peak {', '.join(f'{v:.1f}' for v in opened['memory']['proxy']['peak_burst'])} MB)",
            max(settled["rss"]) < GOAL_WORKER_RSS_MB and settled["seconds"] <= GOAL_SETTLE_SECONDS,
        )
    soaked = results.get("soak")
    if soaked:
        samples = soaked["samples"]
        first, last = samples[0]["rss"], samples[-1]["rss"]
        # Quota windows fill up first (a per-minute moving window keeps an entry per request
        # for a minute): growth is judged over the second half, once they are full.
        middle = next(x for x in samples if x["requests"] >= soaked["requests"] / 2)
        growth = max(b - a for a, b in zip(middle["rss"], last, strict=True))
        goal(
            f"per-worker memory under {GOAL_WORKER_RSS_MB:.0f} MB after {soaked['requests']} "
            f"requests, no growth beyond noise ({GOAL_RSS_NOISE_MB:g} MB) over the second half",
            f"{', '.join(f'{v:.1f}' for v in first)} MB at rest, "
            f"{', '.join(f'{v:.1f}' for v in last)} MB after; {growth:+.1f} MB from request "
            f"{middle['requests']} to the end; {soaked['errors']} errors",
            max(last) < GOAL_WORKER_RSS_MB and growth < GOAL_RSS_NOISE_MB and soaked["errors"] == 0,
        )
    _redis_goals(load, goal)
    _peer_goals(results, goal)
    return goals


def _redis_goals(load: list[dict], goal) -> None:
    """Quotas in Redis against memory quotas: added p50 at 1, throughput at 16."""
    _latency_goal(
        goal,
        load,
        "proxy",
        "proxy-redis",
        f"quotas in Redis add under {GOAL_REDIS_ADDED_MS} ms to the p50 at concurrency 1",
        lambda added: added < GOAL_REDIS_ADDED_MS,
    )
    _throughput_goal(
        goal,
        load,
        "proxy",
        "proxy-redis",
        f"throughput with quotas in Redis >= {GOAL_REDIS_THROUGHPUT_RATIO:.0%} of memory "
        "quotas' at concurrency 16",
        GOAL_REDIS_THROUGHPUT_RATIO,
    )


def _latency_goal(goal, load: list[dict], base: str, target: str, text: str, passed) -> None:
    """`target`'s p50 at concurrency 1 over `base`'s, judged by `passed(added_ms)`."""
    low, high = find(load, base, 1), find(load, target, 1)
    if low and high:
        added = high["p50_ms"] - low["p50_ms"]
        measured = f"{added:+.3f} ms (p50 {high['p50_ms']:.3f} vs {low['p50_ms']:.3f} ms)"
        goal(text, measured, passed(added))


def _throughput_goal(
    goal, load: list[dict], base: str, target: str, text: str, least: float
) -> None:
    """`target`'s throughput at concurrency 16 as a share of `base`'s, at least `least`."""
    low, high = find(load, base, 16), find(load, target, 16)
    if low and high and low["rps"]:
        ratio = high["rps"] / low["rps"]
        goal(text, f"{ratio:.0%} ({high['rps']:.0f} vs {low['rps']:.0f} req/s)", ratio >= least)


def _peer_goals(results: dict, goal) -> None:
    """The proxy against each peer that ran: throughput at 16, p50 at 1, memory."""
    load, rss = results["load"], results.get("rss_mb") or {}
    proxy16, proxy1 = find(load, "proxy", 16), find(load, "proxy", 1)
    for peer, ratio_goal in GOAL_PEER_THROUGHPUT.items():
        peer16 = find(load, peer, 16)
        if proxy16 and peer16 and peer16["rps"]:
            ratio = proxy16["rps"] / peer16["rps"]
            goal(
                f"proxy throughput at concurrency 16 >= {ratio_goal:g}x {peer}'s",
                f"{ratio:.2f}x ({proxy16['rps']:.0f} vs {peer16['rps']:.0f} req/s)",
                ratio >= ratio_goal,
            )
    portkey1 = find(load, "portkey", 1)
    if proxy1 and portkey1:
        goal(
            "proxy p50 at concurrency 1 no higher than portkey's",
            f"{proxy1['p50_ms']:.3f} vs {portkey1['p50_ms']:.3f} ms",
            proxy1["p50_ms"] <= portkey1["p50_ms"],
        )
    peers_rss = {peer: rss[peer] for peer in GOAL_PEER_THROUGHPUT if peer in rss}
    if "proxy" in rss and peers_rss:
        # Judged on RSS, as the goal says; PSS (shared pages counted once) is shown beside it.
        pss = results.get("pss_mb") or {}
        shown = ["proxy", *peers_rss]
        beside = ""
        if all(name in pss for name in shown):
            beside = " (PSS: " + ", ".join(f"{name} {pss[name]:.0f}" for name in shown) + " MB)"
        goal(
            "proxy RSS (all its processes) lower than each peer's",
            f"proxy {rss['proxy']:.0f} MB; "
            + ", ".join(f"{peer} {value:.0f} MB" for peer, value in peers_rss.items())
            + beside,
            all(rss["proxy"] < value for value in peers_rss.values()),
        )
