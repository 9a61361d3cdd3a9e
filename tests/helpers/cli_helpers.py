"""Helpers for the CLI tests: run ``stratus`` in-process (typer's CliRunner) or as a real process.

Every run gets a private state cache and an empty client config, and none of the caller's
``STRATUS_*`` connection variables, so the tests never read or write anything of the user's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
_SCRUBBED = ("STRATUS_SERVER", "STRATUS_TLS_DIR", "STRATUS_INSECURE", "STRATUS_CLIENT_NAME", "STRATUS_NAMESPACE",
             "STRATUS_CONFIG", "STRATUS_DEBUG")


def isolated_env(tmp: Path) -> dict[str, str | None]:
    """Environment overrides: private cache and config, no inherited connection settings."""
    env: dict[str, str | None] = {name: None for name in _SCRUBBED}
    env.update({
        "STRATUS_CACHE_DIR": str(tmp / "cache"),
        "STRATUS_CLIENT_CONFIG": str(tmp / "client-config.toml"),
        "XDG_CONFIG_HOME": str(tmp / "config-home"),
        "XDG_DATA_HOME": str(tmp / "data-home"),
        "COLUMNS": "200",
    })
    return env


@dataclass
class Cli:
    """``stratus`` bound to one server (plaintext) and one private cache."""

    address: str
    tmp: Path
    env: dict[str, str | None] = field(default_factory=dict)
    runner: CliRunner = field(default_factory=CliRunner)

    def __call__(self, *args: str, input: bytes | str | None = None, code: int | None = 0,
                 connect: bool = True) -> Result:
        """Run ``stratus [--server ADDR --insecure] ARGS``; check the exit code unless ``code`` is None."""
        prefix = ["--server", self.address, "--insecure"] if connect else []
        result = self.runner.invoke(app, [*prefix, *args], input=input, env=self.env)
        if code is not None:
            assert result.exit_code == code, (
                f"stratus {' '.join(args)} exited {result.exit_code}, expected {code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
            )
        return result

    def json(self, *args: str, code: int = 0, input: bytes | str | None = None) -> Any:  # noqa: ANN401
        """Run with ``--json`` and return the parsed document on stdout."""
        result = self(*(["--json", *args]), code=code, input=input)
        return json.loads(result.stdout)


def write_random(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for start in range(0, size, MIB):
            f.write(os.urandom(min(MIB, size - start)))
    return path


def overrides(env: dict[str, str | None]) -> dict[str, str]:
    """The variables ``env`` sets (without the ones it removes)."""
    return {k: v for k, v in env.items() if v is not None}


def process_env(env: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with ``env`` applied (None removes a variable), the packages on PYTHONPATH."""
    full = {k: v for k, v in os.environ.items() if k not in env or env[k] is not None}
    full.update(overrides(env))
    full["PYTHONPATH"] = str(ROOT)
    return full


def run_process(args: list[str], env: dict[str, str | None], timeout: float = 60, **kwargs: Any
                ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cli.main ARGS`` as a real process."""
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=process_env(env), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def start_process(args: list[str], env: dict[str, str | None], **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``python -m cli.main ARGS`` as a real process (pipes as ``kwargs`` say) and return at once."""
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=process_env(env), cwd=ROOT, text=True,
                            **kwargs)
