"""The configuration's one error: every fault as a `path: message` line."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is wrong; `problems` holds one `path: message` line per fault."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def flatten_errors(messages: object, path: str = "") -> list[str]:
    """Turn marshmallow's nested error dict into `models[2].url: ...` lines."""
    if isinstance(messages, dict):
        lines = []
        for key, inner in messages.items():
            if key == "_schema":
                child = path
            elif isinstance(key, int):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            lines.extend(flatten_errors(inner, child))
        return lines
    if isinstance(messages, list):
        if all(isinstance(item, str) for item in messages):
            return [f"{path or '<root>'}: {'; '.join(messages)}"]
        return [line for item in messages for line in flatten_errors(item, path)]
    return [f"{path or '<root>'}: {messages}"]


def name_sources(lines: list[str], sources: dict[str, str]) -> list[str]:
    """Put the environment variable in place of the path of each value it set (`RETRY_JITTER: `)."""
    named = []
    for line in lines:
        path, sep, message = line.partition(": ")
        named.append(f"{sources[path]}: {message}" if sep and path in sources else line)
    return named
