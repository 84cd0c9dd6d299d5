"""The `ai-proxy` command: serve, check-config, hash-token, --version, and the Go flags."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from .config import ConfigError, hash_token, load_config, load_env_file, runtime_from_env
from .version import __version__

COMMANDS = ("serve", "check-config", "hash-token")
HELP = ("-h", "--help", "-help")
ALL_INTERFACES = "0.0.0.0"
# The serve flags that take a value; Go's flag package lets a value follow as the next argument.
VALUE_FLAGS = ("config", "env-file", "addr", "port", "workers", "threads")
# strconv.ParseBool, which Go's flag package uses for `-version=<value>`.
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    # Go-style single-dash spellings (-config, -addr) are accepted as well.
    parser.add_argument("--config", "-config", help="config file (default conf/config.yaml)")
    parser.add_argument("--env-file", "-env-file", help=".env file to load (default ./.env)")
    parser.add_argument("--addr", "-addr", help="HOST:PORT to listen on")
    parser.add_argument("--port", "-port", type=int, help="port to listen on (Go compat)")
    parser.add_argument("--workers", type=int, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, help="threads per worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-proxy", description="An OpenAI- and Anthropic-compatible LLM gateway."
    )
    parser.add_argument(
        "--version", "-version", action="version", version=f"ai-proxy {__version__}"
    )
    sub = parser.add_subparsers(dest="command")
    _serve_arguments(sub.add_parser("serve", help="run the proxy under gunicorn"))
    check = sub.add_parser("check-config", help="validate the configuration and exit")
    check.add_argument("--config", "-config")
    check.add_argument("--env-file", "-env-file")
    token = sub.add_parser("hash-token", help="print the SHA-256 of a token for token_sha256")
    token.add_argument("token", nargs="?", help="the token; '-' or nothing reads it from stdin")
    return parser


def take_version_flag(flags: list[str]) -> tuple[bool, list[str]]:
    """Whether the flags ask for the version, Go's way, and the flags without that one.

    As Go's flag package reads them: `-version`, `--version`, `-version=true` (any
    strconv.ParseBool value) anywhere among the flags, the last one winning; a value flag
    (`--config x`) takes the next argument; flags end at the first non-flag or `--`.
    Raises ValueError for `-version=<not a boolean>`.
    """
    wanted = False
    kept: list[str] = []
    index = 0
    while index < len(flags):
        arg = flags[index]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            kept.extend(flags[index:])
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if name == "version":
            if not eq or value in GO_TRUE:
                wanted = True
            elif value in GO_FALSE:
                wanted = False
            else:
                raise ValueError(f"invalid boolean value {value!r} for -version")
        else:
            kept.append(arg)
            if name in VALUE_FLAGS and not eq and index + 1 < len(flags):
                index += 1
                kept.append(flags[index])
        index += 1
    return wanted, kept


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--help" if arg == "-help" else arg for arg in argv[:1]] + argv[1:]
    if not argv or argv[0] == "serve" or (argv[0].startswith("-") and argv[0] not in HELP):
        # The Go flags without a sub-command mean `serve`; -version may be among them.
        flags = argv[1:] if argv[:1] == ["serve"] else argv
        try:
            wanted, flags = take_version_flag(flags)
        except ValueError as err:
            print(f"ai-proxy: {err}", file=sys.stderr)
            return 2
        if wanted:
            print(f"ai-proxy {__version__}")
            return 0
        argv = ["serve", *flags]
    args = build_parser().parse_args(argv)
    if args.command == "hash-token":
        return hash_token_command(args.token)
    if args.command == "check-config":
        return check_config_command(args.config, args.env_file)
    return serve_command(args)


def hash_token_command(token: str | None) -> int:
    if token in (None, "-"):
        token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
        token = token.strip()
    if not token:
        print("ai-proxy: hash-token: the token is empty", file=sys.stderr)
        return 1
    print(hash_token(token))
    return 0


def check_config_command(config_path: str | None, env_file: str | None) -> int:
    # The same checks `serve` makes before it starts: provider faults, and no model left.
    from .checks import check_serving

    try:
        load_env_file(env_file)
        config = load_config(config_path)
        problems = check_serving(config)
    except ConfigError as err:
        problems = err.problems
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    for reason in config.left_out:
        print(f"warning: left out {reason}", file=sys.stderr)
    print(
        f"ok: {config.source}: {len(config.models)} model deployment(s), "
        f"{len(config.aliases)} alias(es), {len(config.tokens)} client token(s)"
    )
    return 0


def parse_addr(addr: str) -> tuple[str | None, str | None]:
    """HOST and PORT from `--addr`: `host:port`, `[v6]:port`, or Go's `:port` (every interface).

    A bare number is a port, a bare name a host; None leaves that setting as it is.
    """
    addr = addr.strip()
    if addr.isdigit():
        host, port = None, addr
    elif addr.startswith("[") and "]" in addr:
        inside, _, rest = addr[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("expected [address]:port")
        host, port = inside, rest[1:] or None
    elif ":" in addr and addr.count(":") == 1:
        host, port = addr.split(":")
        # Go's `:8080` listens on every interface.
        host = host or ALL_INTERFACES
        port = port or None
    else:
        host, port = addr, None
    if port is not None and not (port.isdigit() and int(port) <= 65535):
        raise ValueError("the port must be a number from 0 to 65535")
    return host or None, port


def serve_command(args: argparse.Namespace) -> int:
    try:
        load_env_file(args.env_file)
    except ConfigError as err:
        print(f"ai-proxy: {err}", file=sys.stderr)
        return 1
    # Workers are forked and build their app from the environment, so flags go there.
    if args.config:
        os.environ["AI_PROXY_CONFIG"] = os.path.abspath(args.config)
    if args.addr:
        try:
            host, port = parse_addr(args.addr)
        except ValueError as err:
            print(f"ai-proxy: --addr {args.addr}: {err}", file=sys.stderr)
            return 2
        if host:
            os.environ["HOST"] = host
        if port:
            os.environ["PORT"] = port
    if args.port is not None:
        os.environ["PORT"] = str(args.port)
    if args.workers is not None:
        os.environ["WEB_CONCURRENCY"] = str(args.workers)
    if args.threads is not None:
        os.environ["THREADS"] = str(args.threads)
    # Checked before gunicorn is imported: its settings read WEB_CONCURRENCY as it loads and
    # would stop with a traceback instead of a line naming the variable.
    problems: list[str] = []
    runtime_from_env(os.environ, problems)
    if problems:
        for problem in problems:
            print(f"ai-proxy: {problem}", file=sys.stderr)
        return 1
    from .server import ProxyApplication, gunicorn_options

    ProxyApplication(gunicorn_options(os.environ)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
