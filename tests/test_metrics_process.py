"""The process id the multiprocess metrics are filed under: kept, and renewed by every fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from app import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_kept_process_id_is_this_process():
    assert metrics.PROCESS_ID() == os.getpid()


def test_a_forked_child_has_its_own_id():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees and leave at once
        os.close(read)
        os.write(write, f"{metrics.PROCESS_ID()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    seen = os.read(read, 100).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert seen[0] == seen[1] == str(pid)
    assert metrics.PROCESS_ID() == os.getpid() != pid


def test_multiprocess_values_are_filed_per_forked_process(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR set (as gunicorn runs the proxy), a parent and two forked
    children each count into files of their own, and the collector adds them up."""
    script = textwrap.dedent(
        """
        import os
        from app import metrics
        from prometheus_client import values
        assert values.ValueClass is not values.MutexValue
        metrics.REQUESTS.labels("openai", "m", "p", "200").inc()
        children = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                metrics.REQUESTS.labels("openai", "m", "p", "200").inc(10)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        text = metrics.exposition()[0].decode()
        line = next(l for l in text.splitlines() if l.startswith("ai_proxy_requests_total{"))
        print(line.rsplit(" ", 1)[1])
        names = os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        print(" ".join(sorted(n[len("counter_"):] for n in names if n.startswith("counter_"))))
        print(" ".join(sorted(f"{pid}.db" for pid in [os.getpid(), *children])))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    total, files, expected = out.stdout.splitlines()
    assert float(total) == 21.0  # 1 from the parent, 10 from each child
    assert files == expected  # a file per process


def test_the_gunicorn_master_leaves_the_metrics_to_its_workers():
    """gunicorn's config (conf/gunicorn.conf.py, ./gunicorn.conf.py) imports app.server before
    `gunicorn_options` names the multiprocess folder: had that import brought in
    prometheus_client, its values would be chosen single-process and inherited by every worker,
    and /metrics would be empty (one import of app.cooldown from app.upstream once did this)."""
    script = (
        "import sys, runpy\n"
        "runpy.run_path('conf/gunicorn.conf.py')\n"
        "loaded = ('app.metrics', 'app.cooldown', 'prometheus_client')\n"
        "print(sorted(m for m in loaded if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["AI_PROXY_CONFIG"] = os.path.join(ROOT, "conf", "config.yaml")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
