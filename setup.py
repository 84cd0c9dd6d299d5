"""Packaging for ai-proxy: the `app` package and the `ai-proxy` console script."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "app/version.py").read_text()).group(1)

setup(
    name="ai-proxy",
    version=VERSION,
    description="One OpenAI- and Anthropic-compatible API in front of many LLM providers.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # Installed as `ai_proxy` (mapped onto this repository's app/ folder), so that a host
    # project with an `app` of its own can still import it; inside, every import is relative.
    packages=["ai_proxy", *(f"ai_proxy.{name}" for name in find_packages("app"))],
    package_dir={"ai_proxy": "app"},
    # The status page's templates and its script and style sheet ship inside the package.
    package_data={
        "ai_proxy.statuspage": ["templates/ai_proxy/*.html", "static/*.js", "static/*.css"]
    },
    py_modules=["wsgi"],
    install_requires=[
        "apispec>=6.8.3,<7",
        "Flask>=3.1,<4",
        "Werkzeug>=3.1,<4",
        "gunicorn>=23",
        "itsdangerous>=2.2,<3",
        "limits>=5,<6",
        "marshmallow>=4,<5",
        "prometheus-client>=0.20",
        "python-dotenv>=1.0",
        "PyYAML>=6",
        "redis>=5",
        "requests>=2.32,<3",
        "urllib3>=2.5,<3",
    ],
    extras_require={
        "otel": ["opentelemetry-sdk>=1.25", "opentelemetry-exporter-otlp-proto-http>=1.25"],
        "test": [
            "anthropic>=0.40",
            "openai>=1.40",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "responses>=0.25",
            "ruff",
        ],
    },
    entry_points={"console_scripts": ["ai-proxy=ai_proxy.cli:main"]},
)
