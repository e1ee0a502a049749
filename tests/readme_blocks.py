"""Run a README's shell blocks as a reader would: in order, from the project root, in one bash session
(so `cd`, `export` and `source` carry over from block to block), each block bounded in time.

Conventions in the README's source (documented in README.md, "Tests"):

* every fenced block marked bash, sh, shell or console runs; a console block's commands are its
  `$ ` lines and its other lines are what they print;
* `# prints: TEXT` in a block (after a command, or on a line of its own) says what the block prints;
  the block's output must contain TEXT, where `...` (or `…`) stands for anything and any run of
  whitespace matches any other;
* an HTML comment just before a block, `<!-- readme-test: CLAUSE; CLAUSE -->`, with clauses
  `skip (reason)` (alone: the block is not run, and the reason says why), `background until "TEXT"` (the block
  is a server: it runs in the background, as in a terminal of its own, and the next block starts
  once its output shows TEXT; `background until URL`: once the URL answers; it is stopped when the
  README is done) and `timeout SECONDS` (default 300).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# The READMEs whose shell blocks are tests, in the order they run.
READMES = ["README.md", "web-service/README.md", "streaming/README.md", "scripts/README.md", "homework/README.md"]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
DEFAULT_TIMEOUT = 300.0
MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
PRINTS = re.compile(r"(?:^|\s)#\s*prints:\s*(?P<text>.+?)\s*$")
WILDCARD = re.compile(r"\.\.\.|…")


class ReadmeError(ValueError):
    """A README's test markers are malformed (an unknown clause, a skip without a reason, ...)."""


@dataclass
class Block:
    """One shell block of a README: where it starts and what the README's markers say of it."""

    readme: str
    line: int  # the line of the opening fence, counting from 1
    text: str
    skip: str | None = None
    ready: str | None = None  # set for a background block: the text that says it is up
    timeout: float = DEFAULT_TIMEOUT
    expected: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.readme}:{self.line}"


def parse_marker(body: str, where: str) -> dict:
    """The clauses of one `<!-- readme-test: ... -->` comment, as Block fields."""
    if match := re.fullmatch(r"skip\b\s*(?:\((?P<reason>.*)\))?", body):  # a skip is the whole marker
        if not (match["reason"] or "").strip():
            raise ReadmeError(f"{where}: a skip needs a reason: skip (why it cannot run here)")
        return {"skip": match["reason"].strip()}
    fields = {}
    for clause in (c.strip() for c in body.split(";")):
        if match := re.fullmatch(r'background\s+until\s+(?:"(?P<text>[^"]+)"|(?P<url>https?://\S+))', clause):
            fields["ready"] = match["text"] or match["url"]
        elif match := re.fullmatch(r"timeout\s+(?P<seconds>\d+(?:\.\d+)?)", clause):
            fields["timeout"] = float(match["seconds"])
        else:
            raise ReadmeError(
                f"{where}: unknown readme-test clause {clause!r} "
                '(expected skip (reason), background until "TEXT" | URL, or timeout SECONDS)'
            )
    return fields


def console_to_bash(lines: list[str]) -> tuple[list[str], list[str]]:
    """A console block's commands (its `$ ` lines) and what they print (its other lines)."""
    commands, printed = [], []
    for line in lines:
        if line.startswith("$ "):
            commands.append(line[2:])
        elif line.strip():
            printed.append(line.strip())
    return commands, printed


def parse(text: str, readme: str) -> list[Block]:
    """Every shell block of a README, with its line, its markers and what it says it prints."""
    blocks: list[Block] = []
    lines = text.splitlines()
    pending: tuple[int, dict] | None = None
    number = 0
    while number < len(lines):
        line = lines[number]
        if marker := MARKER.match(line):
            if pending is not None:
                raise ReadmeError(f"{readme}:{pending[0]}: a readme-test marker with no shell block after it")
            pending = (number + 1, parse_marker(marker["body"], f"{readme}:{number + 1}"))
            number += 1
            continue
        fence = FENCE.match(line)
        if not fence:
            if line.strip() and pending is not None:
                raise ReadmeError(f"{readme}:{pending[0]}: a readme-test marker must come just before a shell block")
            number += 1
            continue
        start, closing = number, fence["fence"]
        body = []
        number += 1
        while number < len(lines) and not lines[number].strip().startswith(closing):
            body.append(lines[number][len(fence["indent"]) :])
            number += 1
        number += 1  # past the closing fence
        language = fence["lang"].lower()
        if language not in SHELL_LANGUAGES:
            if pending is not None:
                raise ReadmeError(f"{readme}:{pending[0]}: a readme-test marker before a {language or 'plain'} block")
            continue
        expected = []
        if language == "console":
            body, expected = console_to_bash(body)
        expected += [m["text"] for m in map(PRINTS.search, body) if m]
        blocks.append(Block(readme, start + 1, "\n".join(body), expected=expected, **(pending[1] if pending else {})))
        pending = None
    if pending is not None:
        raise ReadmeError(f"{readme}:{pending[0]}: a readme-test marker with no shell block after it")
    return blocks


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def shows(output: str, expected: str) -> bool:
    """Whether output contains expected, `...` standing for anything, any whitespace for any other."""
    pieces = [re.escape(normalise(p)) for p in WILDCARD.split(expected)]
    return re.search(r".*?".join(pieces).replace(r"\ ", r"\s+"), normalise(output), re.DOTALL) is not None


@dataclass
class Result:
    block: Block
    status: str  # passed, failed, timed out, skipped, not run
    output: str = ""
    seconds: float = 0.0
    problem: str = ""


@dataclass
class Report:
    readme: str
    results: list[Result]
    background_logs: dict[str, str]
    seconds: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status in ("failed", "timed out")]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(r.block.where, r.block.skip) for r in self.results if r.status == "skipped"]

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in ("passed", "skipped", "failed", "timed out", "not run"))
        lines = [f"{self.readme}: {counts} in {self.seconds:.0f} s"]
        lines += [f"  skipped {where}: {reason}" for where, reason in self.skipped]
        return "\n".join(lines)

    def failure_text(self) -> str:
        parts = []
        for result in self.failures:
            command = "\n".join(f"    {line}" for line in result.block.text.splitlines())
            parts.append(
                f"{result.block.where}: block {result.status} after {result.seconds:.1f} s: {result.problem}\n"
                f"{command}\n--- its output ---\n{result.output.rstrip()}"
            )
        for where, log in self.background_logs.items() if parts else ():
            parts.append(f"--- output of the background block at {where} ---\n{log.rstrip()}")
        return "\n\n".join(parts)


BEGIN = "@@readme-test-begin {}@@"
HELPERS = r"""
exec </dev/null
__readme_begin() { printf '\n@@readme-test-begin %s@@\n' "$1"; printf 'begin %s %s\n' "$1" "$EPOCHREALTIME" >>"$README_TEST_STATUS"; }
__readme_end() { printf 'end %s %s\n' "$1" "$EPOCHREALTIME" >>"$README_TEST_STATUS"; }
__readme_up() {  # log text-or-URL: whether the log shows the text, or the URL answers
    case "$2" in
        http://*|https://*) python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$2" 2>/dev/null ;;
        *) grep -qF -- "$2" "$1" ;;
    esac
}
__readme_wait_until() {  # pid log text-or-URL: until it is up; fail if the process ends first
    while ! __readme_up "$2" "$3"; do
        if ! kill -0 "$1" 2>/dev/null; then
            echo "the background block ended before printing: $3"; return 1
        fi
        sleep 0.2
    done
}
trap 'printf "exit %s %s\n" "$?" "$EPOCHREALTIME" >>"$README_TEST_STATUS"' EXIT
set -e
"""


def script(blocks: list[Block], logs: Path) -> str:
    """The bash script of a README: its blocks in order between markers, servers in the background."""
    parts = [HELPERS]
    for index, block in enumerate(blocks):
        if block.skip:
            continue
        parts.append(f"\n# {block.where}\n__readme_begin {index}\n")
        if block.ready:
            log = shlex.quote(str(logs / f"background-{index}.log"))
            parts.append(f"(\nset -e\n{block.text}\n) >{log} 2>&1 &\n")
            parts.append(f"__readme_wait_until $! {log} {shlex.quote(block.ready)}\n")
        else:
            parts.append(f"{block.text}\n")
        parts.append(f"__readme_end {index}\n")
    return "".join(parts)


def processes_with(token: str) -> list[int]:
    """Processes whose environment carries this run's token: everything the README started, even
    servers that moved to a session of their own."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def stop_everything(session: int, token: str, grace: float = 10.0) -> None:
    """SIGTERM the session's process group and every process carrying the token, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(session, sig)
        except ProcessLookupError:
            pass
        for pid in processes_with(token):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and processes_with(token):
            time.sleep(0.2)
        if not processes_with(token):
            return


def network_namespace_works() -> bool:
    """Whether `unshare -rn` can give the README a loopback of its own (default ports free, no network)."""
    try:
        probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10)
        return probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_readme(
    project: Path, readme: str, env: dict, logs: Path, own_network: bool, total_timeout: float = 3600.0
) -> Report:
    """Run every shell block of project/readme in one bash session with cwd the project root.

    With own_network the session runs in a network namespace of its own (`unshare -rn`): only its
    own loopback, so the README's default ports are free however many servers run beside it, and
    nothing can reach the network. Everything it started is stopped at the end."""
    blocks = parse((project / readme).read_text(), readme)
    logs.mkdir(parents=True, exist_ok=True)
    status_file = logs / "status"
    status_file.write_text("")
    script_file = logs / "readme.sh"
    script_file.write_text(script(blocks, logs))
    output_file = logs / "output.log"
    run_id = uuid.uuid4().hex
    token = f"README_TEST_RUN={run_id}"
    env = {**env, "README_TEST_STATUS": str(status_file), "README_TEST_RUN": run_id}
    command = ["bash", str(script_file)]
    if own_network:
        command = ["unshare", "-rn", "bash", "-c", 'ip link set lo up && exec bash "$0"', str(script_file)]
    started = time.monotonic()
    with open(output_file, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = None
        begun: dict[int, float] = {}
        try:
            while process.poll() is None:
                for kind, index, _ in read_status(status_file):
                    if kind == "begin":
                        begun.setdefault(index, time.monotonic())
                current = max(begun, default=None)
                if current is not None and time.monotonic() - begun[current] > blocks[current].timeout:
                    timed_out = current
                    break
                if time.monotonic() - started > total_timeout:
                    timed_out = current
                    break
                time.sleep(0.2)
        finally:
            stop_everything(process.pid, token)
            process.wait(timeout=30)
    return report(readme, blocks, status_file, output_file, logs, timed_out, time.monotonic() - started)


def read_status(path: Path) -> list[tuple[str, int, float]]:
    """The session's events: (begin | end, block index, time) and (exit, status, time)."""
    events = []
    for line in path.read_text().splitlines():
        kind, number, at = line.split()
        events.append((kind, int(number), float(at)))
    return events


def report(readme, blocks, status_file, output_file, logs, timed_out, seconds) -> Report:
    """What happened to each block, from the status file, the session's output and the server logs."""
    events = read_status(status_file)
    begun = {index: at for kind, index, at in events if kind == "begin"}
    ended = {index: at for kind, index, at in events if kind == "end"}
    exit_code, exit_at = next(((index, at) for kind, index, at in events if kind == "exit"), (None, None))
    text = output_file.read_text(errors="replace")
    outputs = {}
    for index in begun:
        after = text.split(BEGIN.format(index), 1)[-1]
        outputs[index] = re.split(r"\n?@@readme-test-begin \d+@@", after, maxsplit=1)[0].strip("\n")
    background_logs = {
        block.where: (logs / f"background-{i}.log").read_text(errors="replace")
        for i, block in enumerate(blocks)
        if block.ready and (logs / f"background-{i}.log").exists()
    }
    results = []
    for index, block in enumerate(blocks):
        if block.skip:
            results.append(Result(block, "skipped"))
            continue
        if index not in begun:
            results.append(Result(block, "not run"))
            continue
        output = outputs[index]
        took = (ended.get(index) or exit_at or begun[index]) - begun[index]
        if block.ready:
            output = background_logs.get(block.where, "") + ("\n" + output if output else "")
        if index == timed_out:
            results.append(
                Result(block, "timed out", output, block.timeout, problem=f"no end within {block.timeout:.0f} s")
            )
        elif index not in ended:
            results.append(Result(block, "failed", output, took, problem=f"a command exited with status {exit_code}"))
        else:
            missing = [e for e in block.expected if not shows(output, e)]
            if missing:
                results.append(Result(block, "failed", output, took, problem=f"its output does not show {missing}"))
            else:
                results.append(Result(block, "passed", output, took))
    return Report(readme, results, background_logs, seconds)
